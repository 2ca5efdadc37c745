"""An interactive explorer of a fitted flow: one self-contained HTML file (plotly.js inline, no network).

For a 2-D flow the page shows, with a slider and a play button over the layers:

* the same Gaussian points after every layer, latent -> data (hover: the point's index and its
  position; the slider follows one point across the layers);
* each layer's log-det contribution on a data-space grid: with ``x_0 = x`` and ``x_j = T_j(x_{j-1})``
  (data -> latent), log p(x) = log p_z(x_L) + sum_j log|det dT_j/dx_{j-1}|, and the frame that adds
  layer ``j`` shows its term ``log|det dT_j/dx_{j-1}|`` at every grid point x (the Gaussian frame
  shows the base term log p_z(x_L));
* the data, the learned density exp(log p(x)) and, with a history, the training curves.

A tabular flow (D > 2) gets pairwise marginals of data and samples for the first few features, an
image flow a grid of data images beside a grid of samples.
Everything is computed at export; the page opens from disk. ``#layer=3`` or ``#layer=last`` in the
address opens that layer. plotly is an optional extra (``pip install 'exactflow[plot]'``), imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .core import Compose, layer_context
from .distributions import Flow
from .plots import _bounds

if TYPE_CHECKING:  # plotly is an optional extra ("plot"), imported when a page is written
    from plotly.graph_objects import Figure

    from .training import History

__all__ = ["explore", "layers"]

# Runs before plotly: records uncaught errors and console.error calls into <pre id="explorer-errors">.
ERRORS_SCRIPT = """<script>
(function () {
  var errors = [];
  function report(msg) {
    errors.push(String(msg));
    var show = function () {
      var el = document.getElementById('explorer-errors');
      if (!el) { el = document.createElement('pre'); el.id = 'explorer-errors'; document.body.appendChild(el); }
      el.textContent = errors.join('\\n');
    };
    if (document.body) { show(); } else { document.addEventListener('DOMContentLoaded', show); }
  }
  window.addEventListener('error', function (e) { report('Uncaught ' + e.message); });
  window.addEventListener('unhandledrejection', function (e) { report('Unhandled rejection ' + e.reason); });
  var error = console.error;
  console.error = function () { report(Array.prototype.join.call(arguments, ' ')); error.apply(console, arguments); };
})();
</script>"""

# Runs after the plot is drawn: ``#layer=K`` / ``#layer=last`` picks the frame; marks the page as ready.
LAYER_SCRIPT = """
var gd = document.getElementById('{plot_id}');
function explorerGoto() {
  var frames = (gd._transitionData && gd._transitionData._frames) || [];
  var m = /layer=(\\w+)/.exec(location.hash);
  if (!m || !frames.length) { document.body.setAttribute('data-explorer-frame', 'none'); return; }
  var k = m[1] === 'last' ? frames.length - 1 : Math.max(0, Math.min(frames.length - 1, parseInt(m[1], 10) || 0));
  Plotly.animate(gd, [frames[k].name], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                        transition: {duration: 0}})
    .then(function () { document.body.setAttribute('data-explorer-frame', String(k)); });
}
window.addEventListener('hashchange', explorerGoto);
explorerGoto();
"""


def layers(transform: nn.Module) -> list[nn.Module]:
    """The layers of ``transform`` in the data -> latent order, nested `Compose` containers flattened
    (a transform that is not a `Compose` is one layer).

    Example:
        >>> import exactflow
        >>> flow = exactflow.build("RealNVP", features=2, depth=3, hidden=(8,))
        >>> len(layers(flow.transform))
        3
    """
    if isinstance(transform, Compose):
        return [leaf for b in transform.bijections for leaf in layers(b)]
    return [transform]


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ImportError("the explorer needs plotly: pip install 'exactflow[plot]'") from None
    return go


def _f32(x: Tensor) -> np.ndarray:
    """Compact numbers for the page (plotly stores float32 arrays as base64)."""
    return x.detach().cpu().float().numpy()


@torch.no_grad()
def _trajectory(flow: Flow, parts: list[nn.Module], n: int, seed: int) -> tuple[Tensor, list[Tensor]]:
    ref = flow._ref()
    z = torch.randn(n, *flow.event_shape, generator=torch.Generator().manual_seed(seed)).to(ref)
    if len(parts) == 1 and not isinstance(flow.transform, Compose):  # one opaque layer (e.g. a CNF)
        return z, [z.cpu(), flow.transform.inverse(z)[0].cpu()]
    points = [z]
    for b in reversed(parts):
        points.append(b.inverse(points[-1], layer_context(b, None))[0])
    return z, [p.cpu() for p in points]


@torch.no_grad()
def _layer_terms(flow: Flow, parts: list[nn.Module], grid: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Base term log p_z(x_L) and each layer's log-det term at the data-space ``grid`` points."""
    x, terms = grid, []
    for b in parts:
        x, ladj = b(x, layer_context(b, None))
        terms.append(ladj)
    return flow.base.log_prob(x).cpu(), [t.cpu() for t in terms]


def _curves(go: Any, fig: Figure, history: History | dict | None, row: int, col: int) -> None:
    h = history if history is None or isinstance(history, dict) else history.to_dict()
    if not h or not h.get("step"):
        where = fig.get_subplot(row, col)
        fig.add_annotation(text="no training history", showarrow=False, xref="paper", yref="paper",
                           x=sum(where.xaxis.domain) / 2, y=sum(where.yaxis.domain) / 2)
        fig.update_xaxes(visible=False, row=row, col=col)
        fig.update_yaxes(visible=False, row=row, col=col)
        return
    train = torch.tensor(h["train"], dtype=torch.float64)
    window = max(1, len(train) // 50)
    smooth = torch.nn.functional.avg_pool1d(train[None, None], window, stride=1).flatten()
    unit = h.get("unit", "nats")
    fig.add_trace(go.Scatter(x=h["step"], y=_f32(train), mode="lines", name="train (per step)", opacity=0.3,
                             line={"color": "#1f77b4", "width": 1}, showlegend=True), row=row, col=col)
    fig.add_trace(go.Scatter(x=h["step"][window - 1:], y=_f32(smooth), mode="lines", name="train (mean)",
                             line={"color": "#1f77b4"}), row=row, col=col)
    if h.get("valid"):
        fig.add_trace(go.Scatter(x=h["valid_step"], y=h["valid"], mode="lines+markers", name="valid",
                                 line={"color": "#d62728"}), row=row, col=col)
    lo, hi = torch.quantile(train, 0.02).item(), torch.quantile(train, 0.98).item()
    if h.get("valid"):
        lo, hi = min(lo, min(h["valid"])), max(hi, max(h["valid"]))
    margin = 0.05 * (hi - lo + 1e-9)
    fig.update_xaxes(title_text="step", row=row, col=col)
    fig.update_yaxes(title_text=f"NLL ({unit})", range=[lo - margin, hi + margin], row=row, col=col)


def _points(go: Any, x: Tensor, colour: np.ndarray | str, name: str, hover: str, **kw: Any) -> Any:
    marker = {"size": 3, "color": colour, "opacity": 0.7}
    if not isinstance(colour, str):
        marker.update(colorscale="HSV", cmin=-np.pi, cmax=np.pi)
    return go.Scatter(x=_f32(x[:, 0]), y=_f32(x[:, 1]), mode="markers", marker=marker, name=name,
                      customdata=np.arange(len(x)), hovertemplate=hover, showlegend=False, **kw)


def _colorbar(fig: Figure, k: int, title: str) -> dict:
    """A slim colour bar right of subplot ``k`` (1-based, row-major, 3 per row)."""
    x = fig.layout[f"xaxis{k}"].domain[1]
    y = fig.layout[f"yaxis{k}"].domain
    return {"title": {"text": title, "side": "right"}, "x": x + 0.005, "y": (y[0] + y[1]) / 2, "len": 0.4,
            "thickness": 10}


def _figure_2d(flow: Flow, data: Tensor, history: History | dict | None, n: int, resolution: int,
               seed: int) -> Figure:
    go = _plotly()
    from plotly.subplots import make_subplots

    parts = layers(flow.transform)
    z, points = _trajectory(flow, parts, n, seed)
    names = ["Gaussian"] + [type(b).__name__ for b in reversed(parts)] if len(points) == len(parts) + 1 \
        else ["Gaussian", type(flow.transform).__name__]
    angle = torch.atan2(z[:, 1], z[:, 0]).cpu().numpy()
    box = _bounds(data.cpu())
    move = _bounds(torch.cat(points), pad=0.05)
    gx = torch.linspace(box[0], box[1], resolution, dtype=torch.float64)
    gy = torch.linspace(box[2], box[3], resolution, dtype=torch.float64)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1).to(flow._ref())
    flow.eval()
    with torch.no_grad():
        logp = flow.log_prob(grid).cpu().reshape(resolution, resolution)
    if len(points) == len(parts) + 1:
        base, terms = _layer_terms(flow, parts, grid)
        heat = [base] + terms[::-1]  # frame k adds layer parts[L - k] (latent -> data)
    else:
        heat = [logp.reshape(-1), logp.reshape(-1)]  # one opaque layer: log p(x) twice
    heat = [h.reshape(resolution, resolution) for h in heat]

    fig = make_subplots(rows=2, cols=3, horizontal_spacing=0.11, vertical_spacing=0.1,
                        subplot_titles=("points after each layer (latent -> data)",
                                        "log-det term of the layer (base term at the Gaussian)",
                                        "training curves", "data", "learned density exp(log p(x))",
                                        "samples beside the data"))

    def frame_traces(k: int) -> list:
        h = heat[k]
        bound = float(h.abs().quantile(0.99)) or 1.0
        hover = f"layer {k}: {names[k]}<br>point %{{customdata}}<br>(%{{x:.3f}}, %{{y:.3f}})<extra></extra>"
        what = "log p_z(x_L)" if k == 0 else f"log|det| of {names[k]}"
        scatter = _points(go, points[k], angle, names[k], hover)
        heatmap = go.Heatmap(x=_f32(gx), y=_f32(gy), z=_f32(h), zmid=0 if k else None,
                             zmin=None if k else float(h.quantile(0.01)), zmax=bound if k else float(h.max()),
                             colorscale="RdBu_r" if k else "Viridis",
                             colorbar=_colorbar(fig, 2, "log p_z" if k == 0 else "log|det|"),
                             hovertemplate=f"{what}<br>x=(%{{x:.3f}}, %{{y:.3f}})<br>%{{z:.3f}}<extra></extra>")
        if k:
            heatmap.update(zmin=-bound)
        return [scatter, heatmap]

    first = frame_traces(0)
    fig.add_trace(first[0], row=1, col=1)
    fig.add_trace(first[1], row=1, col=2)
    _curves(go, fig, history, 1, 3)
    shown = data[:n].cpu()
    fig.add_trace(_points(go, shown, "#1f77b4", "data", "data point %{customdata}<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Heatmap(x=_f32(gx), y=_f32(gy), z=_f32(logp.exp()), colorscale="Magma",
                             colorbar=_colorbar(fig, 5, "p(x)"),
                             hovertemplate="x=(%{x:.3f}, %{y:.3f})<br>p(x)=%{z:.4f}<extra></extra>"), row=2, col=2)
    fig.add_trace(_points(go, shown, "#1f77b4", "data", "data point %{customdata}<extra></extra>"), row=2, col=3)
    fig.add_trace(_points(go, points[-1], "#ff7f0e", "samples", "sample %{customdata}<extra></extra>"), row=2, col=3)

    fig.frames = [go.Frame(data=frame_traces(k), traces=[0, 1], name=str(k)) for k in range(len(points))]
    step = {"frame": {"duration": 0, "redraw": True}, "mode": "immediate", "transition": {"duration": 0}}
    fig.update_layout(
        sliders=[{"active": 0, "x": 0.13, "len": 0.5, "y": 1.0, "yanchor": "bottom", "pad": {"t": 0, "b": 30},
                  "currentvalue": {"prefix": "layer: ", "font": {"size": 13}},
                  "steps": [{"label": "0 Gaussian" if k == 0 else f"{k} {names[k]}" if len(names) <= 6 else str(k),
                             "method": "animate", "args": [[str(k)], step]} for k in range(len(points))]}],
        updatemenus=[{"type": "buttons", "x": 0.0, "y": 1.0, "xanchor": "left", "yanchor": "bottom",
                      "pad": {"b": 30}, "direction": "left", "showactive": False,
                      "buttons": [{"label": "Play", "method": "animate",
                                   "args": [None, {"frame": {"duration": 700, "redraw": True}, "fromcurrent": True,
                                                   "transition": {"duration": 300}, "mode": "immediate"}]},
                                  {"label": "Pause", "method": "animate",
                                   "args": [[None], {"frame": {"duration": 0, "redraw": False},
                                                     "mode": "immediate", "transition": {"duration": 0}}]}]}],
        height=860, width=1350, margin={"t": 110, "l": 40, "r": 40, "b": 40}, hovermode="closest",
        title={"text": f"exactflow explorer: {len(parts)} layer(s), {sum(p.numel() for p in flow.parameters())} "
                       "parameters", "x": 0.5, "y": 0.99, "yanchor": "top"},
        legend={"x": 0.99, "y": 0.99, "xanchor": "right"})
    for k, rng in ((1, move), (2, box), (4, box), (5, box), (6, box)):
        suffix = "" if k == 1 else str(k)
        fig.layout[f"xaxis{suffix}"].update(range=list(rng[:2]))
        fig.layout[f"yaxis{suffix}"].update(range=list(rng[2:]), scaleanchor=f"x{suffix}", scaleratio=1)
    return fig


def _figure_tabular(flow: Flow, data: Tensor, history: History | dict | None, n: int, features: int,
                    seed: int) -> Figure:
    go = _plotly()
    from plotly.subplots import make_subplots

    d = min(features, data.shape[1])
    torch.manual_seed(seed)
    with torch.no_grad():
        drawn = flow.eval().sample(n).cpu()
    shown = data[:n].cpu()
    # the curves take the first axes; the scatter matrix (not a make_subplots type) takes axes 2..d+1 on the left
    fig = make_subplots(rows=1, cols=1, subplot_titles=("training curves",))
    _curves(go, fig, history, 1, 1)
    fig.update_xaxes(domain=[0.72, 1.0], row=1, col=1)
    fig.layout.annotations[0].update(x=0.86)
    axes = {"xaxes": [f"x{i + 2}" for i in range(d)], "yaxes": [f"y{i + 2}" for i in range(d)]}
    for x, name, colour in ((shown, "data", "#1f77b4"), (drawn, "samples", "#ff7f0e")):
        dims = [{"label": f"x{i}", "values": _f32(x[:, i])} for i in range(d)]
        fig.add_trace(go.Splom(dimensions=dims, name=name, customdata=np.arange(len(x)), **axes,
                               marker={"size": 2.5, "color": colour, "opacity": 0.5}, showupperhalf=False,
                               hovertemplate=f"{name} %{{customdata}}<extra></extra>", diagonal={"visible": False}))
    gap = 0.02
    for i in range(d):
        lo, hi = i * 0.66 / d, (i + 1) * 0.66 / d - gap
        fig.layout[f"xaxis{i + 2}"] = {"domain": [lo, hi], "anchor": f"y{i + 2}"}
        fig.layout[f"yaxis{i + 2}"] = {"domain": [1 - (i + 1) * 0.95 / d + gap, 1 - i * 0.95 / d],
                                       "anchor": f"x{i + 2}"}
    fig.update_layout(height=800, width=1350, hovermode="closest",
                      title={"text": f"exactflow explorer: {data.shape[1]} features; pairwise marginals of "
                                     f"features 0-{d - 1}, data (blue) and samples (orange)", "x": 0.5})
    return fig


def _tile(x: Tensor, nrow: int) -> np.ndarray:
    """Images ``(n, C, H, W)`` in [0, 1] (C = 1 or 3) tiled into one RGB array ``(rows, cols, 3)`` of uint8."""
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = torch.ones(3, rows * (h + 1) + 1, nrow * (w + 1) + 1, dtype=torch.float64)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i].expand(3, h, w)
    return (grid * 255).round().byte().permute(1, 2, 0).numpy()


def _figure_image(flow: Flow, data: Tensor, history: History | dict | None, images: int, levels: int | None,
                  seed: int) -> Figure:
    go = _plotly()
    from plotly.subplots import make_subplots

    torch.manual_seed(seed)
    with torch.no_grad():
        drawn = flow.eval().sample(images).detach().cpu().double().clamp(0, 1)
    shown = data[:images].detach().cpu().double()
    scale = (levels - 1) if levels else max(1.0, float(shown.max()))
    shown = (shown / scale).clamp(0, 1)
    nrow = max(1, int(images**0.5))
    fig = make_subplots(rows=1, cols=3, subplot_titles=("data", "samples", "training curves"),
                        horizontal_spacing=0.06)
    for col, x in ((1, shown), (2, drawn)):
        fig.add_trace(go.Image(z=_tile(x, nrow), hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(visible=False, row=1, col=col)
        fig.update_yaxes(visible=False, row=1, col=col)
    _curves(go, fig, history, 1, 3)
    fig.update_layout(height=520, width=1350, title={"text": f"exactflow explorer: images {tuple(data.shape[1:])}",
                                                     "x": 0.5})
    return fig


def explore(flow: Flow, data: Tensor, path: str | Path, history: History | dict | None = None, *, n: int = 1500,
            resolution: int = 60, features: int = 4, images: int = 16, levels: int | None = None,
            seed: int = 0) -> Path:
    """Write an interactive explorer of ``flow`` fitted to ``data`` to one self-contained HTML file.

    2-D flows get the layer slider (points and per-layer log-det terms), the data beside the learned
    density and, given ``history`` (a `History` or its ``to_dict()``), the training curves; tabular
    flows (D > 2) get pairwise marginals of data and samples for the first ``features`` features;
    image flows get ``images`` data images beside as many samples.
    ``n`` points are drawn per panel and grids are ``resolution``^2, which keeps the file near the
    size of plotly.js itself (about 5 MB). The page needs no network; ``#layer=last`` opens the last layer.

    Args:
        flow: an unconditional flow on vectors or images ``(C, H, W)`` with C = 1 or 3.
        data: points ``(N, *event)`` of the flow's event shape (e.g. the test split).
        path: the ``.html`` file to write (folders are created).
        history: training history to plot, or None.
        n: points per scatter panel.
        resolution: grid points per side for the heat maps.
        features: tabular flows: the first ``features`` features are drawn.
        images: image flows: how many data images and samples are shown.
        levels: image flows: pixels of ``data`` are integers ``0..levels-1`` (None: scaled by their maximum
            when it exceeds 1); samples are taken to lie in [0, 1].
        seed: seed of the Gaussian points and samples.

    Returns:
        The path written.

    Raises:
        ValueError: for conditional flows, other event shapes, or data of the wrong shape.

    Example:
        >>> import tempfile, exactflow
        >>> flow = exactflow.build("RealNVP", features=2, depth=2, hidden=(8,))
        >>> page = exactflow.explore(flow, torch.randn(300, 2), tempfile.mkdtemp() + "/explorer.html",
        ...                          n=200, resolution=20)
        >>> page.is_file(), page.suffix
        (True, '.html')
    """
    shape = tuple(flow.event_shape)
    if getattr(flow, "context_features", 0):
        raise ValueError("the explorer draws unconditional flows; this flow takes a context")
    if not (len(shape) == 1 or (len(shape) == 3 and shape[0] in (1, 3))):
        raise ValueError("the explorer draws flows on vectors (2-D or tabular) or images (C, H, W) with C = 1 or 3, "
                         f"got event shape {shape}")
    if tuple(data.shape[1:]) != shape:
        raise ValueError(f"data must have shape (n, {', '.join(map(str, shape))}) for this flow, "
                         f"got {tuple(data.shape)}")
    if len(shape) == 3:
        fig = _figure_image(flow, data, history, images, levels, seed)
    elif shape == (2,):
        fig = _figure_2d(flow, data, history, n, resolution, seed)
    elif shape[0] > 2:
        fig = _figure_tabular(flow, data, history, n, features, seed)
    else:
        raise ValueError(f"the explorer needs at least 2 features, got event shape {shape}")
    html = fig.to_html(include_plotlyjs=True, full_html=True, auto_play=False, div_id="explorer",
                       post_script=LAYER_SCRIPT, config={"displaylogo": False})
    html = html.replace("<head>", "<head><title>exactflow explorer</title>" + ERRORS_SCRIPT, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
