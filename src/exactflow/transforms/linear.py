"""Linear bijections: permutations, rotations and LU-parametrised matrices (log|det| in O(D))."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS

__all__ = ["Permutation", "Reverse", "Rotation", "LULinear", "lu_weight"]


@TRANSFORMS.register("Permutation", conditional=False)
class Permutation(Bijection):
    """``z = x[:, perm]`` for a fixed permutation (random with ``seed`` if not given); log|det| = 0."""

    def __init__(self, features: int, context: int = 0, perm: Tensor | None = None, seed: int | None = None) -> None:
        super().__init__()
        if perm is None:
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            perm = torch.randperm(features, generator=gen)
        if sorted(perm.tolist()) != list(range(features)):
            raise ValueError(f"perm must be a permutation of 0..{features - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm.long())
        self.register_buffer("inv_perm", torch.argsort(perm).long())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])


@TRANSFORMS.register("Reverse", conditional=False)
class Reverse(Permutation):
    """``z = x[:, ::-1]``, the order reversal used between autoregressive layers; log|det| = 0."""

    def __init__(self, features: int, context: int = 0) -> None:
        super().__init__(features, perm=torch.arange(features - 1, -1, -1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])  # a flip, cheaper than the gather (and its backward)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])


@TRANSFORMS.register("Rotation", conditional=False)
class Rotation(Bijection):
    """``z = Q x`` with ``Q = exp(A - A^T)`` a learned rotation (orthogonal, det +1); log|det| = 0."""

    def __init__(self, features: int, context: int = 0) -> None:
        super().__init__()
        self.generator = nn.Parameter(torch.zeros(features, features))

    def matrix(self) -> Tensor:
        a = self.generator
        return torch.linalg.matrix_exp(a - a.T)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x @ self.matrix().T, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z @ self.matrix(), z.new_zeros(z.shape[0])


def lu_weight(perm: Tensor, lower: Tensor, upper: Tensor, log_diag: Tensor) -> Tensor:
    """``W = P L U``: ``P`` the permutation matrix of ``perm``, ``L`` unit lower-triangular from ``lower``,
    ``U`` upper-triangular with diagonal ``exp(log_diag)``; log|det W| = sum(log_diag)."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    lo = torch.tril(lower, -1) + eye
    up = torch.triu(upper, 1) + torch.diag(torch.exp(log_diag))
    return (lo @ up)[torch.argsort(perm)] if perm is not None else lo @ up


def lu_solve(perm: Tensor, lower: Tensor, upper: Tensor, log_diag: Tensor, y: Tensor) -> Tensor:
    """Solve ``W x = y`` for the columns of ``y`` (shape ``(D, N)``) with two triangular solves."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    lo = torch.tril(lower, -1) + eye
    up = torch.triu(upper, 1) + torch.diag(torch.exp(log_diag))
    y = y[perm]
    y = torch.linalg.solve_triangular(lo, y, upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(up, y, upper=True)


@TRANSFORMS.register("LULinear", conditional=False)
class LULinear(Bijection):
    """``z = W x + b`` with ``W = P L U`` (``P`` a fixed random permutation, ``L`` unit lower-, ``U`` upper-triangular
    with positive diagonal ``exp(log_diag)``); log|det dz/dx| = sum(log_diag). Starts as a permutation."""

    def __init__(self, features: int, context: int = 0, seed: int | None = None) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.register_buffer("perm", torch.randperm(features, generator=gen))
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def weight(self) -> Tensor:
        return lu_weight(self.perm, self.lower, self.upper, self.log_diag)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x @ self.weight().T + self.bias, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = lu_solve(self.perm, self.lower, self.upper, self.log_diag, (z - self.bias).T).T
        return x, (-self.log_diag.sum()).expand(z.shape[0])
