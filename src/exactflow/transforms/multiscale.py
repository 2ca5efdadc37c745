"""Multi-scale architecture (Dinh et al. 2017; Kingma & Dhariwal 2018) as a shape-preserving bijection.

At the end of a level the channels are split, ``x = (x1, x2)``; ``x2`` is factored out and mapped to
a standard-normal latent by Glow's split prior, while ``x1`` goes through the remaining levels::

    u2 = (x2 - mu(x1)) exp(-logs(x1)),   log|det du2/dx2| = -sum(logs),

with ``(mu, logs_raw)`` from a zero-initialised 3x3 convolution on ``x1`` (and the context) and
``logs = B tanh(logs_raw / B)`` bounded smoothly as in the affine couplings (``B = scale_bound``). Scoring ``u2``
under N(0, I) is scoring ``x2`` under N(mu(x1), exp(2 logs(x1))), Glow's learned conditional prior.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Bijection, layer_context
from ..registry import TRANSFORMS
from ..utils import sum_except_batch
from .elementwise import bounded_log_scale
from .image import append_context, image_shape

__all__ = ["Split"]


@TRANSFORMS.register("Split", input="image")
class Split(Bijection):
    """Glow's split prior: factor out the last ``C // 2`` channels; the rest runs through ``inner``.

    Data -> latent (``forward``), with ``x = (x1, x2)`` split along the channels::

        (x1, x2) -> (inner(x1), (x2 - mu(x1)) exp(-logs(x1))),
        log|det dz/dx| = log|det d inner/dx1| - sum(logs(x1)).

    Latent -> data inverts ``inner`` first, then ``x2 = z2 exp(logs(x1)) + mu(x1)``.
    ``inner`` (a bijection on x1's shape ``(C - C//2, H, W)``; None: identity) holds the remaining levels.
    The output keeps the input's shape, so the latent of a whole multi-scale flow is one tensor shaped
    like the data.

    Args:
        shape: Event shape ``(C, H, W)`` of the input, ``C >= 2``.
        context: Number of context features, appended to ``x1`` as constant channels for the prior's conv.
        inner: Bijection applied to ``x1`` (the next levels); ``None``: identity.
        prior: ``True``: Glow's learned conditional prior ``N(mu(x1), exp(2 logs(x1)))`` on ``x2`` (a zero-init
            3x3 convolution); ``False``: ``x2`` is left as it is (RealNVP's factor-out onto N(0, I)).
        scale_bound: Bound ``B`` of ``logs = B tanh(logs_raw / B)``; ``None``: unbounded.

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018); the
        multi-scale architecture of L. Dinh, J. Sohl-Dickstein, S. Bengio, Density estimation using Real NVP
        (2017). https://arxiv.org/abs/1807.03039, https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = Split((4, 2, 2), context=3)
        >>> with torch.no_grad():
        ...     _ = layer.prior.weight.normal_(std=0.1)
        >>> x, c = torch.randn(5, 4, 2, 2), torch.randn(5, 3)
        >>> z, ladj = layer(x, c)
        >>> z.shape, ladj.shape
        (torch.Size([5, 4, 2, 2]), torch.Size([5]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-5)
        True
    """

    def __init__(self, shape: tuple[int, int, int], context: int = 0, inner: Bijection | None = None,
                 prior: bool = True, scale_bound: float | None = 3.0) -> None:
        super().__init__()
        channels = image_shape(shape)[0]
        if channels < 2:
            raise ValueError(f"Split needs at least 2 channels, got shape {tuple(shape)}")
        self.keep = channels - channels // 2
        self.inner = inner
        self.scale_bound = scale_bound
        if prior:
            self.prior = nn.Conv2d(self.keep + context, 2 * (channels // 2), 3, padding=1)
            nn.init.zeros_(self.prior.weight)
            nn.init.zeros_(self.prior.bias)
        else:
            self.prior = None

    def _mu_logs(self, x1: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        mu, raw = self.prior(append_context(x1, context)).chunk(2, dim=1)
        return mu, bounded_log_scale(raw, self.scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.keep], x[:, self.keep :]
        ladj = x.new_zeros(x.shape[0])
        if self.prior is not None:
            mu, logs = self._mu_logs(x1, context)
            x2 = (x2 - mu) * torch.exp(-logs)
            ladj = ladj - sum_except_batch(logs)
        if self.inner is not None:
            x1, inner_ladj = self.inner(x1, layer_context(self.inner, context))
            ladj = ladj + inner_ladj
        return torch.cat([x1, x2], dim=1), ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z1, z2 = z[:, : self.keep], z[:, self.keep :]
        ladj = z.new_zeros(z.shape[0])
        if self.inner is not None:
            z1, ladj = self.inner.inverse(z1, layer_context(self.inner, context))
        if self.prior is not None:
            mu, logs = self._mu_logs(z1, context)
            z2 = z2 * torch.exp(logs) + mu
            ladj = ladj + sum_except_batch(logs)
        return torch.cat([z1, z2], dim=1), ladj
