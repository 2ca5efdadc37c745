"""Pictures of a fitted flow, written as PNG (and one animated GIF): density beside data, samples beside
data, training curves, the layer-by-layer morph from the Gaussian to the data, and image grids.

matplotlib (and pillow for the GIF) are imported lazily; figures are drawn on the Agg canvas
without pyplot, so nothing changes the caller's matplotlib backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .core import Compose
from .distributions import Flow

if TYPE_CHECKING:  # matplotlib and pillow are optional extras ("plot"), imported where a picture is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

    from .training import History

__all__ = ["curves", "density", "image_grid", "morph", "plot_2d", "samples", "scatter"]


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'exactflow[plot]'") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def _bounds(x: Tensor, pad: float = 0.1) -> tuple[float, float, float, float]:
    """A square-ish box holding the central 99.8% of the points, padded by ``pad``."""
    lo = torch.quantile(x.double(), 0.001, dim=0)
    hi = torch.quantile(x.double(), 0.999, dim=0)
    span = (hi - lo).clamp_min(1e-3)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _check_2d(x: Tensor, what: str) -> None:
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"{what} must have shape (n, 2) for 2-D pictures, got {tuple(x.shape)}")


def _scatter(ax: Axes, x: Tensor, box: tuple[float, float, float, float], title: str,
             color: str = "tab:blue") -> None:
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.5, c=color, linewidths=0, rasterized=True)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def density(flow: Flow, data: Tensor, path: str | Path, resolution: int = 200) -> Path:
    """Data (left) beside the learned density ``exp(log p(x))`` on a ``resolution``^2 grid (right)."""
    _check_2d(data, "data")
    box = _bounds(data)
    gx = torch.linspace(box[0], box[1], resolution)
    gy = torch.linspace(box[2], box[3], resolution)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    ref = flow._ref()
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1).to(ref)
    logp = torch.cat([flow.eval().log_prob(chunk) for chunk in pts.split(20000)]).cpu()
    fig = _figure(8, 4)
    ax1, ax2 = fig.subplots(1, 2)
    _scatter(ax1, data[:20000].cpu(), box, "data")
    ax2.imshow(logp.exp().reshape(resolution, resolution).numpy(), origin="lower", extent=box, cmap="magma",
               aspect="equal")
    ax2.set_title("learned density")
    ax2.set_xticks([])
    ax2.set_yticks([])
    return _save(fig, path)


def scatter(points: Tensor, path: str | Path, title: str = "samples") -> Path:
    """A scatter plot of 2-D ``points``."""
    _check_2d(points, "points")
    fig = _figure(4, 4)
    _scatter(fig.subplots(), points.cpu(), _bounds(points.cpu()), title, color="tab:orange")
    return _save(fig, path)


@torch.no_grad()
def samples(flow: Flow, data: Tensor, path: str | Path, n: int = 5000) -> Path:
    """Data (left) beside ``n`` samples of the flow (right), on the same axes."""
    _check_2d(data, "data")
    box = _bounds(data)
    drawn = flow.eval().sample(n).cpu()
    fig = _figure(8, 4)
    ax1, ax2 = fig.subplots(1, 2)
    _scatter(ax1, data[:n].cpu(), box, "data")
    _scatter(ax2, drawn, box, "samples", color="tab:orange")
    return _save(fig, path)


def curves(history: History | dict, path: str | Path) -> Path:
    """Train NLL per step (light) with its running mean, valid NLL per evaluation, and the learning rate."""
    h = history if isinstance(history, dict) else history.to_dict()
    if not h["step"]:
        raise ValueError("the history is empty: nothing to plot")
    fig = _figure(8, 4)
    ax, ax_lr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    train = torch.tensor(h["train"], dtype=torch.float64)
    ax.plot(h["step"], train.numpy(), color="tab:blue", alpha=0.25, linewidth=0.8)
    window = max(1, len(train) // 50)
    smooth = torch.nn.functional.avg_pool1d(train[None, None], window, stride=1).flatten()
    ax.plot(h["step"][window - 1 :], smooth.numpy(), color="tab:blue", label="train")
    if h["valid"]:
        ax.plot(h["valid_step"], h["valid"], "o-", color="tab:red", markersize=3, label="valid")
    lo, hi = torch.quantile(train, 0.02).item(), torch.quantile(train, 0.98).item()
    if h["valid"]:
        lo, hi = min(lo, min(h["valid"])), max(hi, max(h["valid"]))
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel(f"NLL ({h['unit']})")
    ax.legend()
    ax_lr.plot(h["step"], h["lr"], color="tab:gray")
    ax_lr.set_xlabel("step")
    ax_lr.set_title("learning rate")
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def _trajectory(flow: Flow, n: int, seed: int) -> tuple[list[Tensor], Tensor]:
    if not isinstance(flow.transform, Compose):
        raise ValueError("morph pictures need a flow whose transform is a Compose, "
                         f"got {type(flow.transform).__name__}")
    ref = flow._ref()
    z = torch.randn(n, *flow.event_shape, generator=torch.Generator().manual_seed(seed)).to(ref)
    points = [p.cpu() for p in flow.eval().transform.trajectory(z)]
    colour = torch.atan2(z[:, 1], z[:, 0]).cpu()
    return points, colour


def _panel(ax: Axes, pts: Tensor, colour: Tensor, title: str) -> None:
    box = _bounds(pts)
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1, c=colour.numpy(), cmap="hsv", linewidths=0,
               rasterized=True)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def morph(flow: Flow, path: str | Path, gif: str | Path | None = None, n: int = 3000, seed: int = 0,
          frames_per_layer: int = 6) -> list[Path]:
    """The same Gaussian points after every layer, latent -> data (colour = angle in the latent space):
    a grid with one panel per layer at ``path`` and, if ``gif`` is given, an animation interpolating
    linearly between consecutive layers."""
    if flow.event_shape != (2,):
        raise ValueError(f"morph pictures need a 2-D flow, got event shape {flow.event_shape}")
    points, colour = _trajectory(flow, n, seed)
    k = len(points)
    cols = min(k, 5)
    rows = -(-k // cols)
    fig = _figure(2.2 * cols, 2.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for i, ax in enumerate(axes):
        if i < k:
            _panel(ax, points[i], colour, "base draws" if i == 0 else f"after layer {i}" if i < k - 1 else "samples")
        else:
            ax.axis("off")
    written = [_save(fig, path)]
    if gif is not None:
        written.append(_morph_gif(points, colour, gif, frames_per_layer))
    return written


def _morph_gif(points: list[Tensor], colour: Tensor, path: str | Path, frames_per_layer: int) -> Path:
    box = _bounds(torch.cat(points[-1:] + points[:1]), pad=0.3)
    images = []
    for i in range(len(points) - 1):
        for f in range(frames_per_layer):
            t = f / frames_per_layer
            pts = (1 - t) * points[i] + t * points[i + 1]
            images.append(_frame(pts, colour, box, f"layer {i} -> {i + 1}"))
    images += [_frame(points[-1], colour, box, "samples")] * (2 * frames_per_layer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=80, loop=0)
    return path


def _frame(pts: Tensor, colour: Tensor, box: tuple[float, float, float, float], title: str) -> Image.Image:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("the morph animation needs pillow: pip install 'exactflow[plot]'") from None

    fig = _figure(3, 3)
    ax = fig.subplots()
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1, c=colour.numpy(), cmap="hsv", linewidths=0)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)


def image_grid(images: Tensor, path: str | Path, nrow: int | None = None, levels: int | None = None) -> Path:
    """Tile ``images`` ``(n, C, H, W)`` (C = 1 or 3; values in [0, 1], or integer levels ``0..levels-1``)
    into one PNG, ``nrow`` images per row."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image grids need pillow: pip install 'exactflow[plot]'") from None
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.detach().cpu().double()
    x = (x / (levels - 1) if levels else x).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(n**0.5))
    rows = -(-n // nrow)
    grid = torch.ones(c, rows * (h + 1) + 1, nrow * (w + 1) + 1, dtype=torch.float64)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    array = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(array[..., 0] if c == 1 else array)
    scale = max(1, 256 // max(grid.shape[1:]))
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plot_2d(flow: Flow, data: Tensor, folder: str | Path, history: History | dict | None = None) -> list[Path]:
    """Every 2-D picture of a run into ``folder``: density.png, samples.png, morph.png, morph.gif and,
    with a history, curves.png."""
    folder = Path(folder)
    written = [density(flow, data, folder / "density.png"), samples(flow, data, folder / "samples.png")]
    if isinstance(flow.transform, Compose):
        written += morph(flow, folder / "morph.png", gif=folder / "morph.gif")
    if history is not None:
        written.append(curves(history, folder / "curves.png"))
    return written
