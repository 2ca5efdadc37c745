"""The fast backend: everything exactflow does only for speed, behind one dispatch point.

Each transform family states its maths once, as plain autograd code (the *reference*); that code is the
definition the contract checks against the autograd Jacobian. A family method first offers its call here::

    out = backend.run(self, "forward", x, context)
    if out is not None:
        return out
    ...  # the reference maths

`run` looks the module's class up in one table (`FAST`) and returns ``None``, so that the
reference runs, when no fast path exists or applies: inside `reference` (how the contract gets the
reference numbers), while ``torch.compile`` traces (inductor fuses the plain maths itself), or when the
module is not in the exact form a fast path was written for (another activation, a subclass of a kernel).

What lives here: functional network evaluation without per-module dispatch; hidden activations in
per-thread scratch buffers without autograd (a fresh large tensor costs its page faults on every call);
the conditioner output laid out parameter-major so elementwise kernels read contiguous rows; the
rational-quadratic spline kernel on such rows; the affine kernel in place without autograd; and the
incremental autoregressive sampler (one MADE pass of arithmetic instead of D).

Nothing here is cached from the weights: masked weights and the sampler's blocks are formed from the
current parameters on every call, so ``.data`` writes, ``load_state_dict``, optimiser steps, dtype and device
moves, parametrisations and inference mode are all seen by the next call. The only state is the scratch
buffers (values that never leave one call) and small constant tensors keyed by hyperparameters.
Make `run` return ``None`` and the library is slower and gives the same numbers.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # the families import this module; at run time _lib() fetches them
    from .transforms.autoregressive import AffineUnivariate, MaskedAutoregressive, Univariate
    from .transforms.splines import RQSpline, RQSplineCoupling

__all__ = ["run", "reference", "covers", "large_batch", "scratch"]

#: scratch buffers are used from above SCRATCH_MIN elements (below, a fresh tensor costs no page faults and the
#: lookup would cost more than it saves) up to SCRATCH_MAX (16 MiB in float32); a thread holds at most
#: SCRATCH_TOTAL elements of them (128 MiB in float32) before starting over
SCRATCH_MIN, SCRATCH_MAX, SCRATCH_TOTAL = 1 << 15, 1 << 22, 1 << 25

#: without autograd, from this many features and values on, a MADE lays an affine kernel's parameters out
#: parameter-major (elementwise ops on the interleaved ``(..., 2)`` layout do not vectorise)
PARAM_MAJOR_MIN_FEATURES, PARAM_MAJOR_MIN_SIZE = 16, 1 << 14

#: the incremental sampler runs from ``D * batch`` of this on (and D >= 2), per kernel; below it D passes with the
#: masked weights formed once cost less (measured on MADEs 2x64: affine kernels cross over between D * batch of
#: 1024 and 4096, spline kernels, whose passes cost more, from about 128)
INCREMENTAL_MIN_SIZE = {"affine": 2048, "spline": 256}

_use_reference = contextvars.ContextVar("exactflow_reference", default=False)


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """Within this block every family runs its reference maths (no fast path)."""
    token = _use_reference.set(True)
    try:
        yield
    finally:
        _use_reference.reset(token)


def run(module: nn.Module, op: str, *args: Any) -> Any:
    """The fast route of ``module.<op>(*args)``, or ``None`` where the reference must run."""
    if torch.compiler.is_compiling():
        return None
    fn = _lookup(type(module), op)
    if fn is None or _use_reference.get():
        return None
    return fn(module, *args)


def covers(module: nn.Module) -> bool:
    """True when a fast path may run in ``module`` or one of its sub-modules (the contract then compares it)."""
    return any(_lookup(type(m), op) is not None and _applies(m) for m in module.modules()
               for op in ("forward", "inverse", "step"))


def _applies(module: nn.Module) -> bool:
    """Whether ``module`` has the form the fast paths of its class were written for."""
    lib = _lib()
    if isinstance(module, lib.MLP):
        return _mlp_layers(module) is not None
    if isinstance(module, lib.MADE):
        return _plain_made(module)
    net = getattr(module, "net", None)
    kernel = getattr(module, "univariate", getattr(module, "spline", None))
    return net is not None and _kernel_rows(kernel) is not None and covers(net)


def large_batch(features: int) -> int:
    """A batch size that takes every size-dependent fast path for vectors of ``features`` (hidden widths >= 8)."""
    rows = max(SCRATCH_MIN // 8, PARAM_MAJOR_MIN_SIZE // max(features, 1), max(INCREMENTAL_MIN_SIZE.values()))
    return rows + 1


_resolved: dict[tuple[type, str], Callable | None] = {}


@functools.cache
def _lib() -> types.SimpleNamespace:
    """The library's classes the fast paths recognise (imported once, on first use: they import this module)."""
    from .nets import MADE, MLP, MaskedLinear, join_context
    from .transforms.autoregressive import AffineUnivariate, MaskedAutoregressive
    from .transforms.splines import RQSpline, RQSplineCoupling

    return types.SimpleNamespace(MADE=MADE, MLP=MLP, MaskedLinear=MaskedLinear, join_context=join_context,
                                 MaskedAutoregressive=MaskedAutoregressive, RQSplineCoupling=RQSplineCoupling,
                                 kinds={RQSpline: "spline", AffineUnivariate: "affine"})


def _lookup(cls: type, op: str) -> Callable | None:
    key = (cls, op)
    if key not in _resolved:
        table = _table()
        _resolved[key] = next((table[(c, op)] for c in cls.__mro__ if (c, op) in table), None)
    return _resolved[key]


# scratch buffers --------------------------------------------------------------------------------------------

class _Scratch(threading.local):
    """Per-thread CPU matrices for values that never leave a computation without autograd (hidden
    activations), keyed by shape, dtype, inference mode and a slot naming their role, so consecutive layers
    alternate between two buffers. Other devices have caching allocators (and streams): no buffers there."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}
        self.held = 0  # elements in self.buffers

    def clear(self) -> None:
        """Release this thread's buffers."""
        self.buffers.clear()
        self.held = 0

    def get(self, rows: int, cols: int, like: Tensor, slot: object) -> Tensor | None:
        """A ``(rows, cols)`` buffer of ``like``'s dtype for ``slot`` (contents garbage), or None off the CPU
        and outside (`SCRATCH_MIN`, `SCRATCH_MAX`] elements."""
        size = rows * cols
        if not SCRATCH_MIN < size <= SCRATCH_MAX or like.device.type != "cpu":
            return None
        key = (rows, cols, like.dtype, torch.is_inference_mode_enabled(), slot)
        buf = self.buffers.get(key)
        if buf is None:
            if self.held + size > SCRATCH_TOTAL:  # many shapes in turn: start over rather than hold them all
                self.clear()
            buf = self.buffers[key] = torch.empty(rows, cols, dtype=like.dtype)
            self.held += size
        return buf


scratch = _Scratch()


def _plain_storage(x: Tensor) -> bool:
    """False for the wrapper tensors of ``torch.func`` transforms (they have no storage to write ``out=`` into)."""
    try:
        x.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _buffered(x: Tensor) -> bool:
    """Whether the no-autograd route with scratch buffers may run on ``x``."""
    return not torch.is_grad_enabled() and x.dim() == 2 and _plain_storage(x)


def _relu_layers(h: Tensor, layers: list[tuple[Tensor, Tensor]], buffered: bool) -> Tensor:
    """``h <- relu(h W^T + b)`` for each layer; without autograd into alternating scratch buffers."""
    for i, (w, b) in enumerate(layers):
        if buffered:
            out = scratch.get(h.shape[0], w.shape[0], h, ("hidden", i % 2))
            h = torch.mm(h, w.t(), out=out).add_(b).relu_()
        else:
            h = torch.relu_(F.linear(h, w, b))  # in place on a fresh output: autograd keeps what it needs
    return h


def _linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``h W^T + b``; without autograd as a product and an in-place add (faster than addmm at small batches)."""
    if torch.is_grad_enabled() or h.dim() != 2:
        return F.linear(h, w, b)
    return torch.mm(h, w.t()).add_(b)


def _rows(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``W h^T + b`` (outputs as rows); without autograd as a product and an in-place add."""
    if torch.is_grad_enabled():
        return torch.addmm(b.unsqueeze(1), w, h.t())
    return torch.mm(w, h.t()).add_(b.unsqueeze(1))


# networks ---------------------------------------------------------------------------------------------------

def _weight_bias(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A linear layer's weight and bias, read from its parameter dict where they are plain (``nn.Module``'s
    attribute lookup costs about a microsecond each); a parametrised weight is computed as usual."""
    params = m._parameters
    weight = params.get("weight")
    return (m.weight if weight is None else weight), params.get("bias")


def _mlp_layers(net: nn.Sequential) -> list[tuple[Tensor, Tensor]] | None:
    """``(W, b)`` of every layer of a Linear, ReLU, ..., Linear network with biases, else None."""
    modules = tuple(net._modules.values())
    if len(modules) % 2 == 0 or any(type(m) is not nn.ReLU for m in modules[1::2]):
        return None
    if any(type(m) is not nn.Linear for m in modules[::2]):
        return None
    layers = [_weight_bias(m) for m in modules[::2]]
    return None if any(b is None for _, b in layers) else layers


def mlp_forward(net: nn.Sequential, x: Tensor) -> Tensor | None:
    layers = _mlp_layers(net)
    if layers is None:
        return None
    *body, (w, b) = layers
    return _linear(_relu_layers(x, body, _buffered(x)), w, b)


def _param_major(t: Tensor, features: int, params: int) -> Tensor:
    """Rows (or entries) of ``t`` ordered (feature, parameter) reordered (parameter, feature)."""
    return t.reshape(features, params, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _made_modules(net: nn.Module) -> tuple[nn.Module, ...] | None:
    """The masked layers of a MADE of the form the fast paths run (ReLU, masked linear layers with biases),
    the output layer last; else None."""
    modules = net._modules
    layers = (*modules["layers"]._modules.values(), modules["out"])
    masked = _lib().MaskedLinear
    if type(modules["act"]) is not nn.ReLU or any(type(m) is not masked or m._parameters.get("bias") is None
                                                    for m in layers):
        return None
    return layers


def _plain_made(net: nn.Module) -> bool:
    return _made_modules(net) is not None


def _made_layers(net: nn.Module) -> list[tuple[Tensor, Tensor]] | None:
    """``(W * M, b)`` of every layer of a plain ReLU MADE (output layer last), formed from the current weights."""
    layers = _made_modules(net)
    if layers is None:
        return None
    out = []
    for m in layers:
        w, b = _weight_bias(m)
        out.append((w * m._buffers["mask"], b))
    return out


def made_params(net: nn.Module, x: Tensor, context: Tensor | None, layout: str = "features",
                layers: list[tuple[Tensor, Tensor]] | None = None) -> Tensor | None:
    """The MADE's output ``(batch, D, params)`` (``layout="features"``), the same numbers with each parameter a
    ``(batch, D)`` slice with contiguous rows (``"params"``), or as ``(params, D * batch)`` rows, entry
    ``[k, f * batch + b]`` = parameter ``k`` of feature ``f`` of row ``b`` (``"rows"``). None: not a plain MADE.
    ``layers``: the masked layers already formed from the current weights in this call (`_made_layers`)."""
    layers = _made_layers(net) if layers is None else layers
    if layers is None:
        return None
    n, d, k = x.shape[0], net.features, net.params
    *hidden, (w_out, b_out) = layers
    h = _lib().join_context(x, context)
    if net.residual:
        h = _linear(h, *hidden[0])
        for first, second in zip(hidden[1::2], hidden[2::2], strict=False):
            h = h + _linear(torch.relu_(_linear(torch.relu(h), *first)), *second)
        h = torch.relu(h)
    else:
        h = _relu_layers(h, hidden, _buffered(h))
    if layout == "features":
        return _linear(h, w_out, b_out).view(n, d, k)
    w_out, b_out = _param_major(w_out, d, k), _param_major(b_out, d, k)
    if layout == "params":
        return _linear(h, w_out, b_out).view(n, k, d).transpose(1, 2)
    return _rows(h, w_out, b_out).view(k, -1)


def made_forward(net: nn.Module, x: Tensor, context: Tensor | None = None) -> Tensor | None:
    if x.dim() != 2:
        return None
    return made_params(net, x, context)


# elementwise kernels on parameter rows ------------------------------------------------------------------------

def _kernel_rows(kernel: object) -> str | None:
    """How the backend runs ``kernel`` on parameter rows: ``"spline"``, ``"affine"`` or None (not at all)."""
    return _lib().kinds.get(type(kernel))


def _rows_inverse(kernel: Univariate) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``kernel.inverse`` on flat values (N) with the parameters as rows ``(n_params, N)``."""
    if _kernel_rows(kernel) == "spline":
        return functools.partial(spline_rows, kernel, inverse=True)
    return lambda z, rows: kernel.inverse(z, rows.t())


def _affine_in_place(kernel: AffineUnivariate, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """The affine kernel's forward without autograd, its steps in place on fresh tensors (at large batches every
    fresh buffer costs page faults): ``z = x exp(-s) + t``, log f' = -s, ``s = B tanh(r / B)``."""
    shift, raw = p.unbind(-1)
    bound = kernel.scale_bound
    if bound is None:
        neg_s = -raw
    else:  # -B tanh(r / B) = B - 2B sigmoid(2r / B)
        neg_s = torch.mul(raw, 2 / bound).sigmoid_().mul_(-2 * bound).add_(bound)
    return torch.exp(neg_s).mul_(x).add_(shift), neg_s


# rational-quadratic spline on rows -----------------------------------------------------------------------------

_spline_constants: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def _constants(spline: RQSpline, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(2B m, 2B (1 - K m), -B + 2B j m for j = 1..K-1)``, ``m`` the minimum width (row 0) and height
    (row 1), keyed by the hyperparameters, dtype and device; made as plain tensors even inside inference mode
    (autograd saves them in later training steps)."""
    key = (spline.bins, spline.bound, spline.min_width, spline.min_height, v.dtype, v.device)
    if key not in _spline_constants:
        twice = 2 * spline.bound
        with torch.inference_mode(False):
            mins = torch.tensor([[spline.min_width], [spline.min_height]], dtype=v.dtype, device=v.device)
            steps = torch.arange(1, spline.bins, dtype=v.dtype, device=v.device).unsqueeze(1)
            knots = (twice * mins).unsqueeze(1) * steps - spline.bound  # (2, K - 1, 1)
            _spline_constants[key] = (twice * mins, twice * (1 - spline.bins * mins), knots)
    return _spline_constants[key]


def _spline_bin(spline: RQSpline, cols: Tensor, v: Tensor, kind: int) -> tuple[Tensor, ...]:
    """The bin holding ``v`` (``(N,)``, in ``[-B, B]``) along the x knots (``kind`` 0) or y knots (1) and its
    ``(x_k, w, y_k, h, d_k, d_{k+1})``. Only the softmax and its running sum are formed for every bin; the one
    bin in use is gathered and finished on ``(N,)`` vectors: ``x_k = -B + 2B (k m + (1 - K m) S_k)``."""
    k, bound, n = spline.bins, spline.bound, v.shape[0]
    if k == 1:
        left, size, one = v.new_full((n,), -bound), v.new_full((n,), 2 * bound), v.new_ones(n)
        return left, size, left, size, one, one
    mins, scale, knot_base = _constants(spline, v)
    soft = torch.softmax(cols[: 2 * k].view(2, k, n), dim=1)
    mass = torch.cumsum(soft[:, : k - 1], dim=1)  # (2, K - 1, N): S_1 .. S_{K-1}
    a = 1 - k * (spline.min_width, spline.min_height)[kind]
    inner = torch.add(knot_base[kind], mass[kind], alpha=2 * bound * a)  # knots 1 .. K-1
    idx = (v >= inner).sum(0, keepdim=True)  # (1, N); a value on a knot goes to the bin it starts
    prev = (idx - 1).clamp_min(0)
    first = idx == 0
    soft_k = torch.gather(soft, 1, idx.expand(2, 1, n)).squeeze(1)  # (2, N)
    mass_k = torch.gather(mass, 1, prev.expand(2, 1, n)).squeeze(1).masked_fill(first, 0.0)
    left = torch.addcmul(torch.mul(idx, mins).sub_(bound), scale, mass_k)  # x_k, y_k
    size = torch.addcmul(mins, scale, soft_k)  # w, h
    raw = torch.gather(cols[2 * k:], 0, torch.cat([prev, idx.clamp_max(k - 2)]))
    d = F.softplus(raw + spline.derivative_shift) + spline.min_derivative
    return left[0], size[0], left[1], size[1], d[0].masked_fill(first[0], 1.0), d[1].masked_fill(idx[0] == k - 1, 1.0)


def spline_rows(spline: RQSpline, v: Tensor, rows: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """`RQSpline`'s map (or its inverse) on flat values ``v`` (N) with
    its parameters as rows ``(3K - 1, N)``: the same formulas as the reference, with every op along rows of N
    elements (softmax over a short last dimension is very slow on the CPU)."""
    bound = spline.bound
    vc = v.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _spline_bin(spline, rows, vc, 1 if inverse else 0)
    s = h / w
    if inverse:
        dy, slack = vc - y0, d0 + d1 - 2 * s
        a, b, c = h * (s - d0) + dy * slack, h * d0 - dy * slack, -s * dy
        root = torch.sqrt((b.square() - 4 * a * c).clamp_min(torch.finfo(v.dtype).tiny))
        positive = b >= 0  # the root in [0, 1] in the form without cancellation for the sign of b
        xi = torch.where(positive, 2 * c / torch.where(positive, -b - root, -1.0),
                         (root - b) / torch.where(positive, 1.0, 2 * a)).clamp(0, 1)
    else:
        xi = ((vc - x0) / w).clamp(0, 1)
    rest = torch.rsub(xi, 1)
    t, xi2 = xi * rest, xi.square()
    den = torch.addcmul(s, torch.add(d0, d1).sub_(s, alpha=2), t)
    num = torch.addcmul(torch.addcmul(d1 * xi2, s, t, value=2), d0, rest.square())
    ratio = s / den
    logd = torch.log(num * ratio * ratio)
    out = torch.addcmul(x0, xi, w) if inverse else torch.addcmul(y0, h, torch.addcmul(s * xi2, d0, t) / den)
    inside = v.abs() <= bound
    return torch.where(inside, out, v), torch.where(inside, -logd if inverse else logd, 0.0)


# layers -------------------------------------------------------------------------------------------------------

def autoregressive_forward(layer: MaskedAutoregressive, x: Tensor,
                           context: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """Spline kernels on (feature, batch) rows from a row-laid MADE; without autograd the affine kernel in place,
    parameter-major for wide, large batches. Else None (the reference, whose MADE takes its own fast path)."""
    kind = _kernel_rows(layer.univariate)
    if kind is None or x.dim() != 2:
        return None
    n, d = x.shape
    if kind == "spline":
        rows = made_params(layer.net, x, context, "rows")
        if rows is None:
            return None
        z, logd = spline_rows(layer.univariate, x.t().reshape(-1), rows, inverse=False)
        return z.view(d, n).t().contiguous(), logd.view(d, n).sum(0)
    if torch.is_grad_enabled():
        return None
    wide = d >= PARAM_MAJOR_MIN_FEATURES and x.numel() >= PARAM_MAJOR_MIN_SIZE
    p = made_params(layer.net, x, context, "params" if wide else "features")
    if p is None:
        return None
    z, logd = _affine_in_place(layer.univariate, x, p)
    return z, logd.sum(-1)


def autoregressive_inverse(layer: MaskedAutoregressive, z: Tensor,
                           context: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """Without autograd: the incremental sampler (plain ReLU MADE, D >= 2, D * batch not tiny), else the D
    passes with the masked weights formed once for all of them (and spline kernels on rows). With autograd:
    None (the reference D passes)."""
    kernel = layer.univariate
    kind = _kernel_rows(kernel)
    if kind is None or torch.is_grad_enabled() or z.dim() != 2 or not _plain_storage(z):
        return None
    layers = _made_layers(layer.net)
    if layers is None:
        return None
    n, d = z.shape
    if not layer.net.residual and d >= 2 and d * n >= INCREMENTAL_MIN_SIZE[kind]:
        return incremental_inverse(layer, z, context, layers)
    x = torch.zeros_like(z)
    if kind == "affine":
        for _ in range(d):
            x, logd = kernel.inverse(z, made_params(layer.net, x, context, "features", layers))
        return x, logd.sum(-1)
    flat = z.t().reshape(-1)
    for _ in range(d):
        xt, logd = spline_rows(kernel, flat, made_params(layer.net, x, context, "rows", layers), inverse=True)
        x = xt.view(d, n).t()
    return x.contiguous(), logd.view(d, n).sum(0)


@functools.lru_cache(maxsize=64)
def _sampler_layout(input_degrees: tuple[int, ...], hidden_degrees: tuple[tuple[int, ...], ...], ctx: int,
                    params: int) -> tuple[Tensor, list, Tensor, Tensor, list[int]]:
    """The index structure of `incremental_inverse`, a function of the MADE's degrees alone (memoised on
    their values, which are read afresh on every call, so it cannot go stale).

    Returns the features in degree order; per hidden layer the units in degree order (rows), the inputs in the
    order the states hold them (columns), the number of units of each degree, and per step t the span
    ``(first unit, end, inputs used)`` of the units of degree t (inputs counted with the leading bias row); the
    output rows (features in degree order, then parameters), the last layer's columns, and per step the inputs
    the output block uses."""
    d = len(input_degrees)
    order = torch.argsort(torch.tensor(input_degrees))
    cols = torch.cat([torch.arange(d, d + ctx), order])  # the first states: context, then features by degree
    known = [ctx + t for t in range(d)]  # inputs final before step t (context and features of degree <= t)
    structure = []
    for g in hidden_degrees:
        g = torch.tensor(g)
        rows = torch.argsort(g, stable=True)
        ends = torch.searchsorted(g[rows], torch.arange(d + 1), right=True).tolist()  # units of degree <= t
        starts = [0, *ends[: d - 1]]
        structure.append((rows, cols, [ends[t] - starts[t] for t in range(d)],
                          [(starts[t], ends[t], 1 + known[t]) for t in range(d)]))
        cols, known = rows, ends[:d]
    out_rows = (order.unsqueeze(1) * params + torch.arange(params)).flatten()
    return order, structure, out_rows, cols, [1 + k for k in known]


def incremental_inverse(layer: MaskedAutoregressive, z: Tensor, context: Tensor | None,
                        layers: list[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """The D-pass inverse of a masked autoregressive layer in about one MADE pass of arithmetic.

    A hidden unit of degree m depends only on the features of degree <= m. With the features and every layer's
    units sorted by degree, step t (finding the feature of degree t + 1) computes, per layer, only the block of
    units of degree t from the final units below, then that feature's parameters from the last layer's final
    units, and inverts that one feature. States are ``(1 + units, batch)`` with a leading row of ones that applies
    the biases inside the products; the weight blocks are cut from the current masked weights on every call
    (``layers``: those already formed in this call, `_made_layers`).
    """
    net, d, n = layer.net, layer.features, z.shape[0]
    ctx, params = net.context_features, net.params
    *hidden, (w_last, b_last) = _made_layers(net) if layers is None else layers
    order, structure, out_rows, out_cols, out_used = _sampler_layout(
        tuple(net.input_degrees.tolist()), tuple(tuple(g.tolist()) for g in net.hidden_degrees), ctx, params)
    blocks, spans = [], []
    for (w, b), (rows, cols, sizes, span) in zip(hidden, structure, strict=False):
        rows, cols = rows.to(w.device), cols.to(w.device)
        blocks.append(torch.split(torch.cat([b[rows].unsqueeze(1), w[rows[:, None], cols]], 1), sizes))
        spans.append(span)
    out_rows, out_cols = out_rows.to(w_last.device), out_cols.to(w_last.device)
    outputs = torch.split(torch.cat([b_last[out_rows].unsqueeze(1), w_last[out_rows[:, None], out_cols]], 1), params)
    order = order.to(z.device)

    # the states never leave this call: reused scratch buffers where large (no fresh pages on every call)
    states = []
    for i, rows in enumerate([1 + ctx + d, *(1 + span[-1][1] for span in spans)]):
        h = scratch.get(rows, n, z, ("sampler", i))
        h = z.new_empty(rows, n) if h is None else h
        h[0] = 1
        states.append(h)
    inputs = states[0]  # rows: 1, context, then the features in degree order
    if context is not None:
        inputs[1:1 + ctx] = context.t()
    xs = inputs[1 + ctx:]
    zs = z.t()[order]  # (D, batch), row t: the feature of degree t + 1
    ladj = z.new_zeros(n)
    inverse = _rows_inverse(layer.univariate)
    for t in range(d):  # the units of degree t are complete once the features of degree <= t are known
        for i, (block, span) in enumerate(zip(blocks, spans, strict=False)):
            lo, hi, k = span[t]
            if hi > lo:
                torch.mm(block[t][:, :k], states[i][:k], out=states[i + 1][1 + lo:1 + hi]).relu_()
        w = outputs[t][:, : out_used[t]]
        x, logd = inverse(zs[t], torch.mm(w, states[-1][: w.shape[1]]))
        xs[t] = x
        ladj += logd
    return xs[net.input_degrees - 1].t(), ladj


def spline_coupling_step(layer: RQSplineCoupling, x_id: Tensor, x_tr: Tensor, context: Tensor | None,
                         inverse: bool = False) -> tuple[Tensor, Tensor] | None:
    """A spline coupling with the network's output laid out as parameter rows (no transposed copy of them)."""
    layers = _mlp_layers(layer.net)
    if layers is None or x_tr.dim() != 2 or _kernel_rows(layer.spline) != "spline":
        return None
    n, d = x_tr.shape
    k = layer.spline.n_params
    h = x_id if context is None else _lib().join_context(x_id, context)
    *body, (w, b) = layers
    h = _relu_layers(h, body, _buffered(h))
    rows = _rows(h, _param_major(w, d, k), _param_major(b, d, k)).view(k, -1)
    y, logd = spline_rows(layer.spline, x_tr.t().reshape(-1), rows, inverse)
    return y.view(d, n).t().contiguous(), logd.view(d, n).sum(0)


def _table() -> dict[tuple[type, str], Callable]:
    lib = _lib()
    return {
        (lib.MLP, "forward"): mlp_forward,
        (lib.MADE, "forward"): made_forward,
        (lib.MaskedAutoregressive, "forward"): autoregressive_forward,
        (lib.MaskedAutoregressive, "inverse"): autoregressive_inverse,
        (lib.RQSplineCoupling, "step"): spline_coupling_step,
    }

