"""Public numerical verification: run the same checks exactflow runs on its own transforms.

``check_bijection(b, x)`` checks, in float64 on randomised parameters, the reference maths of ``b``
(`exactflow.backend` switched off): round trip both ways (and log-dets that cancel), log|det| against
``slogdet`` of the autograd Jacobian in both directions, batch independence, shapes, float32 in/out, gradients
reaching every parameter and the input, and a ``state_dict`` round trip. Then every route the fast backend can
take is compared with that reference: with and without autograd, in inference mode, on a batch above every
size threshold, after a weight update through ``.data`` and through ``load_state_dict``, and on a copy made
inside inference mode. ``check_flow(flow, x)`` checks a `Flow` likewise. Both work on a copy
(the module given keeps its dtype and train/eval mode) and raise ``AssertionError`` naming the object and the
failed property. A parameter whose gradient is identically zero on the batch (it has no effect on those rows: a
trained network's ReLU units that are off on all of them, say) is not an error of the maths: it gets a
`DeadParameterWarning` and the checks go on. exactflow's own contract, on randomised parameters, turns that
warning into an error.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import backend
from .core import Bijection
from .distributions import Flow

__all__ = ["CheckError", "DeadParameterWarning", "check_bijection", "check_flow", "randomize_", "warm_up"]


class CheckError(AssertionError):
    """A check failed: the message names the object and the property."""


class DeadParameterWarning(UserWarning):
    """A parameter's gradient is identically zero on the checked batch: it does not affect those rows."""


#: float32 against float64: float32 rounds at 6e-8 relative; a check's values pass through at most a few hundred
#: roundings (network layers, spline bins, a D-pass sampler), each amplified by the map's local condition number
#: (below about 10 for the randomised test models), so 1e-3 of each value's size leaves a wide margin and is still
#: far below any error in the maths. The absolute part is 1e-3 of the tensor's RMS: a value near zero that is a
#: difference of large terms (a log-det summed over features) carries the rounding of those terms, not its own.
FLOAT32_RTOL = 1e-3


def _close(name: str, what: str, got: Tensor, want: Tensor, atol: float, rtol: float = 1e-5) -> None:
    if got.shape != want.shape:
        raise CheckError(f"{name}: {what}: shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        err = (got - want).abs().max().item()
        raise CheckError(f"{name}: {what}: max abs error {err:.3g} exceeds atol {atol:.1g} + rtol {rtol:.1g} * |value|")


def _close32(name: str, what: str, got: Tensor, want: Tensor) -> None:
    """``got`` (float32) against ``want`` (float64) with the float32 tolerance of `FLOAT32_RTOL`."""
    scale = want.square().mean().sqrt().item() if want.numel() else 0.0
    _close(name, what, got.to(want.dtype), want, FLOAT32_RTOL * max(scale, 1e-3), FLOAT32_RTOL)


@torch.no_grad()
def randomize_(module: nn.Module, scale: float = 0.3, generator: torch.Generator | None = None) -> nn.Module:
    """Add N(0, scale^2) noise to every floating parameter, so zero-initialised nets stop being identities.

    For flows of the default size (several layers of 64-unit networks) use ``scale`` of about 0.1: at 0.3 their
    maps become so ill-conditioned (|z| in the thousands, spline slopes near their minimum in every layer) that
    even a float64 round trip loses digits, without anything being wrong with the maths."""
    for p in module.parameters():
        if p.is_floating_point():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return module


@torch.no_grad()
def warm_up(module: nn.Module, x: Tensor, context: Tensor | None = None, steps: int = 3) -> None:
    """Run ``steps`` forward passes in training mode (initialises ActNorm, moves BatchNorm's running
    statistics off their defaults), then switch to eval mode."""
    module.train()
    for _ in range(steps):
        module(x, context)
    module.eval()


def _jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    flat = x.reshape(-1)
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(1, *x.shape)).reshape(-1), flat)
    return jac


def _output(fn: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
            context: Tensor | None) -> Callable[[Tensor], Tensor]:
    """``v -> fn(v, context)[0]``: the map alone (without its log-det), ``context`` bound now."""
    return lambda v: fn(v, context)[0]


def _grads(name: str, module: nn.Module, loss: Tensor, inputs: dict[str, Tensor]) -> None:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    tensors = [p for _, p in params] + list(inputs.values())
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    for (label, _), g in zip([*params, *inputs.items()], grads, strict=True):
        if g is None:
            raise CheckError(f"{name}: no gradient reaches {label}")
        if not torch.isfinite(g).all():
            raise CheckError(f"{name}: non-finite gradient for {label}")
    for (label, _p), g in zip(params, grads, strict=False):
        if not g.any():
            warnings.warn(DeadParameterWarning(
                f"{name}: gradient for parameter {label} is identically zero on this batch: it has no effect on "
                "these rows (e.g. ReLU units that are off on all of them); the other checks go on"), stacklevel=4)


def check_bijection(
    b: Bijection,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-6,
    name: str | None = None,
    jacobian_rows: int = 2,
) -> None:
    """Verify ``b`` on the batch ``x`` (float64 recommended; a copy of ``b`` in ``x``'s dtype is checked).

    ``atol`` is the float64 tolerance; float32 is compared with a looser, derived one. The copy runs
    in eval mode; call `warm_up` and `randomize_` first for data-dependent layers.

    Example:
        >>> from exactflow.transforms import registry
        >>> entry = registry["MaskedAffineAutoregressive"]
        >>> layer = randomize_(entry(features=3, hidden=(8, 8)))
        >>> check_bijection(layer, torch.randn(8, 3, dtype=torch.float64))
    """
    name = name or type(b).__name__
    repr(b)
    b = copy.deepcopy(b).to(x.dtype).eval()
    with backend.reference():
        w = _check_reference(name, b, x, context, atol, jacobian_rows)
    _check_fast_paths(name, b, x, w, context, atol)


def _check_reference(name: str, b: Bijection, x: Tensor, context: Tensor | None, atol: float,
                     jacobian_rows: int) -> Tensor:
    """The checks of the maths itself (run on the reference); returns latent points inside the codomain."""
    n = x.shape[0]

    # shapes, dtypes, finiteness
    z, ladj = b(x, context)
    if ladj.shape != (n,):
        raise CheckError(f"{name}: forward log-det has shape {tuple(ladj.shape)}, expected ({n},)")
    if z.shape[0] != n or z.dtype != x.dtype or ladj.dtype != x.dtype:
        raise CheckError(f"{name}: forward gives {tuple(z.shape)} {z.dtype} from {tuple(x.shape)} {x.dtype}")
    if not (torch.isfinite(z).all() and torch.isfinite(ladj).all()):
        raise CheckError(f"{name}: forward gives non-finite values")

    # round trip, data -> latent -> data and latent -> data -> latent
    xr, ladj_inv = b.inverse(z, context)
    _close(name, "inverse(forward(x)) == x", xr, x, atol)
    _close(name, "forward and inverse log-dets cancel", ladj + ladj_inv, torch.zeros_like(ladj), atol)
    w = 0.7 * z + 0.3 * z.roll(1, 0)  # new latent points, inside any convex latent domain
    xw, lw = b.inverse(w, context)
    zw, lz = b(xw, context)
    _close(name, "forward(inverse(z)) == z", zw, w, atol)
    _close(name, "inverse and forward log-dets cancel", lw + lz, torch.zeros_like(lw), atol)

    # log|det| against the autograd Jacobian, both directions
    for i in range(min(jacobian_rows, n)):
        ctx = None if context is None else context[i : i + 1]
        for direction, fn, point, reported in (
            ("forward", _output(b, ctx), x[i], ladj[i]),
            ("inverse", _output(b.inverse, ctx), w[i], lw[i]),
        ):
            jac = _jacobian(fn, point)
            sign, logabs = torch.linalg.slogdet(jac)
            if sign == 0:
                raise CheckError(f"{name}: singular {direction} Jacobian at row {i}")
            _close(name, f"{direction} log|det| vs autograd Jacobian (row {i})", reported, logabs, atol * 10, 1e-5)

    # batch independence: row-by-row equals batched, and perturbing one row changes only that row
    for i in range(min(3, n)):
        ctx = None if context is None else context[i : i + 1]
        zi, li = b(x[i : i + 1], ctx)
        _close(name, f"batch independence of forward (row {i})", zi[0], z[i], atol)
        _close(name, f"batch independence of log-det (row {i})", li[0], ladj[i], atol)
    if n > 1:
        xp = x.clone()
        xp[0] = 0.5 * (x[0] + x[-1])  # a different point, inside any convex data domain
        zp, lp = b(xp, context)
        _close(name, "perturbing row 0 leaves the other rows unchanged", zp[1:], z[1:], atol)
        _close(name, "perturbing row 0 leaves the other log-dets unchanged", lp[1:], ladj[1:], atol)

    # float32 in, float32 out, close to float64
    if x.dtype == torch.float64:
        b32 = copy.deepcopy(b).float()
        x32 = x.float()
        c32 = None if context is None else context.float()
        z32, l32 = b32(x32, c32)
        if z32.dtype != torch.float32 or l32.dtype != torch.float32:
            raise CheckError(f"{name}: float32 input gives {z32.dtype}/{l32.dtype} output")
        _close32(name, "float32 forward agrees with float64", z32, z)
        _close32(name, "float32 log-det agrees with float64", l32, ladj)
        # the float32 inverse is judged by its residual in the latent space, T(x32) against z (in float64): its
        # error in the data space is that residual times the inverse's condition, which a randomised flow may
        # make large without anything being wrong
        x32r, _ = b32.inverse(z.float(), c32)
        _close32(name, "float32 inverse: T(inverse(z)) returns z", b(x32r.to(x.dtype), context)[0], z)

    # gradients reach every parameter, the input and the context, both directions
    xg = x.clone().requires_grad_(True)
    cg = None if context is None else context.clone().requires_grad_(True)
    zg, lg = b(xg, cg)
    xb, lb = b.inverse(w, cg)
    loss = (zg * torch.randn_like(zg)).sum() + lg.sum() + (xb * torch.randn_like(xb)).sum() + lb.sum()
    inputs = {"input x": xg} if cg is None else {"input x": xg, "context": cg}
    _grads(name, b, loss, inputs)

    # state_dict round trip through bytes gives identical outputs
    buffer = io.BytesIO()
    torch.save(b.state_dict(), buffer)
    buffer.seek(0)
    clone = copy.deepcopy(b)
    randomize_(clone, 1.0)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    z2, l2 = clone.eval()(x, context)
    if not (torch.equal(z2, z) and torch.equal(l2, ladj)):
        raise CheckError(f"{name}: state_dict round trip changes the output")
    return w.detach()


def _outputs(b: Bijection, x: Tensor, w: Tensor, context: Tensor | None) -> list[Tensor]:
    return [*b(x, context), *b.inverse(w, context)]


_MODES = {"autograd": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
_OUTPUTS = ("forward", "forward log-det", "inverse", "inverse log-det")


def _agree(name: str, what: str, got: list[Tensor], want: list[Tensor], atol: float) -> None:
    for label, g, r in zip(_OUTPUTS, got, want, strict=True):
        if g.dtype == torch.float32 and r.dtype == torch.float64:
            _close32(name, f"{what}: {label}", g, r)
        else:
            _close(name, f"{what}: {label}", g, r, atol)


def _check_fast_paths(name: str, b: Bijection, x: Tensor, w: Tensor, context: Tensor | None, atol: float) -> None:
    """Every route of `exactflow.backend` equals the reference maths: with and without autograd and in
    inference mode (values and gradients), on a batch above every size threshold, after weight updates through
    ``.data`` and ``load_state_dict``, and on a copy made inside inference mode."""
    with backend.reference():
        want = _outputs(b, x, w, context)
    for mode, scope in _MODES.items():
        with scope():
            _agree(name, f"{mode} equals the reference", _outputs(b, x, w, context), want, atol)

    params = [p for p in b.parameters() if p.requires_grad]
    if params:
        weights = [torch.randn_like(t) for t in want]
        grads = []
        for scope in (contextlib.nullcontext, backend.reference):
            with scope():
                loss = sum((t * v).sum() for t, v in zip(_outputs(b, x, w, context), weights, strict=True))
                grads.append(torch.autograd.grad(loss, params, allow_unused=True))
        for (label, _), g, r in zip(b.named_parameters(), *grads, strict=False):
            if (g is None) != (r is None) or (g is not None and not torch.allclose(g, r, atol=atol * 10, rtol=1e-4)):
                raise CheckError(f"{name}: the gradient for {label} differs from the reference's")

    if backend.covers(b) and x.dim() == 2:  # a batch that takes every size-dependent route
        gen = torch.Generator().manual_seed(0)
        i, j = (torch.randint(x.shape[0], (backend.large_batch(x.shape[1]),), generator=gen) for _ in range(2))
        big = (0.5 * (x[i] + x[j]), 0.5 * (w[i] + w[j]), None if context is None else context[i])
        with backend.reference(), torch.no_grad():
            want_big = _outputs(b, *big[:2], big[2])
        for mode in ("no_grad", "inference_mode"):
            with _MODES[mode]():
                _agree(name, f"{mode} on a batch of {len(i)} equals the reference", _outputs(b, *big[:2], big[2]),
                       want_big, atol)
        with torch.no_grad():
            rows = [_outputs(b, big[0][k:k + 1], big[1][k:k + 1], None if context is None else big[2][k:k + 1])
                    for k in (0, len(i) - 1)]
        for k, row in zip((0, len(i) - 1), rows, strict=True):
            _agree(name, f"row {k} of a batch of {len(i)} equals that row alone", row,
                   [t[k:k + 1] for t in want_big], atol)

    if params:  # user actions on the weights are seen by the next call, whatever was computed before
        moved = copy.deepcopy(b)
        with torch.no_grad():
            _outputs(moved, x, w, context)
        for p in moved.parameters():
            p.data.mul_(0.9)
        fresh = copy.deepcopy(b)
        fresh.load_state_dict(moved.state_dict())
        with backend.reference():
            want_moved = _outputs(fresh, x, w, context)
        with torch.no_grad():
            _agree(name, "after a weight update through .data", _outputs(moved, x, w, context), want_moved, atol)
            moved.load_state_dict(b.state_dict())
            _agree(name, "after load_state_dict", _outputs(moved, x, w, context), want, atol)

    with torch.inference_mode():  # built (or loaded) inside inference mode, as a serving process does
        served = copy.deepcopy(b)
        _agree(name, "a copy made in inference mode", _outputs(served, x, w, context), want, atol)
    with torch.no_grad():
        later = _outputs(served, x, w, context)
        _agree(name, "a copy made in inference mode, later under no_grad", later, want, atol)


def check_flow(flow: Flow, x: Tensor, context: Tensor | None = None, atol: float = 1e-6,
               name: str | None = None) -> None:
    """Verify a `Flow` on ``x``: its transform passes `check_bijection`; ``log_prob``
    equals base log-density plus log-det; sample shapes follow the documented rule;
    ``sample_and_log_prob`` agrees with ``log_prob`` of the samples; the sampler (small and large batches, with
    and without autograd) equals the reference one; gradients reach every parameter. Works on a copy."""
    name = name or type(flow.transform).__name__
    flow = copy.deepcopy(flow).to(x.dtype).eval()
    h = _embedded(flow, context)  # what the transform and base see: the standardised, embedded context
    check_bijection(flow.transform, x, h, atol=atol, name=name)
    _check_sampler(name, flow, context, atol)
    n = x.shape[0]
    lp = flow.log_prob(x, context)
    z, ladj = flow.transform(x, h)
    _close(name, "log_prob = log p_z(T(x)) + log|det|", lp, flow.base.log_prob(z, h) + ladj, atol)
    if lp.shape != (n,) or not torch.isfinite(lp).all():
        raise CheckError(f"{name}: log_prob gives {tuple(lp.shape)} (finite: {bool(torch.isfinite(lp).all())})")

    if context is None:
        s = flow.sample(7)
        if s.shape != (7, *flow.event_shape):
            raise CheckError(f"{name}: sample(7) has shape {tuple(s.shape)}")
        xs, lq = flow.sample_and_log_prob(7)
        _close(name, "sample_and_log_prob agrees with log_prob", lq, flow.log_prob(xs), atol * 10, 1e-5)
    else:
        s = flow.sample(7, context[:3])
        if s.shape != (7, 3, *flow.event_shape):
            raise CheckError(f"{name}: sample(7, context of 3 rows) has shape {tuple(s.shape)}")
        xs, lq = flow.sample_and_log_prob(7, context[:3])
        ctx = context[:3].unsqueeze(0).expand(7, -1, -1).reshape(21, -1)
        _close(name, "sample_and_log_prob agrees with log_prob", lq.reshape(-1),
               flow.log_prob(xs.reshape(21, *flow.event_shape), ctx), atol * 10, 1e-5)
        grid = flow.log_prob(xs, context[:3])
        if grid.shape != (7, 3):
            raise CheckError(f"{name}: log_prob of a grid (7, 3, *event) with 3 context rows gives "
                             f"{tuple(grid.shape)}, expected (7, 3)")
        _close(name, "log_prob of a grid of samples agrees with sample_and_log_prob", grid, lq, atol * 10, 1e-5)

    loss = -flow.log_prob(x, context).mean()
    _grads(name, flow, loss, {})


def _embedded(flow: Flow, context: Tensor | None) -> Tensor | None:
    """The context a flow's transform and base see (`Flow.embed`), detached: the flow's own pipeline is checked
    through ``log_prob``, the transform on its own with the context it is built for."""
    embed = getattr(flow, "embed", None)
    if context is None or embed is None:
        return context
    return embed(context).detach()


def _check_sampler(name: str, flow: Flow, context: Tensor | None, atol: float) -> None:
    """``sample`` and ``rsample`` from the same latents equal the reference sampler, at a small batch and (for
    vector flows with a fast path) at one above every size threshold."""
    sizes = [5]
    if backend.covers(flow) and len(flow.event_shape) == 1:
        sizes.append(backend.large_batch(flow.event_shape[0]) // (1 if context is None else 3) + 1)
    ctx = None if context is None else context[:3]
    for n in sizes:
        draws = {}
        for label, scope, draw in (("reference", backend.reference, flow.sample), ("sample", contextlib.nullcontext,
                                   flow.sample), ("rsample", contextlib.nullcontext, flow.rsample)):
            with torch.random.fork_rng(), scope():
                torch.manual_seed(0)
                draws[label] = draw(n, ctx).detach()
        for label in ("sample", "rsample"):
            _close(name, f"{label}({n}) equals the reference sampler", draws[label], draws["reference"],
                   atol * 10, 1e-5)
