"""Discrete images as continuous data: uniform dequantisation and bits per dimension (PNG grids:
`exactflow.plots.image_grid`).

Pixels take ``levels`` integer values ``k in {0..levels-1}``. Dequantisation maps them into
(0, 1): ``y = (k + u) / levels`` with ``u ~ U[0, 1)^D``. A density ``p`` on ``y`` gives a bound on
the discrete likelihood, ``log P(k) >= E_u[log p((k + u) / levels)] - D log(levels)``, so

    bits/dim = -(log p(y) - D log(levels)) / (D log 2).

When a flow preprocesses ``y`` (e.g. ``x = logit(alpha + (1 - 2 alpha) y)``), ``log p(y)`` must
include that map's log-det, ``log p(y) = log p_x(x) + log|det dx/dy|``: the image flows in
`exactflow.flows.glow` start with the logit as a bijection, so their ``log_prob`` already does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bits_per_dim", "dequantize", "quantize"]


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
    """Back to integer levels: ``floor(y * levels)`` clamped to ``0..levels-1`` (inverse of `dequantize`)."""
    return torch.clamp(torch.floor(y * levels), 0, levels - 1)

