"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling, 2018), unconditional or amortised.

A Sylvester layer generalises the planar flow from one hidden unit to ``M``. It is defined in the generative
direction (latent -> data), like `Planar`:

    x = f(z) = z + A h(B z + b),    A = Q R (D x M),  B = R~ Q^T (M x D),  h = tanh,

with ``Q`` a ``D x M`` matrix of orthonormal columns and ``R``, ``R~`` upper triangular ``M x M``. Sylvester's
determinant identity ``det(I_D + A K B) = det(I_M + K B A)`` with ``K = diag(h'(u))``, ``u = B z + b``, and
``B A = R~ Q^T Q R = R~ R`` (upper triangular) give

    log|det df/dz| = sum_i log|1 + R~_ii R_ii h'(u_i)|.

Invertibility: ``h' in (0, 1]``, so ``R~_ii R_ii > -1`` makes every factor positive. Here ``R_ii = exp(rho_i)``
and ``R~_ii = (-1 + eps + softplus(gamma_i)) / R_ii``, so the product takes every value above ``-1 + eps``
(``eps = 1e-4``) and the diagonal of ``A`` is unbounded. (The paper bounds both with tanh instead; fixing the
sign of ``R_ii`` loses nothing when ``Q`` ranges over all of its columns' signs.)

The data -> latent direction is not closed form, but it reduces to ``M`` one-dimensional monotone problems:
applying ``B . + b`` to ``x = z + A h(u)`` gives ``B x + b = u + R~ R h(u)``, an upper-triangular system in
``u``. Back-substitution solves coordinate ``i`` from ``M`` down to 1, where ``u_i + c_ii tanh(u_i)`` is
strictly increasing (``c = R~ R``, ``c_ii > -1``) and its root lies within ``|c_ii|`` of the right-hand side:
60 bisection steps in float64 narrow it to rounding. One Newton step on the whole system, which carries the
gradients (implicit function theorem), polishes ``u``; then ``z = x - A h(u)``.

Three choices of ``Q`` are registered: `Sylvester` (orthogonal: the first ``M`` columns of
``exp(S - S^T)``, exactly orthonormal up to rounding, smooth everywhere), `HouseholderSylvester`
(``Q`` a product of Householder reflections) and `TriangularSylvester` (``Q`` the identity or the
order reversal, ``M = D``). With ``context = c > 0`` every raw parameter is affine in the context,
``theta(c) = theta_0 + W c`` (amortised inference, as in the paper's VAE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS
from ..utils import bisect
from .householder import reflect

__all__ = ["Sylvester", "HouseholderSylvester", "TriangularSylvester", "solve_triangular_tanh"]

#: the smallest value of ``1 + R~_ii R_ii``: the diagonal of ``df/dz``'s triangular factor stays above it
EPS = 1e-4
_GAMMA0 = math.log(math.expm1(1 - EPS))  # softplus(_GAMMA0) = 1 - EPS: R~_ii R_ii = 0 at initialisation


@torch.no_grad()
def solve_triangular_tanh(c: Tensor, y: Tensor, iters: int = 60) -> Tensor:
    """The ``u`` solving ``u + c tanh(u) = y`` for upper-triangular ``c`` with ``c_ii > -1``, by back-substitution.

    Coordinate ``i`` (from the last) solves ``u_i + c_ii tanh(u_i) = t_i``, ``t_i = y_i - sum_{j > i} c_ij
    tanh(u_j)``: the left side is strictly increasing with its root in ``[t_i - |c_ii|, t_i + |c_ii|]``, which
    ``iters`` bisection steps narrow to ``2 |c_ii| / 2^iters``. No gradient flows (see `Sylvester`).

    Args:
        c: upper-triangular matrices ``(M, M)`` or ``(batch, M, M)``.
        y: right-hand sides ``(batch, M)``.
        iters: bisection steps per coordinate.

    Returns:
        ``u``, shaped like ``y``.

    Example:
        >>> c = torch.tensor([[0.5, 1.0], [0.0, -0.5]], dtype=torch.float64)
        >>> u = solve_triangular_tanh(c, torch.tensor([[0.3, -2.0]], dtype=torch.float64))
        >>> torch.allclose(u + torch.tanh(u) @ c.T, torch.tensor([[0.3, -2.0]], dtype=torch.float64))
        True
    """
    m = y.shape[-1]
    h: list[Tensor] = [y.new_zeros(y.shape[:-1])] * m
    u: list[Tensor] = [y.new_zeros(y.shape[:-1])] * m
    for i in reversed(range(m)):
        t = y[..., i]
        if i + 1 < m:
            t = t - (c[..., i, i + 1 :] * torch.stack(h[i + 1 :], -1)).sum(-1)
        cii = c[..., i, i]
        u[i] = bisect(lambda a, cii=cii: a + cii * torch.tanh(a), t, t - cii.abs(), t + cii.abs(), iters=iters)
        h[i] = torch.tanh(u[i])
    return torch.stack(u, -1)


class _SylvesterBase(Bijection):
    """The maths shared by the three choices of ``Q``; a subclass sets the raw parameters of ``Q`` and ``_q``."""

    analytic_forward = False

    def __init__(self, features: int, context: int, rank: int, q_raw: list[Tensor]) -> None:
        super().__init__()
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= features:
            raise ValueError(f"rank must be an integer in [1, features={features}], got {rank!r}")
        self.features, self.rank = features, rank
        self.q_raw = nn.ParameterList([nn.Parameter(t) for t in q_raw])
        self.r_off = nn.Parameter(torch.randn(rank, rank) * 0.1)  # strictly upper parts of R and R~ are used
        self.rt_off = nn.Parameter(torch.randn(rank, rank) * 0.1)
        self.rho = nn.Parameter(torch.zeros(rank))  # R_ii = exp(rho_i)
        self.gamma = nn.Parameter(torch.full((rank,), _GAMMA0))  # R~_ii R_ii = -1 + EPS + softplus(gamma_i)
        self.bias = nn.Parameter(torch.randn(rank) * 0.1)
        outputs = sum(t.numel() for t in self._base())
        self.hyper = nn.Linear(context, outputs) if context else None
        if self.hyper is not None:
            with torch.no_grad():
                self.hyper.weight.mul_(0.1)
                self.hyper.bias.zero_()

    def _base(self) -> list[Tensor]:
        return [*self.q_raw, self.r_off, self.rt_off, self.rho, self.gamma, self.bias]

    def _q(self, raw: list[Tensor]) -> Tensor:
        """``Q`` (``(D, M)``, or ``(batch, D, M)`` from batched raw parameters)."""
        raise NotImplementedError

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``Q``, ``R``, ``R~``, ``b`` and the diagonal ``R~_ii R_ii``; with a context, one of each per row.

        Shapes: ``(D, M)``, ``(M, M)``, ``(M, M)``, ``(M,)``, ``(M,)`` (a leading batch dimension with a context).
        """
        raw = self._base()
        if self.hyper is not None:
            delta = self.hyper(context.to(raw[0].dtype)).split([t.numel() for t in raw], dim=-1)
            raw = [t + d.reshape(-1, *t.shape) for t, d in zip(raw, delta, strict=True)]
        *q_raw, r_off, rt_off, rho, gamma, bias = raw
        diag = -1 + EPS + F.softplus(gamma)
        r = torch.triu(r_off, 1) + torch.diag_embed(torch.exp(rho))
        rt = torch.triu(rt_off, 1) + torch.diag_embed(diag * torch.exp(-rho))
        return self._q(q_raw), r, rt, bias, diag

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, rt, bias, diag = self.params(context)
        u = _apply(rt, _apply(q.mT, z)) + bias  # B z + b
        h = torch.tanh(u)
        x = z + _apply(q, _apply(r, h))  # z + A h(u)
        return x, torch.log1p(diag * (1 - h.square())).sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, rt, bias, diag = self.params(context)
        c = rt @ r  # = B A, upper triangular with diagonal `diag`
        y = _apply(rt, _apply(q.mT, x)) + bias  # B x + b = u + c h(u)
        u = solve_triangular_tanh(c.double(), y.double()).to(x.dtype)
        # one Newton step on u + c h(u) = y: the value stays at the root, the gradient is the implicit one
        h = torch.tanh(u)
        jac = torch.eye(self.rank, dtype=x.dtype, device=x.device) + c * (1 - h.square()).unsqueeze(-2)
        residual = u + _apply(c, h) - y
        u = u - torch.linalg.solve_triangular(jac, residual.unsqueeze(-1), upper=True).squeeze(-1)
        h = torch.tanh(u)
        z = x - _apply(q, _apply(r, h))
        return z, -torch.log1p(diag * (1 - h.square())).sum(-1)


def _apply(m: Tensor, v: Tensor) -> Tensor:
    """``m v`` for rows ``v`` ``(batch, n)`` and a matrix ``(k, n)`` or one matrix per row ``(batch, k, n)``."""
    if m.dim() == 2:
        return v @ m.mT
    return (m @ v.unsqueeze(-1)).squeeze(-1)


@TRANSFORMS.register("Sylvester", conditional=True, test_kwargs={"rank": 3})
class Sylvester(_SylvesterBase):
    """Orthogonal Sylvester flow: ``x = f(z) = z + Q R tanh(R~ Q^T z + b)`` (latent -> data), ``Q^T Q = I_M``.

    ``Q`` is the first ``M`` columns of the rotation ``exp(S - S^T)`` (a matrix exponential of a skew-symmetric
    matrix: orthonormal to rounding, differentiable everywhere); ``R``, ``R~`` are upper triangular with
    ``R~_ii R_ii > -1``. The determinant follows from Sylvester's identity:

        log|det df/dz| = sum_i log(1 + R~_ii R_ii (1 - tanh^2(u_i))),   u = R~ Q^T z + b,

    and ``forward`` (data -> latent) solves the triangular system ``R~ Q^T x + b = u + R~ R tanh(u)`` by
    back-substitution and bisection (see the module docstring), then ``z = x - Q R tanh(u)``.

    Args:
        features: the dimension ``D`` of the data.
        context: number of context features (0: unconditional); the raw parameters are then affine in it.
        rank: the number ``M <= D`` of hidden units (columns of ``Q``); default ``D``.

    References:
        R. van den Berg, L. Hasenclever, J. M. Tomczak and M. Welling, "Sylvester Normalizing Flows for
        Variational Inference" (2018), https://arxiv.org/abs/1803.05649

    Example:
        >>> layer = Sylvester(4, rank=2)
        >>> z = torch.randn(8, 4)
        >>> x, ladj = layer.inverse(z)  # the closed-form direction, latent -> data
        >>> z2, ladj2 = layer(x)         # data -> latent, solved numerically
        >>> x.shape, ladj.shape
        (torch.Size([8, 4]), torch.Size([8]))
        >>> torch.allclose(z2, z, atol=1e-5), torch.allclose(ladj + ladj2, torch.zeros(8), atol=1e-5)
        (True, True)
    """

    def __init__(self, features: int, context: int = 0, rank: int | None = None) -> None:
        super().__init__(features, context, features if rank is None else rank,
                         [torch.randn(features, features) * 0.1])

    def _q(self, raw: list[Tensor]) -> Tensor:
        (s,) = raw
        return torch.linalg.matrix_exp(s - s.mT)[..., : self.rank]


@TRANSFORMS.register("HouseholderSylvester", conditional=True, test_kwargs={"reflections": 2})
class HouseholderSylvester(_SylvesterBase):
    """Householder Sylvester flow: `Sylvester` with ``Q = H_k ... H_1`` (``M = D``), ``H_i`` reflections.

    ``x = f(z) = z + Q R tanh(R~ Q^T z + b)`` (latent -> data), ``Q = H_k ... H_1`` (the matrix of
    `Householder`) with ``H_i = I - 2 v_i v_i^T / |v_i|^2``
    (orthogonal by construction); log|det df/dz| =
    sum_i log(1 + R~_ii R_ii (1 - tanh^2(u_i))). ``forward`` is found numerically as in `Sylvester`.

    Args:
        features: the dimension ``D`` of the data (also the number of hidden units).
        context: number of context features (0: unconditional); the raw parameters are then affine in it.
        reflections: the number ``k`` of reflections making ``Q`` (default ``D``).

    References:
        R. van den Berg, L. Hasenclever, J. M. Tomczak and M. Welling, "Sylvester Normalizing Flows for
        Variational Inference" (2018), https://arxiv.org/abs/1803.05649

    Example:
        >>> layer = HouseholderSylvester(3, reflections=2)
        >>> q = layer.params()[0]
        >>> q.shape, torch.allclose(q.T @ q, torch.eye(3), atol=1e-6)
        (torch.Size([3, 3]), True)
    """

    def __init__(self, features: int, context: int = 0, reflections: int | None = None) -> None:
        k = features if reflections is None else reflections
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"reflections must be a positive integer, got {reflections!r}")
        super().__init__(features, context, features, [torch.randn(k, features)])

    def _q(self, raw: list[Tensor]) -> Tensor:
        (v,) = raw
        eye = torch.eye(self.features, dtype=v.dtype, device=v.device)
        if v.dim() > 2:
            eye = eye.expand(v.shape[0], -1, -1)
        return reflect(eye, v).mT  # row r of reflect(I) is (H_k ... H_1 e_r)^T: reflect(I) = (H_k ... H_1)^T


@TRANSFORMS.register("TriangularSylvester", conditional=True)
class TriangularSylvester(_SylvesterBase):
    """Triangular Sylvester flow: `Sylvester` with ``Q`` the identity, or the order reversal (``M = D``).

    ``x = f(z) = z + R tanh(R~ z + b)`` (or with ``z`` reversed in both places when ``reverse``; latent -> data);
    log|det df/dz| = sum_i log(1 + R~_ii R_ii (1 - tanh^2(u_i))). Alternating ``reverse`` between layers, as
    in the paper, lets the triangular structure point both ways. ``forward`` is found as in `Sylvester`.

    Args:
        features: the dimension ``D`` of the data (also the number of hidden units).
        context: number of context features (0: unconditional); the raw parameters are then affine in it.
        reverse: ``Q`` reverses the order of the features instead of being the identity.

    References:
        R. van den Berg, L. Hasenclever, J. M. Tomczak and M. Welling, "Sylvester Normalizing Flows for
        Variational Inference" (2018), https://arxiv.org/abs/1803.05649

    Example:
        >>> layer = TriangularSylvester(3, reverse=True)
        >>> layer.params()[0]
        tensor([[0., 0., 1.],
                [0., 1., 0.],
                [1., 0., 0.]])
    """

    def __init__(self, features: int, context: int = 0, reverse: bool = False) -> None:
        super().__init__(features, context, features, [])
        eye = torch.eye(features)
        self.register_buffer("perm", eye.flip(1) if reverse else eye, persistent=False)

    def _q(self, raw: list[Tensor]) -> Tensor:
        return self.perm
