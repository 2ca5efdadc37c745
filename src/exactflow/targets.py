"""Unnormalised target densities for variational inference: ``log p~(x) = log Z + log p(x)``.

A `Target` maps a batch ``(n, dim)`` to ``log p~`` of shape ``(n,)``. ``log_z`` is the log
normaliser when it is known in closed form (``None`` otherwise; `quadrature_log_z` computes it
for 2-D targets on a grid). `registry` maps names (``u1`` ... ``u4``, ``banana``, ``funnel``,
``mixture``) to factories.

The energies of Rezende & Mohamed (2015), ``p~(z) = exp(-U(z))``, with ``w1 = sin(2 pi z1 / 4)``,
``w2 = 3 exp(-((z1 - 1)/0.6)^2 / 2)``, ``w3 = 3 sigmoid((z1 - 1)/0.3)``::

    U1 = ((|z| - 2)/0.4)^2 / 2 - log(exp(-((z1 - 2)/0.6)^2 / 2) + exp(-((z1 + 2)/0.6)^2 / 2))
    U2 = ((z2 - w1)/0.4)^2 / 2
    U3 = -log(exp(-((z2 - w1)/0.35)^2 / 2) + exp(-((z2 - w1 + w2)/0.35)^2 / 2))
    U4 = -log(exp(-((z2 - w1)/0.4)^2 / 2) + exp(-((z2 - w1 + w3)/0.35)^2 / 2))

U2-U4 do not depend on ``z1`` for large ``|z1|``, so ``exp(-U)`` has infinite mass and the ELBO
is unbounded (q can spread along ``z1`` for ever). The paper shows them on ``[-4, 4]^2``; here they
get a wall outside that box, ``-(max(|z1| - 4, 0)/0.5)^2 / 2``, which is zero inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry

__all__ = ["Target", "registry", "u1", "u2", "u3", "u4", "banana", "funnel", "gaussian_mixture", "quadrature_log_z"]

LOG_2PI = math.log(2 * math.pi)

registry = Registry("target")


@dataclass(frozen=True)
class Target:
    """An unnormalised log density on R^dim: ``target(x)`` with ``x`` of shape ``(n, dim)`` gives ``(n,)``.

    ``log_z``: log of the normaliser (None when unknown); ``bounds``: ``(x1_min, x1_max, x2_min, x2_max)``,
    the box where a 2-D target is plotted and integrated.
    """

    name: str
    dim: int
    log_prob: Callable[[Tensor], Tensor]
    log_z: float | None = None
    bounds: tuple[float, float, float, float] = (-4.0, 4.0, -4.0, 4.0)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"target {self.name!r} takes x of shape (n, {self.dim}), got {shape}")
        return self.log_prob(x)


def _normal(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    """log N(x; loc, scale^2), elementwise."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return -0.5 * ((x - loc) / scale).square() - torch.log(scale) - 0.5 * LOG_2PI


def _w1(z: Tensor) -> Tensor:
    return torch.sin(0.5 * math.pi * z[:, 0])


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6).square())


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _wall(z: Tensor) -> Tensor:
    """Zero on ``|z1| <= 4``, a Gaussian fall-off of scale 0.5 outside: makes U2-U4 normalisable."""
    return -0.5 * (F.relu(z[:, 0].abs() - 4) / 0.5).square()


@registry.register("u1")
def u1() -> Target:
    """Rezende & Mohamed's U1: a ring of radius 2 with two modes on the z1 axis."""

    def log_prob(z: Tensor) -> Tensor:
        ring = -0.5 * ((z.norm(dim=-1) - 2) / 0.4).square()
        modes = torch.logaddexp(-0.5 * ((z[:, 0] - 2) / 0.6).square(), -0.5 * ((z[:, 0] + 2) / 0.6).square())
        return ring + modes

    return Target("u1", 2, log_prob)


@registry.register("u2")
def u2() -> Target:
    """Rezende & Mohamed's U2: a sine-shaped ridge z2 = sin(pi z1 / 2) (walled outside |z1| <= 4)."""

    def log_prob(z: Tensor) -> Tensor:
        return -0.5 * ((z[:, 1] - _w1(z)) / 0.4).square() + _wall(z)

    return Target("u2", 2, log_prob)


@registry.register("u3")
def u3() -> Target:
    """Rezende & Mohamed's U3: the sine ridge and a second ridge split off near z1 = 1 (walled)."""

    def log_prob(z: Tensor) -> Tensor:
        d = z[:, 1] - _w1(z)
        return torch.logaddexp(-0.5 * (d / 0.35).square(), -0.5 * ((d + _w2(z)) / 0.35).square()) + _wall(z)

    return Target("u3", 2, log_prob)


@registry.register("u4")
def u4() -> Target:
    """Rezende & Mohamed's U4: the sine ridge and a second one shifted by a sigmoid step (walled)."""

    def log_prob(z: Tensor) -> Tensor:
        d = z[:, 1] - _w1(z)
        return torch.logaddexp(-0.5 * (d / 0.4).square(), -0.5 * ((d + _w3(z)) / 0.35).square()) + _wall(z)

    return Target("u4", 2, log_prob)


@registry.register("banana")
def banana(curvature: float = 0.5, scale: float = 1.5) -> Target:
    """Normalised banana: x1 ~ N(0, scale^2), x2 | x1 ~ N(curvature (x1^2 - scale^2), 1); log Z = 0."""

    def log_prob(x: Tensor) -> Tensor:
        return _normal(x[:, 0], 0.0, scale) + _normal(x[:, 1] - curvature * (x[:, 0].square() - scale**2), 0.0, 1.0)

    return Target("banana", 2, log_prob, log_z=0.0, bounds=(-4.0, 4.0, -3.0, 5.0))


@registry.register("funnel")
def funnel(dim: int = 2, scale: float = 3.0) -> Target:
    """Neal's funnel: v = x1 ~ N(0, scale^2), x2..xd | v ~ N(0, exp(v)) independently; log Z = 0."""
    if dim < 2:
        raise ValueError(f"the funnel needs dim >= 2, got {dim}")

    def log_prob(x: Tensor) -> Tensor:
        v = x[:, 0]
        rest = -0.5 * x[:, 1:].square().sum(-1) * torch.exp(-v) - 0.5 * (dim - 1) * (v + LOG_2PI)
        return _normal(v, 0.0, scale) + rest

    return Target("funnel", dim, log_prob, log_z=0.0, bounds=(-7.0, 7.0, -8.0, 8.0))


@registry.register("mixture")
def gaussian_mixture(
    means: Sequence[Sequence[float]] = ((-1.0, 0.0), (1.0, 0.5), (0.0, -1.2)),
    scales: Sequence[float] = (0.7, 0.6, 0.5),
    weights: Sequence[float] = (0.4, 0.35, 0.25),
    log_z: float = 1.5,
) -> Target:
    """Mixture of isotropic Gaussians sum_k w_k N(mu_k, s_k^2 I), scaled by exp(log_z): log Z is known."""
    mu = torch.as_tensor(means, dtype=torch.float64)
    s = torch.as_tensor(scales, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if mu.dim() != 2 or s.shape != (mu.shape[0],) or w.shape != (mu.shape[0],):
        raise ValueError(f"means must be (k, dim) with k scales and k weights; "
                         f"got {tuple(mu.shape)}, {tuple(s.shape)}, {tuple(w.shape)}")
    if (s <= 0).any() or (w <= 0).any():
        raise ValueError("mixture scales and weights must be positive")
    log_w = torch.log(w / w.sum())
    dim = mu.shape[1]

    def log_prob(x: Tensor) -> Tensor:
        m, sc, lw = mu.to(x), s.to(x), log_w.to(x)
        comp = _normal(x.unsqueeze(1), m, sc.unsqueeze(-1)).sum(-1)  # (n, k)
        return torch.logsumexp(comp + lw, dim=-1) + log_z

    lo = float((mu - 4 * s.unsqueeze(-1)).min())
    hi = float((mu + 4 * s.unsqueeze(-1)).max())
    return Target("mixture", dim, log_prob, log_z=float(log_z), bounds=(lo, hi, lo, hi))


@torch.no_grad()
def quadrature_log_z(target: Target, bounds: tuple[float, float, float, float] | None = None,
                     points: int = 1000) -> float:
    """log Z of a 2-D target by the midpoint rule on a ``points x points`` grid over ``bounds`` (float64)."""
    if target.dim != 2:
        raise ValueError(f"quadrature_log_z needs a 2-D target, {target.name!r} has dim {target.dim}")
    x1a, x1b, x2a, x2b = bounds or target.bounds
    h1, h2 = (x1b - x1a) / points, (x2b - x2a) / points
    g1 = x1a + h1 * (torch.arange(points, dtype=torch.float64) + 0.5)
    g2 = x2a + h2 * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(g1, g2, indexing="ij"), -1).reshape(-1, 2)
    return float(torch.logsumexp(target(grid), 0) + math.log(h1 * h2))
