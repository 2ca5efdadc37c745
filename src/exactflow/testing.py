"""Public numerical verification: run the same checks exactflow runs on its own transforms.

``check_bijection(b, x)`` checks, in float64 on randomised parameters:
round trip both ways (and log-dets that cancel), log|det| against ``slogdet`` of the autograd
Jacobian in both directions, batch independence, shapes, float32 in/out, gradients reaching every
parameter and the input, and a ``state_dict`` round trip. ``check_flow(flow, x)`` checks a
:class:`~exactflow.Flow`. Both raise ``AssertionError`` naming the object and the failed property.
"""

from __future__ import annotations

import copy
import io
from typing import Callable

import torch
from torch import Tensor, nn

from .core import Bijection
from .distributions import Flow

__all__ = ["check_bijection", "check_flow", "randomize_", "warm_up"]


class CheckError(AssertionError):
    pass


def _close(name: str, what: str, got: Tensor, want: Tensor, atol: float, rtol: float = 1e-5) -> None:
    if got.shape != want.shape:
        raise CheckError(f"{name}: {what}: shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        err = (got - want).abs().max().item()
        raise CheckError(f"{name}: {what}: max abs error {err:.3g} exceeds atol {atol:.1g}")


@torch.no_grad()
def randomize_(module: nn.Module, scale: float = 0.3, generator: torch.Generator | None = None) -> nn.Module:
    """Add N(0, scale^2) noise to every floating parameter, so zero-initialised nets stop being identities."""
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


def _grads(name: str, module: nn.Module, loss: Tensor, inputs: dict[str, Tensor]) -> None:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    tensors = [p for _, p in params] + list(inputs.values())
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    for (label, _), g in zip([*params, *inputs.items()], grads):
        if g is None:
            raise CheckError(f"{name}: no gradient reaches {label}")
        if not torch.isfinite(g).all():
            raise CheckError(f"{name}: non-finite gradient for {label}")
    for (label, p), g in zip(params, grads):
        if not g.any():
            raise CheckError(f"{name}: gradient for parameter {label} is identically zero")


def check_bijection(
    b: Bijection,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-6,
    name: str | None = None,
    jacobian_rows: int = 2,
) -> None:
    """Verify ``b`` on the batch ``x`` (float64 recommended; ``b`` is converted to ``x``'s dtype).

    ``atol`` is the float64 tolerance; float32 is compared with a looser, derived one. ``b`` is used
    in eval mode; call :func:`warm_up` and :func:`randomize_` first for data-dependent layers.
    """
    name = name or type(b).__name__
    repr(b)
    b = b.to(x.dtype).eval()
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
            ("forward", lambda v: b(v, ctx)[0], x[i], ladj[i]),
            ("inverse", lambda v: b.inverse(v, ctx)[0], w[i], lw[i]),
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
        _close(name, "float32 forward agrees with float64", z32.double(), z, 1e-3, 1e-3)
        x32r, _ = b32.inverse(z32, c32)
        _close(name, "float32 round trip", x32r.double(), x, 1e-3, 1e-3)

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
    _close(name, "state_dict round trip", z2, z, 0.0, 0.0)
    _close(name, "state_dict round trip (log-det)", l2, ladj, 0.0, 0.0)


def check_flow(flow: Flow, x: Tensor, context: Tensor | None = None, atol: float = 1e-6, name: str | None = None) -> None:
    """Verify a :class:`Flow` on ``x``: its transform passes :func:`check_bijection`; ``log_prob``
    equals base log-density plus log-det; sample shapes follow the documented rule;
    ``sample_and_log_prob`` agrees with ``log_prob`` of the samples; gradients reach every parameter."""
    name = name or type(flow.transform).__name__
    flow = flow.to(x.dtype).eval()
    check_bijection(flow.transform, x, context, atol=atol, name=name)
    n = x.shape[0]
    lp = flow.log_prob(x, context)
    z, ladj = flow.transform(x, context)
    _close(name, "log_prob = log p_z(T(x)) + log|det|", lp, flow.base.log_prob(z, context) + ladj, atol)
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

    loss = -flow.log_prob(x, context).mean()
    _grads(name, flow, loss, {})
