"""Householder flows (Tomczak & Welling, 2016): a learned orthogonal map as a product of reflections.

A reflection ``H v = I - 2 v v^T / |v|^2`` is its own inverse and has determinant -1, so a product of them
is orthogonal: volume-preserving (log|det| = 0) and inverted by applying the same reflections in reverse
order. ``D`` reflections reach every orthogonal ``D x D`` matrix, and each costs ``O(D)`` per point.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS

__all__ = ["Householder", "reflect"]


def reflect(x: Tensor, vectors: Tensor, reverse: bool = False) -> Tensor:
    """``H_k ... H_1 x`` for the rows of ``x`` (``H_1 ... H_k x`` if ``reverse``), ``H_i = I - 2 v_i v_i^T / |v_i|^2``.

    Args:
        x: points ``(..., D)``; with batched ``vectors``, ``(batch, D)`` or blocks of rows ``(batch, N, D)``.
        vectors: the ``v_i`` as rows, ``(k, D)``, or ``(batch, k, D)`` for one set per batch element of ``x``.
        reverse: apply the reflections in the order ``k, ..., 1`` (the inverse of the default order).

    Returns:
        The reflected points, shaped like ``x``.

    Example:
        >>> reflect(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]]))  # the mirror x_1 = 0
        tensor([[-3.,  4.]])
    """
    k = vectors.shape[-2]
    for i in reversed(range(k)) if reverse else range(k):
        v = vectors[..., i, :]
        if vectors.dim() > 2 and x.dim() > 2:  # one set per batch element, each applied to a block of rows
            v = v.unsqueeze(-2)
        coef = 2 * (x * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True)
        x = x - coef * v
    return x


@TRANSFORMS.register("Householder", conditional=False, test_kwargs={"reflections": 3})
class Householder(Bijection):
    """``z = H_k ... H_1 x`` (data -> latent) with ``H_i = I - 2 v_i v_i^T / |v_i|^2``; log|det dz/dx| = 0.

    Each ``H_i`` mirrors ``x`` in the hyperplane orthogonal to ``v_i``. It is symmetric, orthogonal and its own
    inverse, so the latent -> data direction is ``x = H_1 ... H_k z`` (the reflections in reverse order), also
    with log|det| = 0. With ``reflections = D`` the product can be any orthogonal matrix.

    Args:
        features: the dimension ``D`` of the data.
        context: must be 0 (the transform is unconditional); accepted so every factory takes ``context=``.
        reflections: the number ``k`` of reflections (default ``D``).

    References:
        J. M. Tomczak and M. Welling, "Improving Variational Auto-Encoders using Householder Flow" (2016),
        https://arxiv.org/abs/1611.09630

    Example:
        >>> layer = Householder(3, reflections=2)
        >>> x = torch.randn(4, 3)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> torch.allclose(z.norm(dim=-1), x.norm(dim=-1)), torch.allclose(layer.inverse(z)[0], x, atol=1e-6)
        (True, True)
    """

    def __init__(self, features: int, context: int = 0, reflections: int | None = None) -> None:
        super().__init__()
        k = features if reflections is None else reflections
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"reflections must be a positive integer, got {reflections!r}")
        self.vectors = nn.Parameter(torch.randn(k, features))

    def matrix(self) -> Tensor:
        """The orthogonal matrix ``Q = H_k ... H_1`` with ``z = Q x``."""
        eye = torch.eye(self.vectors.shape[-1], dtype=self.vectors.dtype, device=self.vectors.device)
        return reflect(eye, self.vectors).T  # row r of reflect(I) is (Q e_r)^T

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return reflect(x, self.vectors), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return reflect(z, self.vectors, reverse=True), z.new_zeros(z.shape[0])
