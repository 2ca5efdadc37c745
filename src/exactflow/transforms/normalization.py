"""Normalisation layers as bijections, per feature on ``(B, D)`` or per channel on ``(B, C, H, W)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS

__all__ = ["BatchNorm", "ActNorm"]


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    """View a ``(C,)`` tensor so it broadcasts over ``x``'s dim 1 (features or channels)."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _positions(x: Tensor) -> int:
    """Number of positions a per-channel factor is applied at (H*W for images, 1 for vectors)."""
    return math.prod(x.shape[2:])


@TRANSFORMS.register("BatchNorm", conditional=False)
class BatchNorm(Bijection):
    """``z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta`` (Dinh et al. 2017; Papamakarios et al. 2017);
    log|det dz/dx| = positions * sum(log_gamma - 0.5 log(v + eps)).

    In training mode ``(m, v)`` are the batch statistics (and update the running ones); in eval
    mode, and always in the latent -> data direction, the running statistics are used.
    """

    def __init__(self, features: int, context: int = 0, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training or x.shape[0] == 0:  # an empty batch has no statistics
            return self.running_mean, self.running_var
        dims = _reduce_dims(x)
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)
        return mean, var

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        log_s = self.log_gamma - 0.5 * torch.log(var + self.eps)
        z = (x - _per_channel(mean, x)) * _per_channel(torch.exp(log_s), x) + _per_channel(self.beta, x)
        return z, (_positions(x) * log_s.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_s = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        x = (z - _per_channel(self.beta, z)) * _per_channel(torch.exp(-log_s), z) + _per_channel(self.running_mean, z)
        return x, (-_positions(z) * log_s.sum()).expand(z.shape[0])


@TRANSFORMS.register("ActNorm", conditional=False)
class ActNorm(Bijection):
    """``z = (x - loc) * exp(-log_scale)`` per feature/channel (Kingma & Dhariwal 2018);
    log|det dz/dx| = -positions * sum(log_scale).

    Data-dependent initialisation: the first forward call in training mode sets ``loc`` and
    ``log_scale`` to that batch's mean and log-std, so z starts standardised. The ``initialized``
    flag is a buffer, saved in the state dict, so a reloaded model is not initialised again.
    """

    def __init__(self, features: int, context: int = 0, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        dims = _reduce_dims(x)
        self.loc.copy_(x.mean(dims))
        self.log_scale.copy_(torch.log(x.std(dims, unbiased=False) + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized and x.shape[0] > 0:
            self._initialize(x)
        z = (x - _per_channel(self.loc, x)) * _per_channel(torch.exp(-self.log_scale), x)
        return z, (-_positions(x) * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * _per_channel(torch.exp(self.log_scale), z) + _per_channel(self.loc, z)
        return x, (_positions(z) * self.log_scale.sum()).expand(z.shape[0])
