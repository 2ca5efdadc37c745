"""The one contract every transform in exactflow keeps.

Direction convention (stated once, kept everywhere)
---------------------------------------------------
A `Bijection` ``T`` maps **data to latent** in ``forward`` (the normalizing
direction) and latent to data in ``inverse``::

    z, ladj = T(x, context)          # ladj = log|det dz/dx|, shape (batch,)
    x, ladj = T.inverse(z, context)  # ladj = log|det dx/dz| = -(the forward one at x)

so that a flow with base density p_z scores data by the change of variables

    log p(x) = log p_z(T(x)) + log|det dT/dx|.

Inputs are ``(batch, *event_shape)``; ``ladj`` is summed over the event.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Bijection", "Compose", "Inverse", "layer_context", "total_ladj"]


class Bijection(nn.Module):
    """Base class: ``forward(x, context) -> (z, log|det dz/dx|)`` and ``inverse(z, context) -> (x, log|det dx/dz|)``.

    Subclasses set ``exact_inverse = False`` when their inverse is found numerically
    (root finding or bisection, accurate to about 1e-6 in float32) rather than in closed form,
    and ``analytic_forward = False`` likewise for the data -> latent direction.

    ``context_features`` is the number of context features the bijection was built for (the registry sets it
    from ``context=``; ``None``: undeclared, as for a bijection of your own). Every ``forward`` and ``inverse``
    of a subclass first calls `check_context`, so an unconditional bijection refuses a context and a
    conditional one refuses to run without it, with a ``ValueError`` naming the layer.
    """

    exact_inverse: bool = True
    analytic_forward: bool = True
    context_features: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("forward", "inverse"):
            fn = cls.__dict__.get(method)
            if fn is not None:
                setattr(cls, method, _checks_context(fn))

    def check_context(self, context: Tensor | None) -> None:
        """A ``ValueError`` unless ``context`` matches `context_features` (None when that is 0)."""
        expected = self.context_features
        if expected is None:
            return
        name = type(self).__name__
        if context is None:
            if expected:
                raise ValueError(f"{name} was built with context={expected} and needs a context of shape "
                                 f"(batch, {expected}), got none")
        elif not expected:
            raise ValueError(f"{name} is unconditional (built with context=0) but was given a context of shape "
                             f"{tuple(context.shape)}")
        elif context.dim() < 1 or context.shape[-1] != expected:
            raise ValueError(f"{name} was built with context={expected}: expected a context of shape "
                             f"(batch, {expected}), got {tuple(context.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def as_torch_transform(self, event_dim: int = 1, context: Tensor | None = None) -> torch.distributions.Transform:
        """This bijection as a ``torch.distributions.Transform`` in torch's direction (latent -> data)."""
        from .interop import TorchTransform

        return TorchTransform(self, event_dim=event_dim, context=context)


def _checks_context(method: Callable) -> Callable:
    """``method`` (a ``forward`` or ``inverse``) preceded by `Bijection.check_context`."""

    @functools.wraps(method)
    def checked(self: Bijection, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        self.check_context(args[0] if args else kwargs.get("context"))
        return method(self, x, *args, **kwargs)  # exactly as called

    return checked


def layer_context(layer: nn.Module, context: Tensor | None) -> Tensor | None:
    """The context a container passes to ``layer``: none to a layer built unconditional (``context_features``
    0) inside a conditional flow, the flow's own to every other layer."""
    return None if getattr(layer, "context_features", None) == 0 else context


class Compose(Bijection):
    """``T = T_k o ... o T_1`` applied left to right in ``forward``; log-dets add, ``inverse`` runs in reverse."""

    def __init__(self, *bijections: Bijection) -> None:
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
            x, ladj = b(x, layer_context(b, context))
            ladjs.append(ladj)
        return x, total_ladj(ladjs, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladjs = []
        for b in reversed(self.bijections):
            z, ladj = b.inverse(z, layer_context(b, context))
            ladjs.append(ladj)
        return z, total_ladj(ladjs, z)

    def trajectory(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Latent -> data, returning the point after every layer (``[z, ..., x]``), for morph plots."""
        points = [z]
        for b in reversed(self.bijections):
            z, _ = b.inverse(z, layer_context(b, context))
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

    def __init__(self, bijection: Bijection) -> None:
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
