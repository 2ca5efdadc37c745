"""Multi-scale image flows: Glow (Kingma & Dhariwal 2018) and RealNVP on images (Dinh et al. 2017).

Both score dequantised images ``y`` in (0, 1)^D (see `exactflow.images`): the first bijection is
the `Logit` preprocessing, so ``log_prob`` includes its log-det and
``bits_per_dim(flow.log_prob(y), shape, levels)`` is the discrete-data bound. A level is

    squeeze -> steps -> Split (factor out half the channels) -> unsqueeze,

and the remaining half runs through the next level inside the ``Split``; every level keeps the data
shape, so the latent is one ``(C, H, W)`` tensor under N(0, I).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import Bijection, Compose
from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.image import ImageAffineCoupling, InvConv1x1LU, Logit, Squeeze, Unsqueeze, image_shape
from ..transforms.multiscale import Split
from ..transforms.normalization import ActNorm

__all__ = ["Glow", "ImageFlow", "RealNVPImage", "glow_step"]

Shape = tuple[int, int, int]
# The generic check randomises every parameter (N(0, 0.2^2) noise), perturbs latents by 0.1 before
# inverting and adds 0.5 to one data row. Small test instances keep that inside the maths: 1x4x4 images
# (4 and 8 channels, so the randomised LU weights stay well conditioned; D = 16 keeps the Jacobians
# cheap), log-scales bounded by 1 (the inverse amplifies the perturbation too little for the sigmoid to
# saturate in float64) and alpha = 0.3 (the logit's domain widens to (-0.75, 1.75)).
_SMALL = {"shape": (1, 4, 4), "levels": 2, "depth": 2, "hidden": (8, 8), "scale_bound": 1.0, "alpha": 0.3}


class ImageFlow(Flow):
    """A `Flow` whose sampling takes a temperature ``T``: ``x = T^-1(T z)``, ``z ~ N(0, I)``,
    i.e. the base noise (every level's latent) is scaled by ``T`` (Kingma & Dhariwal 2018, sec. 5)."""

    def rsample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        if not temperature > 0:  # also refuses NaN
            raise ValueError(f"temperature must be positive, got {temperature}")
        total, ctx, lead = self._expand(n, context)
        x, _ = self.transform.inverse(temperature * self.base.rsample(total, ctx), ctx)
        return x.reshape(*lead, *self.event_shape)

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` samples at ``temperature`` (shapes as in `Flow.sample`)."""
        return self.rsample(n, context, temperature)


def glow_step(shape: Shape, context: int = 0, hidden: int | Sequence[int] = 64,
              scale_bound: float | None = 3.0) -> list[Bijection]:
    """One Glow step: ActNorm -> invertible 1x1 convolution (LU) -> affine coupling (channel mask)."""
    coupling = ImageAffineCoupling(shape, context, mask="channel", hidden=hidden, scale_bound=scale_bound)
    return [ActNorm(shape[0]), InvConv1x1LU(shape), coupling]


@FLOWS.register("Glow", input="image", domain="unit", renamed={"steps": "depth"}, test_kwargs=_SMALL)
def Glow(shape: Shape, context: int = 0, levels: int = 3, depth: int = 8, hidden: Sequence[int] = (128, 128),
         alpha: float = 0.05, scale_bound: float | None = 3.0) -> ImageFlow:
    """Glow (Kingma & Dhariwal 2018) on dequantised images in (0, 1), multi-scale with the split prior.

    Logit, then ``levels`` levels of squeeze and ``depth`` steps (ActNorm, 1x1 conv LU, affine coupling
    whose CNN has hidden layers of ``hidden`` channels, see `ConvNet`), with the
    split prior after every level but the last; N(0, I) latent; sampling takes a temperature. H and W must be
    divisible by 2^levels (28x28 MNIST: levels <= 2). Data -> latent is that composition ``T``, and
    ``log p(y) = log N(T(y); 0, I) + log|det dT/dy|``, the logit's log-det included, so
    `bits_per_dim` of it is the discrete-data bound.

    Args:
        shape: Image shape ``(C, H, W)``, ``H`` and ``W`` divisible by ``2**levels``.
        context: Number of context features, given to every coupling and split prior (0: unconditional).
        levels: Number of levels (squeezes); every level but the last ends with the split prior.
        depth: Steps per level.
        hidden: Hidden channels of each coupling's CNN (see `ConvNet`).
        alpha: The logit's margin, ``logit(alpha + (1 - 2 alpha) y)``.
        scale_bound: Smooth bound of every log-scale (couplings and split prior); ``None``: unbounded.

    Returns:
        The flow, an `ImageFlow` (a `Flow` whose sampling takes a ``temperature``) on
        N(0, I) of the data's shape; ``flow.spec`` records the call.

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018).
        https://arxiv.org/abs/1807.03039

    Examples:
        >>> flow = Glow((1, 4, 4), levels=2, depth=1, hidden=(8, 8))
        >>> y = torch.rand(3, 1, 4, 4)  # dequantised pixels in (0, 1)
        >>> flow.log_prob(y).shape, flow.sample(2, temperature=0.7).shape
        (torch.Size([3]), torch.Size([2, 1, 4, 4]))
        >>> torch.allclose(flow.from_latent(flow.to_latent(y)), y, atol=1e-5)
        True
    """
    if levels < 1 or depth < 1:
        raise ValueError(f"levels and depth must be >= 1, got levels={levels}, depth={depth}")
    shape = image_shape(shape, 2**levels)

    def level(s: Shape, remaining: int) -> Bijection:
        squeezed: Shape = (4 * s[0], s[1] // 2, s[2] // 2)
        layers: list[Bijection] = [Squeeze(2)]
        for _ in range(depth):
            layers += glow_step(squeezed, context, hidden, scale_bound)
        if remaining > 1:
            rest: Shape = (squeezed[0] - squeezed[0] // 2, squeezed[1], squeezed[2])
            layers.append(Split(squeezed, context, level(rest, remaining - 1), scale_bound=scale_bound))
        return Compose(*layers, Unsqueeze(2))

    return ImageFlow(Compose(Logit(alpha), level(shape, levels)), StandardNormal(shape), context=context)


@FLOWS.register("RealNVPImage", input="image", domain="unit", renamed={"steps": "depth"}, test_kwargs=_SMALL)
def RealNVPImage(shape: Shape, context: int = 0, levels: int = 2, depth: int = 3, hidden: Sequence[int] = (64, 64),
                 alpha: float = 0.05, scale_bound: float | None = 3.0) -> ImageFlow:
    """Multi-scale RealNVP (Dinh et al. 2017) on dequantised images in (0, 1).

    Logit, then per level ``depth`` checkerboard affine couplings, squeeze, ``depth`` channel-wise affine
    couplings (masks alternating, ActNorm after each coupling), and half the channels factored out onto
    N(0, I); the last level has ``depth + 1`` checkerboard couplings only. Sampling takes a temperature.
    Every coupling maps data -> latent by ``z_tr = (x_tr - t(x_id)) exp(-s(x_id))``, ``log|det| = -sum(s)``, and
    ``log p(y) = log N(T(y); 0, I) + log|det dT/dy|``, the logit's log-det included.

    Args:
        shape: Image shape ``(C, H, W)``, ``H`` and ``W`` divisible by ``2**(levels - 1)``.
        context: Number of context features, given to every coupling's CNN (0: unconditional).
        levels: Number of levels; every level but the last squeezes and factors out half the channels.
        depth: Couplings of each kind per level.
        hidden: Hidden channels of each coupling's CNN (see `ConvNet`).
        alpha: The logit's margin, ``logit(alpha + (1 - 2 alpha) y)``.
        scale_bound: Smooth bound of every log-scale; ``None``: unbounded.

    Returns:
        The flow, an `ImageFlow` (a `Flow` whose sampling takes a ``temperature``) on
        N(0, I) of the data's shape; ``flow.spec`` records the call.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> flow = RealNVPImage((1, 4, 4), levels=2, depth=1, hidden=(8, 8))
        >>> y = torch.rand(3, 1, 4, 4)  # dequantised pixels in (0, 1)
        >>> flow.log_prob(y).shape, flow.sample(2).shape
        (torch.Size([3]), torch.Size([2, 1, 4, 4]))
        >>> torch.allclose(flow.from_latent(flow.to_latent(y)), y, atol=1e-5)
        True
    """
    if levels < 1 or depth < 1:
        raise ValueError(f"levels and depth must be >= 1, got levels={levels}, depth={depth}")
    shape = image_shape(shape, 2 ** (levels - 1))

    def couplings(s: Shape, mask: str, n: int) -> list[Bijection]:
        layers: list[Bijection] = []
        for i in range(n):
            layers += [ImageAffineCoupling(s, context, mask=mask, flip=i % 2 == 1, hidden=hidden,
                                          scale_bound=scale_bound), ActNorm(s[0])]
        return layers

    def level(s: Shape, remaining: int) -> Bijection:
        if remaining == 1:
            return Compose(*couplings(s, "checkerboard", depth + 1))
        squeezed: Shape = (4 * s[0], s[1] // 2, s[2] // 2)
        rest: Shape = (squeezed[0] - squeezed[0] // 2, squeezed[1], squeezed[2])
        return Compose(
            *couplings(s, "checkerboard", depth), Squeeze(2), *couplings(squeezed, "channel", depth),
            Split(squeezed, context, level(rest, remaining - 1), prior=False), Unsqueeze(2),
        )

    return ImageFlow(Compose(Logit(alpha), level(shape, levels)), StandardNormal(shape), context=context)
