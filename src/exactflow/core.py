"""The one contract every transform in exactflow keeps.

Direction convention (stated once, kept everywhere)
---------------------------------------------------
A :class:`Bijection` ``T`` maps **data to latent** in ``forward`` (the normalizing
direction) and latent to data in ``inverse``::

    z, ladj = T(x, context)          # ladj = log|det dz/dx|, shape (batch,)
    x, ladj = T.inverse(z, context)  # ladj = log|det dx/dz| = -(the forward one at x)

so that a flow with base density p_z scores data by the change of variables

    log p(x) = log p_z(T(x)) + log|det dT/dx|.

Inputs are ``(batch, *event_shape)``; ``ladj`` is summed over the event.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Bijection", "Compose", "Inverse", "total_ladj"]


class Bijection(nn.Module):
    """Base class: ``forward(x, context) -> (z, log|det dz/dx|)`` and ``inverse(z, context) -> (x, log|det dx/dz|)``.

    Subclasses set ``exact_inverse = False`` when their inverse is found numerically
    (root finding or bisection, accurate to about 1e-6 in float32) rather than in closed form,
    and ``analytic_forward = False`` likewise for the data -> latent direction.
    """

    exact_inverse: bool = True
    analytic_forward: bool = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def as_torch_transform(self, event_dim: int = 1, context: Tensor | None = None) -> torch.distributions.Transform:
        """This bijection as a ``torch.distributions.Transform`` in torch's direction (latent -> data)."""
        from .interop import TorchTransform

        return TorchTransform(self, event_dim=event_dim, context=context)


class Compose(Bijection):
    """``T = T_k o ... o T_1`` applied left to right in ``forward``; log-dets add, ``inverse`` runs in reverse."""

    def __init__(self, *bijections: Bijection):
        super().__init__()
        self.bijections = nn.ModuleList(bijections)

    @property
    def exact_inverse(self) -> bool:  # type: ignore[override]
        return all(b.exact_inverse for b in self.bijections)

    @property
    def analytic_forward(self) -> bool:  # type: ignore[override]
        return all(b.analytic_forward for b in self.bijections)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladjs = []
        for b in self.bijections:
            x, ladj = b(x, context)
            ladjs.append(ladj)
        return x, total_ladj(ladjs, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladjs = []
        for b in reversed(self.bijections):
            z, ladj = b.inverse(z, context)
            ladjs.append(ladj)
        return z, total_ladj(ladjs, z)

    def trajectory(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Latent -> data, returning the point after every layer (``[z, ..., x]``), for morph plots."""
        points = [z]
        for b in reversed(self.bijections):
            z, _ = b.inverse(z, context)
            points.append(z)
        return points


def total_ladj(ladjs: list[Tensor], x: Tensor) -> Tensor:
    """Sum of the layers' log-dets in one reduction (not one addition per layer)."""
    if not ladjs:
        return x.new_zeros(x.shape[0])
    if len(ladjs) == 1:
        return ladjs[0]
    return torch.stack(ladjs).sum(0)


class Inverse(Bijection):
    """Swaps the two directions of ``bijection``: ``Inverse(MAF layer)`` is an IAF layer."""

    def __init__(self, bijection: Bijection):
        super().__init__()
        self.bijection = bijection

    @property
    def exact_inverse(self) -> bool:  # type: ignore[override]
        return self.bijection.analytic_forward

    @property
    def analytic_forward(self) -> bool:  # type: ignore[override]
        return self.bijection.exact_inverse

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.forward(z, context)
