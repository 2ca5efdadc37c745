"""An interactive explorer of a fitted flow: one self-contained HTML file (plotly.js inline, no network).

For a 2-D flow with layers ``T = T_L o ... o T_1`` (data -> latent), write ``x_s = T_s(x_{s-1})`` with
``x_0 = x`` the data and ``x_L = z`` the latent. The page has two sliders (each with a play button) over
the stages ``s``:

* "generate" (Gaussian -> data): Gaussian draws ``z`` pulled back through ``T_L^{-1}, T_{L-1}^{-1}, ...``;
* "normalise" (data -> Gaussian): the data pushed through ``T_1, T_2, ...``.

At each stage the points are drawn over the density of ``x_s`` under the model,
``log p_s(y) = log p_z(T_L o ... o T_{s+1}(y)) + sum_{j > s} log|det dT_j/dx_{j-1}|``, which runs from the
Gaussian (``s = L``) to the learned density (``s = 0``). Beside it, the log-det term of the layer the frame
just crossed, ``log|det dT_j/dx_{j-1}|`` at every data-space grid point ``x`` (so that
``log p(x) = log p_z(x_L) + sum_j`` of these terms; frame 0 shows the base term ``log p_z(x_L)``).
Hovering a point draws its path through all the stages and lists its coordinates after every layer.
Below: the data (or, for variational inference, the target density ``p~(x)`` normalised on the grid),
the learned density ``exp(log p(x))`` and samples beside the data; with a history, the training curves.

A tabular flow (D > 2) gets pairwise marginals of data and samples for the first few features. An image
flow gets data beside samples with a temperature slider (draws ``x = T^{-1}(t z)`` for the same ``z``
at a few temperatures ``t``) and a slider that interpolates between the latents of pairs of data images.
Everything is computed at export; the page opens from disk. The address fragment picks frames:
``#layer=3`` or ``#layer=last`` (generate), ``#layer=2&dir=normalise``, ``#frame=NAME`` (any frame, e.g.
``t0.7`` or ``mix4`` on image pages), ``#slide=1:4`` (press slider 1 at step 4 with the mouse) and
``#point=17`` (move the mouse over point 17 of the layer panel: its path shows). plotly is an optional
extra (``pip install 'exactflow[plot]'``), imported lazily.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
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

    from .targets import Target
    from .training import History

__all__ = ["explore", "layers", "slerp", "target_points"]

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

# Runs after the plot is drawn. The address fragment picks frames (see the module docstring); then the page
# marks itself ready with data-explorer-frame (the frames shown, or "none"). EXPLORER holds the 2-D paths.
GOTO_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var EXPLORER = %s;
function explorerNames() {
  var h = location.hash.slice(1), names = [];
  var all = ((gd._transitionData && gd._transitionData._frames) || []).map(function (f) { return f.name; });
  var frame = /(?:^|&)frame=([^&]+)/.exec(h), layer = /(?:^|&)layer=(\\w+)/.exec(h);
  if (frame) { names = decodeURIComponent(frame[1]).split(','); }
  if (layer) {
    var p = /(?:^|&)dir=normali[sz]e/.test(h) ? 'n' : 'g';
    var own = all.filter(function (n) { return n[0] === p && /^[gn]\\d+$/.test(n); });
    var k = layer[1] === 'last' ? own.length - 1 : Math.max(0, Math.min(own.length - 1, parseInt(layer[1], 10) || 0));
    if (own.length) { names.push(p + k); }
  }
  return names.filter(function (n) { return all.indexOf(n) >= 0; });
}
// press the rail of slider `index` at step k ('last': the last step) with the mouse, as a user does
function explorerSlide(index, k) {
  var group = gd.querySelectorAll('.slider-group')[index];
  if (!group) { return Promise.reject(new Error('no slider ' + index)); }
  var ticks = group.querySelectorAll('.slider-tick-rect'), rail = group.querySelector('.slider-rail-touch-rect');
  var i = k === 'last' ? ticks.length - 1 : Math.max(0, Math.min(ticks.length - 1, parseInt(k, 10) || 0));
  var t = ticks[i].getBoundingClientRect(), r = rail.getBoundingClientRect();
  var at = {clientX: t.left + t.width / 2, clientY: r.top + r.height / 2, bubbles: true, view: window};
  var done = new Promise(function (resolve) { gd.once('plotly_animated', resolve); });
  rail.dispatchEvent(new MouseEvent('mousedown', at));
  rail.dispatchEvent(new MouseEvent('mouseup', at));
  return done;
}
var explorerFrame = 'none';
gd.on('plotly_animatingframe', function (e) { explorerFrame = String(e.name); });
function explorerGoto() {
  var names = explorerNames(), step = Promise.resolve();
  names.forEach(function (name) {
    step = step.then(function () {
      return Plotly.animate(gd, [name], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                         transition: {duration: 0}});
    });
  });
  var slide = /(?:^|&)slide=(\\d+):(\\w+)/.exec(location.hash.slice(1));
  if (slide) { step = step.then(function () { return explorerSlide(parseInt(slide[1], 10), slide[2]); }); }
  step.then(function () {
    var point = /(?:^|&)point=(\\d+)/.exec(location.hash.slice(1));
    if (point && EXPLORER) { explorerHover(parseInt(point[1], 10)); }
    document.body.setAttribute('data-explorer-frame', explorerFrame);
  });
}
if (EXPLORER) {
  var explorerDir = 'g', explorerStage = 0, explorerPaths = {};
  Object.keys(EXPLORER.dirs).forEach(function (d) {
    var s = atob(EXPLORER.dirs[d].points), bytes = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { bytes[i] = s.charCodeAt(i); }
    explorerPaths[d] = new Float32Array(bytes.buffer);
  });
  var explorerBox = document.createElement('div');
  explorerBox.id = 'explorer-path';
  explorerBox.style.cssText = 'font: 13px sans-serif; margin: 4px 40px; min-height: 2.6em; color: #333';
  explorerBox.textContent = 'Hover a point in the first panel to see its path through the layers.';
  gd.parentNode.insertBefore(explorerBox, gd.nextSibling);
  var explorerShow = function (i) {
    var dir = EXPLORER.dirs[explorerDir], p = explorerPaths[explorerDir], n = dir.n, xs = [], ys = [], text = [];
    if (!(i >= 0 && i < n)) { return; }
    for (var k = 0; k < EXPLORER.stages; k++) {
      var x = p[2 * (k * n + i)], y = p[2 * (k * n + i) + 1];
      xs.push(x); ys.push(y); text.push(dir.labels[k] + ': (' + x.toFixed(3) + ', ' + y.toFixed(3) + ')');
    }
    Plotly.restyle(gd, {x: [xs], y: [ys], text: [text]}, [EXPLORER.path]);
    explorerBox.textContent = dir.what + ' ' + i + ' through the layers: ' + text.join('  \\u2192  ');
    document.body.setAttribute('data-explorer-path', explorerDir + i);
  };
  gd.on('plotly_hover', function (e) {
    var pt = e.points[0];
    if (pt.curveNumber === EXPLORER.scatter) { explorerShow(pt.pointNumber); }
  });
  // a real mouse move over point i of the layer panel (what the #point= fragment does)
  var explorerHover = function (i) {
    var p = explorerPaths[explorerDir], n = EXPLORER.dirs[explorerDir].n, k = explorerStage;
    var box = gd.querySelector('.nsewdrag[data-subplot="xy"]'), r = box.getBoundingClientRect();
    var x = gd._fullLayout.xaxis.c2p(p[2 * (k * n + i)]), y = gd._fullLayout.yaxis.c2p(p[2 * (k * n + i) + 1]);
    box.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + x, clientY: r.top + y, bubbles: true}));
  };
  gd.on('plotly_animatingframe', function (e) {
    var d = String(e.name).charAt(0);
    if (!EXPLORER.dirs[d]) { return; }
    explorerStage = parseInt(String(e.name).slice(1), 10) || 0;
    if (d !== explorerDir) {  // the other direction's points: a different point set
      explorerDir = d;
      Plotly.restyle(gd, {x: [[]], y: [[]], text: [[]]}, [EXPLORER.path]);
      explorerBox.textContent = 'Hover a point in the first panel to see its path through the layers.';
    }
  });
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


# plotly.js as gzip in base64, unpacked by the browser's DecompressionStream (Chrome 80, Firefox 113, Safari 16.4)
UNPACK_SCRIPT = """<script>
var explorerPlotly = (function () {
  if (typeof DecompressionStream === 'undefined') {
    return Promise.reject(new Error('this browser has no DecompressionStream to unpack the inline plotly.js; ' +
                                    'write the page with compress=False (exactflow explore --no-compress)'));
  }
  var packed = atob(document.getElementById('explorer-plotly').textContent), bytes = new Uint8Array(packed.length);
  for (var i = 0; i < packed.length; i++) { bytes[i] = packed.charCodeAt(i); }
  var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).text().then(function (code) {
    var script = document.createElement('script');
    script.text = code;  // runs now, in the global scope: defines window.Plotly
    document.head.appendChild(script);
    return window.Plotly;
  });
})();
</script>"""

PLOT_SCRIPT = """<script>
explorerPlotly.then(function (Plotly) {
  var fig = JSON.parse(document.getElementById('explorer-figure').textContent);
  return Plotly.newPlot('explorer', fig.data, fig.layout, %s).then(function () {
    return fig.frames ? Plotly.addFrames('explorer', fig.frames) : null;
  });
}).then(function () {
%s
}).catch(function (e) { console.error('explorer: ' + (e && e.stack || e)); });
</script>"""


def _html(fig: Figure, post_script: str, compress: bool) -> str:
    """The page: plotly.js (gzip + base64 with ``compress``, else plain), the figure as JSON, and the scripts."""
    import gzip

    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    def inline(text: str) -> str:  # nothing in the text may close the <script> element early
        return text.replace("</", "<\\/")

    if compress:
        packed = base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9, mtime=0)).decode("ascii")
        plotly = f'<script id="explorer-plotly" type="application/octet-stream">{packed}</script>{UNPACK_SCRIPT}'
    else:
        plotly = (f"<script>{get_plotlyjs()}</script>"
                  "<script>var explorerPlotly = Promise.resolve(window.Plotly);</script>")
    spec = inline(pio.to_json(fig, validate=False))
    config = json.dumps({"displaylogo": False, "responsive": False})
    size = f"width:{fig.layout.width}px;height:{fig.layout.height}px"
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>exactflow explorer</title>\n"
            f"{ERRORS_SCRIPT}\n{plotly}\n</head>\n<body>\n<div id=\"explorer\" style=\"{size}\"></div>\n"
            f"<script id=\"explorer-figure\" type=\"application/json\">{spec}</script>\n"
            f"{PLOT_SCRIPT % (config, inline(post_script.replace('{plot_id}', 'explorer')))}\n</body>\n</html>\n")


def _grid(box: Sequence[float], resolution: int, ref: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``resolution``^2 points on ``box`` = (x0, x1, y0, y1), row by row: (x axis, y axis, points (r*r, 2))."""
    gx = torch.linspace(box[0], box[1], resolution, dtype=torch.float64)
    gy = torch.linspace(box[2], box[3], resolution, dtype=torch.float64)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    return gx, gy, grid if ref is None else grid.to(ref)


@torch.no_grad()
def _stages(parts: list[nn.Module], z: Tensor, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Generate: ``z`` after inverting the last k layers, k = 0..L; normalise: ``x`` after the first j layers."""
    generate, normalise = [z], [x]
    for b in reversed(parts):
        generate.append(b.inverse(generate[-1], layer_context(b, None))[0])
    for b in parts:
        normalise.append(b(normalise[-1], layer_context(b, None))[0])
    return [g.cpu() for g in generate], [v.cpu() for v in normalise]


@torch.no_grad()
def _stage_log_density(flow: Flow, parts: list[nn.Module], y: Tensor, s: int) -> Tensor:
    """log p_s(y), the model's density of the stage-``s`` variable ``x_s``: push ``y`` through T_{s+1}..T_L."""
    total = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for b in parts[s:]:
        y, ladj = b(y, layer_context(b, None))
        total = total + ladj
    return (flow.base.log_prob(y) + total).cpu()


@torch.no_grad()
def _layer_terms(flow: Flow, parts: list[nn.Module], grid: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Base term log p_z(x_L) and each layer's log-det term at the data-space ``grid`` points."""
    x, terms = grid, []
    for b in parts:
        x, ladj = b(x, layer_context(b, None))
        terms.append(ladj)
    return flow.base.log_prob(x).cpu(), [t.cpu() for t in terms]


@torch.no_grad()
def target_points(flow: Flow, target: Target, n: int, draws: int = 10, seed: int = 0) -> Tensor:
    """``n`` approximate draws from a variational target ``p~`` by sampling-importance-resampling from ``q``:
    ``draws * n`` samples ``x_i ~ q`` are resampled with probabilities ``w_i`` proportional to ``p~(x_i) / q(x_i)``.

    The points follow ``p`` as the number of draws grows, but only where ``q`` puts mass: a mode that
    ``q`` misses stays empty, which is what the explorer should show.

    Example:
        >>> import exactflow
        >>> from exactflow.targets import registry
        >>> flow = exactflow.build("RealNVP", features=2, depth=2, hidden=(8,))
        >>> target_points(flow, registry.build("banana"), 100).shape
        torch.Size([100, 2])
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, log_q = flow.eval().sample_and_log_prob(draws * n)
    log_w = torch.nan_to_num((target(x) - log_q).double().cpu(), nan=-math.inf, posinf=-math.inf)
    if not torch.isfinite(log_w).any():
        raise ValueError(f"target {target.name!r}: no draw of q has a finite weight p~/q; is q fitted to it?")
    index = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True, generator=generator)
    return x[index.to(x.device)].detach()


LOSS_LABELS = {"reverse-kl": "-ELBO", "elbo": "-ELBO", "flow-matching": "FM loss"}


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
    label = LOSS_LABELS.get(h.get("objective", ""), "NLL")
    fig.add_trace(go.Scatter(x=h["step"], y=_f32(train), mode="lines", name="train (per step)", opacity=0.3,
                             line={"color": "#1f77b4", "width": 1}, showlegend=True), row=row, col=col)
    fig.add_trace(go.Scatter(x=h["step"][window - 1:], y=_f32(smooth), mode="lines", name="train (mean)",
                             line={"color": "#1f77b4"}), row=row, col=col)
    if h.get("valid"):
        fig.add_trace(go.Scatter(x=h["valid_step"], y=h["valid"], mode="lines+markers", name="valid",
                                 line={"color": "#d62728"}), row=row, col=col)
    finite = train[torch.isfinite(train)]
    lo, hi = (torch.quantile(finite, 0.02).item(), torch.quantile(finite, 0.98).item()) if len(finite) else (0, 1)
    if h.get("valid"):
        lo, hi = min(lo, min(h["valid"])), max(hi, max(h["valid"]))
    margin = 0.05 * (hi - lo + 1e-9)
    fig.update_xaxes(title_text="step", row=row, col=col)
    fig.update_yaxes(title_text=label if unit == label else f"{label} ({unit})", range=[lo - margin, hi + margin],
                     row=row, col=col)


def _points(go: Any, x: Tensor, colour: np.ndarray | str, name: str, hover: str, size: float = 3, **kw: Any) -> Any:
    marker = {"size": size, "color": colour, "opacity": 0.7}
    if not isinstance(colour, str):
        marker.update(colorscale="HSV", cmin=-np.pi, cmax=np.pi)
    return go.Scatter(x=_f32(x[:, 0]), y=_f32(x[:, 1]), mode="markers", marker=marker, name=name,
                      hovertemplate=hover, showlegend=False, **kw)


def _colorbar(fig: Figure, k: int, title: str) -> dict:
    """A slim colour bar right of subplot ``k`` (1-based, row-major, 3 per row)."""
    x = fig.layout[f"xaxis{k}"].domain[1]
    y = fig.layout[f"yaxis{k}"].domain
    return {"title": {"text": title, "side": "right"}, "x": x + 0.005, "y": (y[0] + y[1]) / 2, "len": 0.4,
            "thickness": 10}


def _square(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``box`` widened about its centre to a square (the layer panel's axes are equal-scaled)."""
    half = max(box[1] - box[0], box[3] - box[2]) / 2
    cx, cy = (box[0] + box[1]) / 2, (box[2] + box[3]) / 2
    return cx - half, cx + half, cy - half, cy + half


def _exp(log_p: Tensor) -> Tensor:
    """exp, with NaN (a grid point outside a layer's domain) as density 0."""
    return torch.nan_to_num(log_p.exp(), nan=0.0, posinf=0.0)


def _b64(points: list[Tensor]) -> str:
    """Stages ``(S, n, 2)`` as little-endian float32 bytes in base64 (decoded by the page's script)."""
    return base64.b64encode(torch.stack(points).float().numpy().astype("<f4").tobytes()).decode("ascii")


PLAY = {"frame": {"duration": 700, "redraw": True}, "transition": {"duration": 300}, "mode": "immediate"}
STEP = {"frame": {"duration": 0, "redraw": True}, "mode": "immediate", "transition": {"duration": 0}}


def _slider(names: list[str], labels: list[str], prefix: str, x: float, length: float, y: float,
            anchor: str = "bottom") -> dict:
    return {"active": 0, "x": x, "len": length, "y": y, "yanchor": anchor, "pad": {"t": 0, "b": 30},
            "transition": {"duration": 0},  # the grip jumps; the frames carry the motion
            "currentvalue": {"prefix": prefix, "font": {"size": 13}},
            "steps": [{"label": label, "method": "animate", "args": [[name], STEP]}
                      for name, label in zip(names, labels, strict=True)]}


def _play(group: str, x: float, y: float, anchor: str = "bottom") -> dict:
    """A play button for the frames of ``group`` and a pause button, stacked."""
    pause = {"label": "\u275a\u275a", "method": "animate",
             "args": [[None], {**STEP, "frame": {"duration": 0, "redraw": False}}]}
    return {"type": "buttons", "x": x, "y": y, "xanchor": "left", "yanchor": anchor, "pad": {"b": 30},
            "direction": "left", "showactive": False,
            "buttons": [{"label": "\u25b6", "method": "animate", "args": [group, PLAY]}, pause]}


def _figure_2d(flow: Flow, data: Tensor, history: History | dict | None, n: int, resolution: int, seed: int,
               target: Target | None, resampled: bool) -> tuple[Figure, dict]:
    go = _plotly()
    from plotly.subplots import make_subplots

    flow.eval()
    ref = flow._ref()
    parts = layers(flow.transform)
    L = len(parts)
    m = min(n, 500)  # points in the layer panel: few enough that the density under them shows
    shown = data[:n].cpu()
    torch.manual_seed(seed)
    with torch.no_grad():
        z = flow.base.rsample(n).to(ref)
    generate, normalise = _stages(parts, z, shown[:m].to(ref))
    samples, z, generate = generate[-1], z[:m], [g[:m] for g in generate]  # the samples panel shows all n
    names = [type(b).__name__ for b in parts]  # names[j - 1] is T_j
    colour_g = torch.atan2(z[:, 1], z[:, 0]).cpu().numpy()
    colour_n = torch.atan2(normalise[-1][:, 1], normalise[-1][:, 0]).nan_to_num().numpy()
    box = tuple(target.bounds) if target is not None else _bounds(shown)
    move = _square(_bounds(torch.cat(generate + normalise).nan_to_num(), pad=0.05))
    gx, gy, grid = _grid(box, resolution, ref)
    mx, my, moving = _grid(move, resolution, ref)
    shape = (resolution, resolution)
    # one pass over both grids: the layer terms on the data grid, and log p_0 = log p on the layer panel's grid
    both_base, both_terms = _layer_terms(flow, parts, torch.cat([grid, moving]))
    cut = resolution**2
    base, terms = both_base[:cut], [t[:cut] for t in both_terms]
    logp = (base + torch.stack(terms).sum(0)).reshape(shape)
    stage_density = [_exp(both_base[cut:] + torch.stack([t[cut:] for t in both_terms]).sum(0)).reshape(shape)]
    stage_density += [_exp(_stage_log_density(flow, parts, moving, s)).reshape(shape) for s in range(1, L + 1)]
    heat = [base.reshape(shape)] + [t.reshape(shape) for t in terms]  # heat[j]: T_j's term (heat[0]: base)

    what, one = ("target points", "target point") if resampled else ("data", "data point")
    fig = make_subplots(rows=2, cols=3, horizontal_spacing=0.11, vertical_spacing=0.12,
                        subplot_titles=("points over their density (square-root scale) at each layer",
                                        "log-det term of the layer just crossed",
                                        "training curves",
                                        "target density p~(x) / Z" if target is not None else "data",
                                        "learned density exp(log p(x))",
                                        "samples beside the " + ("target points" if target is not None else "data")))

    def frame_traces(direction: str, k: int) -> list:
        """Frame k of a direction: stage s = L - k (generate) or k (normalise); crossing T_j (j = 0: none)."""
        s, j = (L - k, L - k + 1) if direction == "g" else (k, k)
        j = 0 if k == 0 else j
        points, colour = (generate[k], colour_g) if direction == "g" else (normalise[k], colour_n)
        label = labels[direction][k]
        h = heat[j]
        bound = float(h.abs().nan_to_num().quantile(0.99)) or 1.0
        term = "log p_z(x_L)" if j == 0 else f"log|det| of T_{j} ({names[j - 1]})"
        point = "base draw" if direction == "g" else one
        root = stage_density[s].sqrt()  # a square-root colour scale: the tails show beside the points
        density = go.Heatmap(x=_f32(mx), y=_f32(my), z=_f32(root), showscale=False, hoverinfo="skip", zsmooth="best",
                             colorscale=[[0, "#E5ECF6"], [1, "#2a3f5f"]], zmin=0,
                             zmax=float(root.max()) or 1.0)
        scatter = _points(go, points, colour, label,
                          f"{label}<br>{point} %{{pointNumber}}<br>(%{{x:.3f}}, %{{y:.3f}})<extra></extra>", size=4)
        heatmap = go.Heatmap(x=_f32(gx), y=_f32(gy), z=_f32(h), zmid=0 if j else None,
                             zmin=-bound if j else float(h.nan_to_num().quantile(0.01)),
                             zmax=bound if j else float(h.nan_to_num().max()),
                             colorscale="RdBu_r" if j else "Viridis",
                             colorbar=_colorbar(fig, 2, "log p_z" if j == 0 else "log|det|"),
                             hovertemplate=f"{term}<br>x=(%{{x:.3f}}, %{{y:.3f}})<br>%{{z:.3f}}<extra></extra>")
        return [density, scatter, heatmap]

    labels = {"g": ["base draws"] + [f"after {names[L - k]}^-1 (T_{L - k + 1})" for k in range(1, L + 1)],
              "n": [what] + [f"after {names[j - 1]} (T_{j})" for j in range(1, L + 1)]}
    first = frame_traces("g", 0)
    fig.add_trace(first[0], row=1, col=1)
    fig.add_trace(first[1], row=1, col=1)
    fig.add_trace(go.Scatter(x=[], y=[], text=[], mode="lines+markers", name="path", showlegend=False,
                             line={"color": "black", "width": 1.5}, marker={"size": 6, "color": "black"},
                             hovertemplate="%{text}<extra>path</extra>"), row=1, col=1)
    fig.add_trace(first[2], row=1, col=2)
    _curves(go, fig, history, 1, 3)
    if target is not None:
        with torch.no_grad():
            log_t = target(grid).double().cpu()
        cell = (gx[1] - gx[0]) * (gy[1] - gy[0])
        p_t = _exp(log_t - torch.logsumexp(log_t[torch.isfinite(log_t)], 0) - cell.log()).reshape(shape)
        top = max(float(p_t.max()), float(_exp(logp).max())) or 1.0
        fig.add_trace(go.Heatmap(x=_f32(gx), y=_f32(gy), z=_f32(p_t), colorscale="Magma", zmin=0, zmax=top,
                                 showscale=False,
                                 hovertemplate="x=(%{x:.3f}, %{y:.3f})<br>p(x)=%{z:.4f}<extra>target</extra>"),
                      row=2, col=1)
    else:
        top = None
        fig.add_trace(_points(go, shown, "#1f77b4", "data", "data point %{pointNumber}<extra></extra>"),
                      row=2, col=1)
    fig.add_trace(go.Heatmap(x=_f32(gx), y=_f32(gy), z=_f32(_exp(logp)), colorscale="Magma", zmin=0, zmax=top,
                             colorbar=_colorbar(fig, 5, "p(x)"),
                             hovertemplate="x=(%{x:.3f}, %{y:.3f})<br>p(x)=%{z:.4f}<extra></extra>"), row=2, col=2)
    fig.add_trace(_points(go, shown, "#1f77b4", what, what + " %{pointNumber}<extra></extra>"), row=2, col=3)
    fig.add_trace(_points(go, samples, "#ff7f0e", "samples", "sample %{pointNumber}<extra></extra>"), row=2, col=3)

    fig.frames = [go.Frame(data=frame_traces(d, k), traces=[0, 1, 3], name=f"{d}{k}", group=d)
                  for d in ("g", "n") for k in range(L + 1)]
    few = L <= 6
    fig.update_layout(
        sliders=[_slider([f"g{k}" for k in range(L + 1)],
                         [("base" if k == 0 else f"{k} {names[L - k]}") if few else str(k) for k in range(L + 1)],
                         "generate (base \u2192 data), layers inverted: ", 0.08, 0.38, 1.0),
                 _slider([f"n{k}" for k in range(L + 1)],
                         [(what if k == 0 else f"{k} {names[k - 1]}") if few else str(k) for k in range(L + 1)],
                         f"normalise ({what} \u2192 base), layers applied: ", 0.6, 0.38, 1.0)],
        updatemenus=[_play("g", 0.0, 1.0), _play("n", 0.52, 1.0)],
        height=900, width=1350, margin={"t": 150, "l": 40, "r": 40, "b": 40}, hovermode="closest",
        title={"text": f"exactflow explorer: {L} layer(s), {sum(p.numel() for p in flow.parameters())} parameters"
                       + (f"; VI target {target.name}" if target is not None else ""),
               "x": 0.5, "y": 0.995, "yanchor": "top"},
        legend={"x": 0.99, "y": 0.99, "xanchor": "right"})
    for k, rng in ((1, move), (2, box), (4, box), (5, box), (6, box)):
        suffix = "" if k == 1 else str(k)
        fig.layout[f"xaxis{suffix}"].update(range=list(rng[:2]))
        fig.layout[f"yaxis{suffix}"].update(range=list(rng[2:]), scaleanchor=f"x{suffix}", scaleratio=1)
    paths = {"stages": L + 1, "scatter": 1, "path": 2,
             "dirs": {"g": {"labels": labels["g"], "points": _b64(generate), "what": "base draw", "n": m},
                      "n": {"labels": labels["n"], "points": _b64(normalise), "what": one,
                            "n": int(normalise[0].shape[0])}}}
    return fig, paths
def _figure_tabular(flow: Flow, data: Tensor, history: History | dict | None, n: int, features: int,
                    seed: int, what: str = "data") -> Figure:
    go = _plotly()
    from plotly.subplots import make_subplots

    d = min(features, data.shape[1])
    torch.manual_seed(seed)
    with torch.no_grad():
        drawn = flow.eval().sample(n).cpu()
    shown = data[:n].cpu()
    # the curves take the first axes; the scatter matrix (not a make_subplots type) takes axes 2..d+1 on the left
    fig = make_subplots(rows=1, cols=1, subplot_titles=("training curves",))
    fig.update_xaxes(domain=[0.74, 1.0], row=1, col=1)
    fig.update_yaxes(domain=[0.3, 1.0], row=1, col=1)
    fig.layout.annotations[0].update(x=0.87, y=1.0)
    _curves(go, fig, history, 1, 1)
    axes = {"xaxes": [f"x{i + 2}" for i in range(d)], "yaxes": [f"y{i + 2}" for i in range(d)]}
    for x, name, colour in ((shown, what, "#1f77b4"), (drawn, "samples", "#ff7f0e")):
        dims = [{"label": f"x{i}", "values": _f32(x[:, i])} for i in range(d)]
        fig.add_trace(go.Splom(dimensions=dims, name=name, **axes, showupperhalf=False,
                               marker={"size": 2.5, "color": colour, "opacity": 0.5},
                               hovertemplate=f"{name} %{{pointNumber}}<extra></extra>", diagonal={"visible": False}))
    # the lower triangle without the diagonal: columns are features 0..d-2, rows features 1..d-1
    gap, k = 0.03, d - 1
    for i in range(d):
        col, row = min(i, k - 1), max(i - 1, 0)
        fig.layout[f"xaxis{i + 2}"] = {"domain": [col * 0.68 / k, (col + 1) * 0.68 / k - gap], "anchor": f"y{d + 1}",
                                       "title": {"text": f"x{i}"} if i < k else None}
        fig.layout[f"yaxis{i + 2}"] = {"domain": [1 - (row + 1) / k + gap, 1 - row / k], "anchor": "x2",
                                       "title": {"text": f"x{i}"} if i else None}
    fig.update_layout(height=800, width=1350, hovermode="closest",
                      title={"text": f"exactflow explorer: {data.shape[1]} features; pairwise marginals of "
                                     f"features 0-{d - 1}, {what} (blue) and samples (orange)", "x": 0.5})
    return fig


def _png(x: Tensor, nrow: int) -> str:
    """Images ``(n, C, H, W)`` in [0, 1] (C = 1 or 3) tiled ``nrow`` to a row into one PNG data URI, scaled up
    (nearest neighbour) to about 256 pixels across."""
    from PIL import Image

    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = torch.ones(3, rows * (h + 1) + 1, nrow * (w + 1) + 1, dtype=torch.float64)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i].expand(3, h, w)
    img = Image.fromarray((grid * 255).round().byte().permute(1, 2, 0).numpy())
    scale = max(1, 256 // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` (rows ``(n, ...)``), ``t`` in [0, 1]:
    ``sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b`` with ``theta`` the angle between
    the rows; linear where the angle is near zero. Unlike the straight line, it does not pass through the
    low-norm middle that Gaussian latents never reach.

    Example:
        >>> a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> slerp(a, b, 0.5)
        tensor([[0.7071, 0.7071]])
    """
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    small = theta < 1e-4
    sin = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    out = torch.where(small, (1 - t) * fa + t * fb, (torch.sin((1 - t) * theta) * fa + torch.sin(t * theta) * fb) / sin)
    return out.reshape(a.shape)


def _figure_image(flow: Flow, data: Tensor, history: History | dict | None, images: int, levels: int | None,
                  seed: int, temperatures: Sequence[float], steps: int) -> Figure:
    go = _plotly()
    from plotly.subplots import make_subplots

    flow.eval()
    ref = flow._ref()
    shown = data[:images].detach().cpu().double()
    scale = (levels - 1) if levels else max(1.0, float(shown.max()))
    nrow = max(1, int(images**0.5))
    # samples x = T^{-1}(t z) for the same base draws z at every temperature t
    torch.manual_seed(seed)
    with torch.no_grad():
        eps = flow.base.rsample(images).to(ref)
    with torch.no_grad():
        drawn = {t: flow.from_latent(t * eps).detach().cpu().double().clamp(0, 1) for t in temperatures}
    # interpolation: latents of pairs of data images (pixel centres (k + 1/2) / levels), joined by slerp
    pairs = max(1, min(4, data.shape[0] // 2))
    y = data[: 2 * pairs].double()
    y = (y + 0.5) / levels if levels else (y / scale).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        latent = flow.to_latent(y.to(ref))
    if not torch.isfinite(latent).all():
        raise ValueError("the flow maps the data images to non-finite latents; check `levels` "
                         f"(pixels of data run from {float(data.min())} to {float(data.max())})")
    a, b = latent[:pairs], latent[pairs: 2 * pairs] if data.shape[0] >= 2 else latent[:pairs].neg()
    ts = [i / (steps - 1) for i in range(steps)]
    with torch.no_grad():
        mixes = [flow.from_latent(slerp(a, b, t)).detach().cpu().double().clamp(0, 1) for t in ts]
    ends = (shown[:pairs] / scale).clamp(0, 1), (shown[pairs: 2 * pairs] / scale).clamp(0, 1)

    def mix_grid(m: Tensor) -> str:  # one row per pair: data image a, the interpolant, data image b
        rows = torch.stack([ends[0], m, ends[1] if len(ends[1]) else m], 1).flatten(0, 1)
        return _png(rows, 3)

    fig = make_subplots(rows=2, cols=3, specs=[[{}, {}, {"rowspan": 2}], [{"colspan": 2}, None, None]],
                        subplot_titles=("data", "samples at temperature t (x = T^-1(t z), the same z)",
                                        "training curves", "interpolation between the latents of two data images "
                                        "(slerp; left and right: the two images)"),
                        horizontal_spacing=0.06, vertical_spacing=0.16, row_heights=[0.55, 0.45])
    first = temperatures[-1]
    fig.add_trace(go.Image(source=_png((shown / scale).clamp(0, 1), nrow), hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Image(source=_png(drawn[first], nrow), hoverinfo="skip", name=f"t={first}"), row=1, col=2)
    fig.add_trace(go.Image(source=mix_grid(mixes[0]), hoverinfo="skip"), row=2, col=1)
    for row, col in ((1, 1), (1, 2), (2, 1)):
        fig.update_xaxes(visible=False, row=row, col=col)
        fig.update_yaxes(visible=False, row=row, col=col)
    _curves(go, fig, history, 1, 3)
    fig.frames = ([go.Frame(data=[go.Image(source=_png(drawn[t], nrow), hoverinfo="skip")], traces=[1],
                            name=f"t{t:g}", group="t") for t in temperatures]
                  + [go.Frame(data=[go.Image(source=mix_grid(m), hoverinfo="skip")], traces=[2], name=f"mix{i}",
                              group="mix") for i, m in enumerate(mixes)])
    top, bottom = fig.layout.yaxis.domain[1], fig.layout.yaxis4.domain[0]
    fig.update_layout(
        sliders=[_slider([f"t{t:g}" for t in temperatures], [f"{t:g}" for t in temperatures], "temperature t: ",
                         0.36, 0.3, top),
                 _slider([f"mix{i}" for i in range(steps)], [f"{t:.2f}" for t in ts], "interpolation s: ",
                         0.12, 0.5, bottom - 0.02, "top")],
        updatemenus=[_play("t", 0.28, top), _play("mix", 0.04, bottom - 0.02, "top")],
        height=900, width=1350, margin={"t": 130, "l": 40, "r": 40, "b": 110},
        title={"text": f"exactflow explorer: images {tuple(data.shape[1:])}", "x": 0.5, "y": 0.995, "yanchor": "top"})
    fig.layout.sliders[0].active = len(temperatures) - 1
    return fig


TEMPERATURES = (0.1, 0.3, 0.5, 0.7, 0.85, 1.0)


def explore(flow: Flow, data: Tensor | None = None, path: str | Path | None = None,
            history: History | dict | None = None, *, target: Target | None = None, n: int = 1500,
            resolution: int = 60, features: int = 4, images: int = 16, levels: int | None = None,
            temperatures: Sequence[float] = TEMPERATURES, steps: int = 9, seed: int = 0, compress: bool = True) -> Path:
    """Write an interactive explorer of ``flow`` fitted to ``data`` (or to a variational ``target``) to one
    self-contained HTML file, and return its path.

    2-D flows get two layer sliders, Gaussian -> data and data -> Gaussian, moving the points over each
    stage's density, the per-layer log-det terms, point paths on hover, the data beside the learned density
    and, given ``history`` (a `History` or its ``to_dict()``), the training curves. Tabular flows (D > 2)
    get pairwise marginals of data and samples for the first ``features`` features; image flows get
    ``images`` data images beside as many samples with a temperature slider, and an interpolation slider
    between the latents of pairs of data images. For variational inference pass ``target``: 2-D pages
    show its density (normalised on the grid) beside q's, and without ``data`` the target's points are
    q's draws resampled by ``p~/q`` (`target_points`).
    With the defaults a 2-D page is about 3 MB (plotly.js, compressed, is most of it).

    Args:
        flow: an unconditional flow on vectors or images ``(C, H, W)`` with C = 1 or 3.
        data: points ``(N, *event)`` of the flow's event shape (e.g. the test split); may be None with ``target``.
        path: the ``.html`` file to write (folders are created); None: ``explorer.html`` in the current folder.
        history: training history to plot, or None.
        target: a `exactflow.targets.Target` the flow was fitted to by variational inference, or None.
        n: points per scatter panel.
        resolution: grid points per side for the heat maps.
        features: tabular flows: the first ``features`` features are drawn.
        images: image flows: how many data images and samples are shown.
        levels: image flows: pixels of ``data`` are integers ``0..levels-1`` (None: scaled by their maximum
            when it exceeds 1); samples are taken to lie in [0, 1].
        temperatures: image flows: the temperatures of the sample grids.
        steps: image flows: frames of the interpolation.
        seed: seed of the Gaussian points and samples.
        compress: inline plotly.js gzipped (about 2 MB instead of 4.8 MB; the browser unpacks it with
            ``DecompressionStream``, in every major browser since 2023); False: as plain text.

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
    if features < 2:
        raise ValueError(f"features must be at least 2 (pairs of features are drawn), got {features}")
    if len(shape) == 1 and shape[0] < 2:
        raise ValueError(f"the explorer needs at least 2 features, got event shape {shape}")
    if target is not None and (len(shape) != 1 or target.dim != shape[0]):
        raise ValueError(f"target {target.name!r} is {target.dim}-D but the flow's event shape is {shape}")
    resampled = data is None
    if data is None:
        if target is None:
            raise ValueError("pass data (points of the flow's event shape) or a variational target")
        data = target_points(flow, target, n, seed=seed).cpu()
    if not isinstance(data, Tensor) or tuple(data.shape[1:]) != shape:
        got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data must have shape (n, {', '.join(map(str, shape))}) for this flow, got {got}")
    if not data.shape[0]:
        raise ValueError("data is empty: the explorer needs at least one point")
    paths = None
    if len(shape) == 3:
        if not temperatures or not all(0 < t < math.inf for t in temperatures) or steps < 2:
            raise ValueError("image pages need positive temperatures and steps >= 2, "
                             f"got {tuple(temperatures)} and {steps}")
        fig = _figure_image(flow, data, history, images, levels, seed, tuple(temperatures), steps)
    elif shape == (2,):
        fig, paths = _figure_2d(flow, data, history, n, resolution, seed, target, resampled)
    else:
        fig = _figure_tabular(flow, data, history, n, features, seed, "target points" if resampled else "data")
    html = _html(fig, GOTO_SCRIPT % json.dumps(paths), compress)
    path = Path("explorer.html" if path is None else path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
