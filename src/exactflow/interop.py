"""Adapters to ``torch.distributions`` (and so Pyro), which map latent -> data."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Transform, constraints

from .core import Bijection


class TorchTransform(Transform):
    """A :class:`Bijection` seen from torch: ``_call`` is latent -> data (our ``inverse``)."""

    bijective = True

    def __init__(self, bijection: Bijection, event_dim: int = 1, context: Tensor | None = None):
        super().__init__(cache_size=1)
        self.bijection = bijection
        self.context = context
        self._event_dim = event_dim

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return constraints.independent(constraints.real, self._event_dim)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(constraints.real, self._event_dim)

    def _flat(self, t: Tensor) -> tuple[Tensor, torch.Size]:
        lead = t.shape[: t.dim() - self._event_dim]
        return t.reshape(-1, *t.shape[t.dim() - self._event_dim :]), lead

    def _call(self, z: Tensor) -> Tensor:
        flat, lead = self._flat(z)
        return self.bijection.inverse(flat, self.context)[0].reshape(*lead, *flat.shape[1:])

    def _inverse(self, x: Tensor) -> Tensor:
        flat, lead = self._flat(x)
        return self.bijection(flat, self.context)[0].reshape(*lead, *flat.shape[1:])

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        flat, lead = self._flat(z)
        return self.bijection.inverse(flat, self.context)[1].reshape(lead)
