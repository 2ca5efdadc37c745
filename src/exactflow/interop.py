"""Adapters to ``torch.distributions`` (and so Pyro), whose transforms map latent -> data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Transform, constraints

from .core import Bijection


class TorchTransform(Transform):
    """A `Bijection` seen from torch: ``_call`` is latent -> data (our ``inverse``), ``_inverse`` data -> latent.

    Inputs have shape ``(*batch, *event)`` with any batch dimensions; they are flattened to the bijection's
    ``(rows, *event)`` and back. A bound ``context`` of shape ``(*context_batch, c)`` broadcasts against ``batch``
    as torch broadcasts a distribution's parameters: with a ``(b, c)`` context, ``z`` of shape ``(n, b, *event)``
    uses context row j for every ``z[:, j]``, and ``(*event)`` alone is broadcast to ``(b, *event)``.

    ``log_abs_det_jacobian(z, x) = log|det dx/dz|`` comes from the pass that produced the pair (torch asks right
    after ``t(z)`` or ``t.inv(x)``, the pair still in the cache), otherwise from the data -> latent pass at ``x``:
    ``-log|det dT/dx|``.
    """

    bijective = True

    def __init__(self, bijection: Bijection, event_dim: int = 1, context: Tensor | None = None) -> None:
        super().__init__(cache_size=1)
        self.bijection = bijection
        self.context = context
        self._event_dim = event_dim
        self._pair: tuple[Tensor, Tensor, Tensor] | None = None  # (z, x, log|det dx/dz|) of the last pass

    @constraints.dependent_property(is_discrete=False)
    def domain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self._event_dim)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self._event_dim)

    def _batch(self, shape: torch.Size) -> torch.Size:
        """The batch shape of an input of ``shape`` broadcast with the context's batch shape."""
        batch = shape[: len(shape) - self._event_dim]
        if self.context is None:
            return batch
        try:
            return torch.broadcast_shapes(batch, self.context.shape[:-1])
        except RuntimeError:
            raise ValueError(f"an input of shape {tuple(shape)} has batch shape {tuple(batch)}, which does not "
                             f"broadcast with the context's batch shape {tuple(self.context.shape[:-1])}") from None

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return self._batch(torch.Size(shape)) + shape[len(shape) - self._event_dim :]

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return self.forward_shape(shape)

    def _run(self, t: Tensor, direction: Callable[..., tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``direction`` (the bijection's forward or inverse) on ``t`` of shape ``(*batch, *event)``, with the
        context broadcast to one row per point: ``(out (*batch, *event), ladj (*batch,))``."""
        batch = self._batch(t.shape)
        event = t.shape[t.dim() - self._event_dim :]
        context = self.context
        if context is not None:
            context = context.expand(*batch, context.shape[-1]).reshape(-1, context.shape[-1])
        out, ladj = direction(t.expand(*batch, *event).reshape(-1, *event), context)
        return out.reshape(*batch, *event), ladj.reshape(batch)

    def _call(self, z: Tensor) -> Tensor:
        x, ladj = self._run(z, self.bijection.inverse)
        self._pair = (z, x, ladj)
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        z, ladj = self._run(x, self.bijection)
        self._pair = (z, x, -ladj)
        return z

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        if self._pair is not None and z is self._pair[0] and x is self._pair[1]:
            return self._pair[2]
        return -self._run(x, self.bijection)[1]
