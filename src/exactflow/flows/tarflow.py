"""TarFlow (Zhai et al., ICML 2025): a stack of causal-transformer autoregressive blocks over patches.

Noise augmentation and denoising (the paper's sampling recipe). ``TarFlow(..., noise=sigma)`` trains on noisy
inputs: in training mode (``flow.train()``, which `exactflow.fit` sets) `TarFlowModel.log_prob` scores

    log p(x) = log p_sigma(P(x) + sigma * eps) + log|det dP/dx|,     eps ~ N(0, I),

where ``P`` is the preprocessing before the first TarFlow block (`Logit` for images, any prepended
standardisation; the identity on vectors) and ``p_sigma = p * N(0, sigma^2 I)`` is the smoothed density the
blocks learn. The paper adds the noise to pixels scaled to [-1, 1], the inputs of its first block: that is
``logit=False`` on data in [-1, 1]. In evaluation mode (``flow.eval()``, which `exactflow.evaluate` and the
validation of `exactflow.fit` set) ``log_prob`` is the clean density, without noise. A sample ``y`` of
``p_sigma`` is then cleaned by one score step (Tweedie's formula, the posterior mean of the clean point given
``y``), in the space where the noise was added:

    y <- y + sigma^2 * grad_y log p_sigma(y),

with the score from autograd of the log-density (`TarFlowModel.denoise`; `denoise` for any flow, in its data
space). ``flow.sample`` applies it by default to a flow built with ``noise > 0`` (``denoise=False`` to skip).

Class-conditional sampling with classifier-free guidance. ``TarFlow(..., classes=K)`` takes the class index as
its one context column (train on ``(x, labels[:, None])`` pairs); in training mode each label is replaced by the
null label ``K`` with probability ``label_dropout``, so the same network also learns the unconditional density.
``flow.sample(n, label=y, guidance=w)`` then extrapolates the conditional and unconditional predictions of every
patch, ``(1 + w) cond - w uncond`` for both ``mu`` and ``s`` (``w = 0``: the plain conditional sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import Bijection, Compose, layer_context, total_ladj
from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.image import Logit
from ..transforms.tarflow import TarFlowBlock

__all__ = ["TarFlow", "TarFlow1d", "TarFlowModel", "denoise"]


class TarFlowModel(Flow):
    """A `Flow` with TarFlow's training noise and sampling recipe (see the module doc).

    ``log p(x) = log p_z(T(x)) + log|det dT/dx|`` as in `Flow`, with ``T = B o P``: ``P`` the preprocessing
    (the layers before the first `TarFlowBlock`), ``B`` the blocks. In training mode, with ``noise = sigma > 0``,
    the blocks score ``P(x) + sigma * eps`` instead of ``P(x)`` (``eps ~ N(0, I)`` drawn anew at every call);
    in evaluation mode ``log_prob`` is the clean density. Sampling draws ``y = B^{-1}(z)`` and, when the flow was
    trained with noise, denoises it before ``x = P^{-1}(y)``. Only `sample` applies the recipe (denoising, the
    Jacobi sampler, guidance); ``rsample``, ``sample_and_log_prob`` and ``from_latent`` are the plain map
    ``T^{-1}`` of `Flow`, whose log-densities they report.

    Args:
        transform: The bijection ``T`` (data -> latent), a `Compose` whose blocks are `TarFlowBlock` s.
        base: The base distribution ``p_z``.
        context: Number of context features (0: unconditional).
        noise: Standard deviation ``sigma`` of the training noise (0: none).
        classes: Number ``K`` of classes of a class-conditional flow (0: none); its context is then one column, the
            class index ``0 .. K-1`` (``K``: no class, the unconditional density).
        label_dropout: Probability that a label is replaced by the null label ``K`` in training mode.
    """

    def __init__(self, transform: Bijection, base: torch.nn.Module, context: int = 0, noise: float = 0.0,
                 classes: int = 0, label_dropout: float = 0.0) -> None:
        super().__init__(transform, base, context)
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        if classes and context != 1:
            raise ValueError(f"a class-conditional flow takes the label as its one context column, got {context=}")
        self.noise, self.classes, self.label_dropout = float(noise), int(classes), float(label_dropout)

    def _check_labels(self, context: Tensor | None) -> None:
        if self.classes and self.validate and context is not None:
            labels = context[..., 0]
            if not bool(((labels == labels.round()) & (labels >= 0) & (labels <= self.classes)).all()):
                raise ValueError(f"labels must be integers in 0 .. {self.classes - 1} (or {self.classes} for no "
                                 f"class), got {labels.flatten()[:8].tolist()}")

    def _check(self, x: Tensor, context: Tensor | None, what: str = "x") -> Tensor | None:
        context = super()._check(x, context, what)
        self._check_labels(context)
        return context

    def _parts(self) -> tuple[list[Bijection], list[Bijection]]:
        """(preprocessing ``P``, blocks ``B``): the transform's layers before and from the first TarFlow block."""
        layers = list(self.transform.bijections) if isinstance(self.transform, Compose) else [self.transform]
        first = next((i for i, b in enumerate(layers) if isinstance(b, TarFlowBlock)), 0)
        return layers[:first], layers[first:]

    @staticmethod
    def _through(layers: list[Bijection], x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        ladjs = []
        for b in layers:
            x, ladj = b(x, layer_context(b, context))
            ladjs.append(ladj)
        return x, total_ladj(ladjs, x)

    @staticmethod
    def _back(layers: list[Bijection], z: Tensor, context: Tensor | None, **kwargs: Any) -> tuple[Tensor, Tensor]:
        ladjs = []
        for b in reversed(layers):
            extra = kwargs if isinstance(b, TarFlowBlock) else {}
            z, ladj = b.inverse(z, layer_context(b, context), **extra)
            ladjs.append(ladj)
        return z, total_ladj(ladjs, z)

    def _log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.training and self.classes and self.label_dropout > 0:
            drop = torch.rand(context.shape[0], 1, device=context.device) < self.label_dropout
            context = torch.where(drop, torch.full_like(context, self.classes), context)
        if not (self.training and self.noise > 0):
            return super()._log_prob(x, context)
        pre, blocks = self._parts()
        y, ladj_pre = self._through(pre, x, context)
        z, ladj = self._through(blocks, y + self.noise * torch.randn_like(y), context)
        return self.base.log_prob(z, context) + ladj + ladj_pre

    def _score_step(self, y: Tensor, context: Tensor | None, sigma: float) -> Tensor:
        """``y + sigma^2 grad_y log p_B(y)``, the score of the blocks' density (no noise) at ``y``."""
        _, blocks = self._parts()
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            z, ladj = self._through(blocks, yg, context)
            score = torch.autograd.grad((self.base.log_prob(z, context) + ladj).sum(), yg)[0]
        return (y + sigma**2 * score).detach()

    def denoise(self, x: Tensor, context: Tensor | None = None, sigma: float | None = None) -> Tensor:
        """One Tweedie step in the space where the training noise was added, mapped back to the data:

            x' = P^{-1}(y + sigma^2 grad_y log p_B(y)),     y = P(x),

        with ``p_B(y) = p_z(B(y)) |det dB/dy|`` the blocks' density (the clean one, whatever the mode). Without
        preprocessing this is ``x + sigma^2 grad_x log p(x)``. Not a bijection: no log-det is returned.

        Args:
            x: Points ``(batch, *event)``, such as samples of the flow before denoising.
            context: Context rows (the rule of `Flow`), or None.
            sigma: Noise level; ``None``: the flow's ``noise``.

        Returns:
            The denoised points, of ``x``'s shape.
        """
        context = self._check(x, context)
        sigma = self.noise if sigma is None else sigma
        pre, _ = self._parts()
        with torch.no_grad():
            y, _ = self._through(pre, x, context)
        y = self._score_step(y, context, sigma)
        with torch.no_grad():
            return self._back(pre, y, context)[0]

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None, denoise: bool | None = None, sampler: str = "kv",
               tol: float | None = None, max_iter: int | None = None, segments: int = 1,
               label: int | Sequence[int] | Tensor | None = None, guidance: float = 0.0) -> Tensor:
        """``n`` samples (shapes as in `Flow.sample`), denoised by default when the flow has ``noise > 0``.

        Args:
            n: Number of samples (for each context row).
            context: Context vector ``(c,)`` or rows ``(b, c)``, or None (for a class-conditional flow, give the
                labels this way or by ``label``).
            denoise: Apply the score step `denoise` after the blocks' inverse; ``None``: when ``noise > 0``.
            sampler: How each block is inverted: ``"kv"``, patch by patch with a key/value cache, or
                ``"jacobi"``, by parallel fixed-point iteration (`TarFlowBlock.jacobi`; ``tol``, ``max_iter`` and
                ``segments`` are its settings, the defaults give the ``"kv"`` samples up to rounding).
            tol: Jacobi's stopping tolerance (``None``: 1e-5 in float32).
            max_iter: Jacobi's most iterations per block (``None``: the number of patches, exact).
            segments: Gauss-Seidel runs per block (1: plain Jacobi).
            label: Class-conditional flows: one class index (samples ``(n, *event)``) or ``b`` of them (samples
                ``(n, b, *event)``), the same as ``context`` of shape ``(1,)`` or ``(b, 1)``.
            guidance: Classifier-free guidance weight ``w``: every block extrapolates its conditional and
                unconditional (null label) predictions, ``(1 + w) cond - w uncond`` (0: conditional sampling).
                Denoising uses the conditional density.

        Returns:
            Samples ``(n, *event)``, or ``(n, b, *event)`` for context rows ``(b, c)``.
        """
        if label is not None:
            if not self.classes:
                raise ValueError("label= is for class-conditional flows (built with classes=K)")
            if context is not None:
                raise ValueError("give the labels by label= or by context=, not both")
            ref = self._ref()
            context = torch.as_tensor(label, dtype=ref.dtype, device=ref.device)
            context = context.reshape(1) if context.dim() == 0 else context.reshape(-1, 1)
        if guidance and not self.classes:
            raise ValueError("guidance is for class-conditional flows (built with classes=K)")
        total, ctx, lead = self._expand(n, context)
        self._check_labels(ctx)
        pre, blocks = self._parts()
        solver = {"sampler": sampler, "tol": tol, "max_iter": max_iter, "segments": segments} if sampler != "kv" else {}
        if guidance:
            solver["guidance"] = guidance
        if sampler not in ("kv", "jacobi"):
            raise ValueError(f"sampler must be 'kv' or 'jacobi', got {sampler!r}")
        y, _ = self._back(blocks, self.base.rsample(total, ctx), ctx, **solver)
        if (self.noise > 0) if denoise is None else denoise:
            y = self._score_step(y, ctx, self.noise)
        x, _ = self._back(pre, y, ctx)
        return x.reshape(*lead, *self.event_shape)


# scale_bound=1 in the generic test: randomised blocks with the default bound reach logit latents beyond +-37,
# where float64's sigmoid rounds to 1; Logit then clamps the sample into its domain (it can be scored), but
# forward(inverse(z)) no longer returns z there, and the generic round-trip check needs it to.
@FLOWS.register("TarFlow", input="image", domain="unit", renamed={"blocks": "depth"},
                test_kwargs={"patch": 2, "channels": 16, "depth": 2, "layers_per_block": 1, "heads": 2,
                             "scale_bound": 1.0})
def TarFlow(shape: tuple[int, int, int] | None = None, patch: int = 2, channels: int = 64, depth: int = 4,
            layers_per_block: int = 2, heads: int = 4, context: int = 0, features: int | None = None,
            logit: bool | None = None, alpha: float = 0.05, scale_bound: float | None = 3.0,
            noise: float = 0.0, classes: int = 0, label_dropout: float = 0.1) -> TarFlowModel:
    """TarFlow (Zhai et al. 2025): causal-transformer autoregressive blocks over patches, on N(0, I).

    ``depth`` `TarFlowBlock` s (transformer width ``channels``,
    ``layers_per_block`` layers, ``heads`` heads) with the patch order reversed between blocks.
    Images ``shape=(C, H, W)`` in (0, 1) are first mapped to R by `Logit`,
    ``logit(alpha + (1 - 2 alpha) x)`` as in Glow (``logit=False`` to skip it); vectors ``features=D``
    (``patch`` features per patch) are used as they are. Each block maps data -> latent by
    ``z_i = (x_i - mu_i(x_<i)) exp(-s_i(x_<i))`` over the patches, ``log|det dz/dx| = -sum s``, and
    ``log p(x) = log N(T(x); 0, I) + log|det dT/dx|``.

    Args:
        shape: Image shape ``(C, H, W)``; give exactly one of ``shape`` and ``features``.
        patch: Patch size (``patch x patch`` pixels on images, ``patch`` features on vectors).
        channels: Transformer width, divisible by ``heads``.
        depth: Number of TarFlow blocks.
        layers_per_block: Transformer layers in each block.
        heads: Attention heads.
        context: Number of context features (0: unconditional).
        features: Number of features ``D`` for vectors.
        logit: Start with the logit preprocessing; ``None``: for images only.
        alpha: The logit's margin.
        scale_bound: Smooth bound of every log-scale; ``None``: unbounded, as in the paper.
        noise: Standard deviation of the Gaussian noise added in training mode to the inputs of the first block
            (after the logit), and removed after sampling by a score step (see the module doc); 0: none.
            The paper uses 0.05 on pixels in [-1, 1] (``logit=False``).
        classes: Number ``K`` of classes for a class-conditional flow with classifier-free guidance (0: none): the
            context is then one column, the class index (``context`` must stay 0); every block adds a learned
            embedding of it to the transformer's input.
        label_dropout: With ``classes``: probability that a training label is replaced by the null label ``K``.

    Returns:
        The flow, a `TarFlowModel` on N(0, I) of the data's shape; ``flow.spec`` records the call.

    References:
        S. Zhai, R. Zhang, P. Nakkiran, D. Berthelot, J. Gu, H. Zheng, T. Chen, M. A. Bautista, N. Jaitly,
        J. Susskind. Normalizing Flows are Capable Generative Models (2024). https://arxiv.org/abs/2412.06329

    Examples:
        >>> flow = TarFlow((1, 4, 4), patch=2, channels=8, depth=2, layers_per_block=1, heads=2)
        >>> y = torch.rand(3, 1, 4, 4)  # pixels in (0, 1)
        >>> flow.log_prob(y).shape, flow.sample(2).shape
        (torch.Size([3]), torch.Size([2, 1, 4, 4]))

        Trained with noise (in training mode only), sampled with denoising:

        >>> noisy = TarFlow(features=4, patch=1, channels=8, depth=2, layers_per_block=1, heads=2, noise=0.05)
        >>> x = torch.randn(5, 4)
        >>> noisy.spec["kwargs"]["noise"], torch.equal(noisy.train().log_prob(x), noisy.log_prob(x))
        (0.05, False)
        >>> torch.equal(noisy.eval().log_prob(x), noisy.log_prob(x)), noisy.sample(3).shape
        (True, torch.Size([3, 4]))

        Class-conditional, sampled with classifier-free guidance:

        >>> cond = TarFlow((1, 4, 4), patch=2, channels=8, depth=2, layers_per_block=1, heads=2, classes=10)
        >>> labels = torch.tensor([[3.0], [7.0], [10.0]])  # 10: no class (the unconditional density)
        >>> cond.log_prob(y, labels).shape, cond.sample(2, label=3, guidance=2.0).shape
        (torch.Size([3]), torch.Size([2, 1, 4, 4]))
    """
    if (shape is None) == (features is None):
        raise ValueError("give exactly one of shape=(C, H, W) for images or features=D for vectors")
    event = (features,) if features is not None else tuple(shape)
    if logit is None:
        logit = len(event) == 3
    if classes and context:
        raise ValueError(f"classes={classes} makes the class index the one context column: leave context=0, got "
                         f"context={context}")
    width = 1 if classes else context
    layers = [Logit(alpha)] if logit else []
    layers += [TarFlowBlock(event if features is None else None, features, width, patch=patch, channels=channels,
                            layers=layers_per_block, heads=heads, flip=i % 2 == 1, scale_bound=scale_bound,
                            classes=classes)
               for i in range(depth)]
    return TarFlowModel(Compose(*layers), StandardNormal(event), context=width, noise=noise, classes=classes,
                        label_dropout=label_dropout)


@FLOWS.register("TarFlow1d", renamed={"blocks": "depth"},
                test_kwargs={"patch": 1, "channels": 16, "depth": 2, "layers_per_block": 1, "heads": 2})
def TarFlow1d(features: int, context: int = 0, patch: int = 1, **kwargs: Any) -> TarFlowModel:
    """TarFlow on vectors: every group of ``patch`` features (default 1) is one patch.

    ``TarFlow(features=features, ...)`` without the logit: each block maps data -> latent by
    ``z_i = (x_i - mu_i(x_<i)) exp(-s_i(x_<i))`` over the groups ``x_i``, ``log|det dz/dx| = -sum s``.

    Args:
        features: Number of features ``D``, divisible by ``patch``.
        context: Number of context features (0: unconditional).
        patch: Features per patch.
        **kwargs: Passed to `TarFlow` (``channels``, ``depth``, ``layers_per_block``, ``heads``,
            ``logit``, ``alpha``, ``scale_bound``, ``noise``).

    Returns:
        The flow, a `TarFlowModel` on N(0, I); ``flow.spec`` records the call.

    References:
        S. Zhai, R. Zhang, P. Nakkiran, D. Berthelot, J. Gu, H. Zheng, T. Chen, M. A. Bautista, N. Jaitly,
        J. Susskind. Normalizing Flows are Capable Generative Models (2024). https://arxiv.org/abs/2412.06329

    Examples:
        >>> flow = TarFlow1d(4, context=2, channels=8, depth=2, layers_per_block=1, heads=2)
        >>> x, c = torch.randn(5, 4), torch.randn(5, 2)
        >>> flow.log_prob(x, c).shape, flow.sample(3, c[0]).shape
        (torch.Size([5]), torch.Size([3, 4]))
        >>> torch.allclose(flow.from_latent(flow.to_latent(x, c), c), x, atol=1e-5)
        True
    """
    return TarFlow(features=features, context=context, patch=patch, **kwargs)


def denoise(flow: Flow, y: Tensor, sigma: float, context: Tensor | None = None) -> Tensor:
    """One score step ``y + sigma^2 grad_y log p(y)`` (Tweedie), for a flow trained on data plus N(0, sigma^2 I)."""
    with torch.enable_grad():
        yg = y.detach().requires_grad_(True)
        score = torch.autograd.grad(flow.log_prob(yg, context).sum(), yg)[0]
    return (y + sigma**2 * score).detach()
