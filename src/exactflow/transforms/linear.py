"""Linear bijections: permutations, rotations and LU-parametrised matrices (log|det| in O(D))."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS

__all__ = ["Permutation", "Reverse", "Rotation", "LULinear", "lu_weight"]


@TRANSFORMS.register("Permutation", conditional=False)
class Permutation(Bijection):
    """A fixed permutation of the features; volume preserving.

    Data -> latent: ``z = x[:, perm]``, so ``z_i = x_{perm[i]}``; latent -> data: ``x = z[:, argsort(perm)]``.
    A permutation matrix has ``|det| = 1``, so ``log|det dz/dx| = 0`` in both directions.

    Args:
        features: Number of features ``D``.
        context: Must be 0 (the permutation is unconditional); accepted for the registry's common signature.
        perm: The permutation, a tensor holding ``0 .. D - 1`` once each; ``None``: a random one.
        seed: Seed of the random permutation drawn when ``perm`` is ``None`` (``None``: torch's global generator).

    Raises:
        ValueError: If ``perm`` is not a permutation of ``0 .. D - 1``.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017), and
        G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density Estimation (2017), which
        permute the features between coupling or autoregressive layers. https://arxiv.org/abs/1605.08803,
        https://arxiv.org/abs/1705.07057

    Examples:
        >>> layer = Permutation(3, perm=torch.tensor([2, 0, 1]))
        >>> z, ladj = layer(torch.tensor([[10.0, 20.0, 30.0]]))
        >>> z, ladj
        (tensor([[30., 10., 20.]]), tensor([0.]))
        >>> layer.inverse(z)[0]
        tensor([[10., 20., 30.]])
    """

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
    """Reverse the order of the features; volume preserving.

    Data -> latent: ``z_i = x_{D-1-i}``, and latent -> data the same; ``log|det dz/dx| = 0``. Put between
    autoregressive layers so that each layer conditions on the features the previous one could not see.

    Args:
        features: Number of features ``D``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.

    References:
        G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density Estimation (2017).
        https://arxiv.org/abs/1705.07057

    Examples:
        >>> z, ladj = Reverse(3)(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> z, ladj
        (tensor([[3., 2., 1.]]), tensor([0.]))
    """

    def __init__(self, features: int, context: int = 0) -> None:
        super().__init__(features, perm=torch.arange(features - 1, -1, -1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])  # a flip, cheaper than the gather (and its backward)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])


@TRANSFORMS.register("Rotation", conditional=False)
class Rotation(Bijection):
    """A learned rotation: orthogonal with determinant +1, so volume preserving.

    Data -> latent: ``z = Q x`` with ``Q = matrix_exp(A - A^T)``, the exponential of a skew-symmetric matrix
    built from the learned ``A`` (``generator``, zero at the start: the identity). Latent -> data:
    ``x = Q^T z``. ``log|det dz/dx| = log|det Q| = 0``.

    Args:
        features: Number of features ``D``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.

    References:
        E. Hoogeboom, V. Garcia Satorras, J. M. Tomczak, M. Welling. The Convolution Exponential and Generalized
        Sylvester Flows (2020), on the exponential of a linear map as a flow layer (log|det| = trace, 0 here).
        https://arxiv.org/abs/2006.01910

    Examples:
        >>> layer = Rotation(3)
        >>> with torch.no_grad():
        ...     _ = layer.generator.normal_()
        >>> x = torch.randn(4, 3)
        >>> z, ladj = layer(x)
        >>> torch.allclose(z.norm(dim=1), x.norm(dim=1), atol=1e-5), ladj.shape
        (True, torch.Size([4]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

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
    """Learned invertible linear map in LU form; log-det in O(D).

    Data -> latent: ``z = W x + b`` with ``W = P L U``: ``P`` a fixed random permutation, ``L`` unit
    lower-triangular, ``U`` upper-triangular with positive diagonal ``exp(log_diag)``. Then
    ``log|det dz/dx| = sum_i log_diag_i``. Latent -> data solves ``W x = z - b`` by two triangular solves,
    with ``log|det dx/dz| = -sum_i log_diag_i``. Starts as the permutation ``P`` (``L = U = I``, ``b = 0``).

    Args:
        features: Number of features ``D``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        seed: Seed of the fixed random permutation ``P`` (``None``: torch's global generator).

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018), its LU
        parametrisation; used between layers in C. Durkan et al., Neural Spline Flows (2019).
        https://arxiv.org/abs/1807.03039, https://arxiv.org/abs/1906.04032

    Examples:
        >>> layer = LULinear(3, seed=0)
        >>> with torch.no_grad():
        ...     for p in layer.parameters():
        ...         _ = p.normal_(std=0.5)
        >>> x = torch.randn(4, 3)
        >>> z, ladj = layer(x)
        >>> torch.allclose(ladj, torch.linalg.slogdet(layer.weight())[1].expand(4), atol=1e-5)
        True
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

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
