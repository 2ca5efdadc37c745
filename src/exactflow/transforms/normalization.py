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
    """Batch normalisation as a bijection, per feature on ``(B, D)`` or per channel on ``(B, C, H, W)``.

    Data -> latent (``forward``), per feature or channel::

        z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta,
        log|det dz/dx| = positions * sum(log_gamma - 0.5 log(v + eps)),

    with ``positions = H W`` on images and 1 on vectors. Latent -> data inverts the same affine map with the
    running statistics, ``log|det dx/dz|`` being the negative.

    In training mode ``(m, v)`` are the batch statistics (and update the running ones); in eval
    mode, and always in the latent -> data direction, the running statistics are used.

    Args:
        features: Number of features (vectors) or channels (images).
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        momentum: Weight of the current batch in the running averages of mean and variance.
        eps: Added to the variance before the square root.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017), and G. Papamakarios,
        T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density Estimation (2017).
        https://arxiv.org/abs/1605.08803, https://arxiv.org/abs/1705.07057

    Examples:
        >>> layer = BatchNorm(3)
        >>> x = 5 + 2 * torch.randn(64, 3)
        >>> z, ladj = layer(x)  # training mode: batch statistics
        >>> torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5), ladj.shape
        (True, torch.Size([64]))
        >>> _ = layer.eval()  # running statistics both ways: an exact round trip
        >>> z, _ = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
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
    """Activation normalisation: a per-feature (or per-channel) affine map with data-dependent initialisation.

    Data -> latent (``forward``), on ``(B, D)`` or ``(B, C, H, W)``::

        z = (x - loc) * exp(-log_scale),      log|det dz/dx| = -positions * sum(log_scale),

    with ``positions = H W`` on images and 1 on vectors; latent -> data is ``x = z exp(log_scale) + loc``.

    Data-dependent initialisation: the first forward call in training mode sets ``loc`` and
    ``log_scale`` to that batch's mean and log-std, so z starts standardised; a feature that is constant in
    that batch (a batch of one row, say) keeps unit scale rather than a scale of ``eps``. The ``initialized``
    flag is a buffer, saved in the state dict, so a reloaded model is not initialised again.

    Args:
        features: Number of features (vectors) or channels (images).
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        eps: Added to the standard deviation in the initialisation.

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018).
        https://arxiv.org/abs/1807.03039

    Examples:
        >>> layer = ActNorm(3)
        >>> x = 5 + 2 * torch.randn(64, 3)
        >>> z, ladj = layer(x)  # the first call initialises: z is standardised
        >>> torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5), ladj.shape
        (True, torch.Size([64]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
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
        std = x.std(dims, unbiased=False)
        self.log_scale.copy_(torch.where(std > 0, torch.log(std + self.eps), torch.zeros_like(std)))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized and x.shape[0] > 0:
            self._initialize(x)
        z = (x - _per_channel(self.loc, x)) * _per_channel(torch.exp(-self.log_scale), x)
        return z, (-_positions(x) * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * _per_channel(torch.exp(self.log_scale), z) + _per_channel(self.loc, z)
        return x, (_positions(z) * self.log_scale.sum()).expand(z.shape[0])
