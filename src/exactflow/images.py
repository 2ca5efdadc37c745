"""Discrete images as continuous data: uniform dequantisation, bits per dimension, and PNG grids.

Pixels take ``levels`` integer values ``k in {0..levels-1}``. Dequantisation maps them into
(0, 1): ``y = (k + u) / levels`` with ``u ~ U[0, 1)^D``. A density ``p`` on ``y`` gives a bound on
the discrete likelihood, ``log P(k) >= E_u[log p((k + u) / levels)] - D log(levels)``, so

    bits/dim = -(log p(y) - D log(levels)) / (D log 2).

When a flow preprocesses ``y`` (e.g. ``x = logit(alpha + (1 - 2 alpha) y)``), ``log p(y)`` must
include that map's log-det, ``log p(y) = log p_x(x) + log|det dx/dy|``: the image flows in
:mod:`exactflow.flows.glow` start with the logit as a bijection, so their ``log_prob`` already does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["dequantize", "quantize", "bits_per_dim", "image_grid", "save_image_grid"]


def dequantize(k: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """``(k + u) / levels`` with uniform noise ``u``: integer-valued pixels -> points in (0, 1)."""
    u = torch.rand(k.shape, generator=generator, dtype=k.dtype).to(k.device)
    return (k + u) / levels


def bits_per_dim(log_prob: Tensor, shape: tuple[int, ...], levels: int) -> Tensor:
    """Bits per dimension of the discrete data from ``log_prob``, the log-density of the dequantised
    ``y`` in (0, 1)^D (including any preprocessing log-det): ``-(log p(y) - D log levels) / (D log 2)``."""
    d = math.prod(shape)
    return -(log_prob - d * math.log(levels)) / (d * math.log(2))


def quantize(y: Tensor, levels: int) -> Tensor:
    """Back to integer levels: ``floor(y * levels)`` clamped to ``0..levels-1`` (inverse of :func:`dequantize`)."""
    return torch.clamp(torch.floor(y * levels), 0, levels - 1)


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 1, scale: int = 1) -> Tensor:
    """Tile ``(N, C, H, W)`` images with values in [0, 1] (C = 1 or 3) into one ``(H', W', C)`` uint8 array:
    ``nrow`` images per row (default ceil(sqrt(N))), ``padding`` white pixels between, each pixel
    repeated ``scale`` times. Values outside [0, 1] are clipped."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1 and C in (1, 3), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got scale={scale}, padding={padding}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    x = images.detach().float().cpu().clamp(0, 1)
    x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    h, w = h * scale, w * scale
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0)


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None, padding: int = 1,
                    scale: int = 4) -> Path:
    """Write :func:`image_grid` of ``images`` (values in [0, 1]) as a PNG at ``path`` (needs pillow); returns the path."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("writing PNG grids needs pillow: pip install 'exactflow[plot]'") from err
    grid = image_grid(images, nrow, padding, scale).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(path, format="PNG")
    return path
