"""Coupling flows on vectors: RealNVP (affine) and NICE (additive plus a final diagonal scaling)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..distributions import Flow, StandardNormal
from ..nets import context_embedding
from ..registry import FLOWS
from ..transforms.coupling import AdditiveCoupling, AffineCoupling, CouplingChain
from ..transforms.elementwise import ElementwiseAffine
from ..transforms.normalization import BatchNorm
from ..validation import check_sizes

__all__ = ["RealNVP", "NICE"]


@FLOWS.register("RealNVP", renamed={"transforms": "depth"}, test_kwargs={"depth": 3, "hidden": (16,)})
def RealNVP(features: int, context: int = 0, depth: int = 8, hidden: Sequence[int] = (64, 64),
            mask: str = "half", scale_bound: float | None = 3.0, batch_norm: bool = False,
            embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True) -> Flow:
    """RealNVP (Dinh et al. 2017): alternating affine couplings on N(0, I).

    ``depth`` affine couplings whose fixed part alternates (``mask``, flipped every layer), optionally with
    batch norm between them. Each coupling maps data -> latent by ``z_id = x_id``,
    ``z_tr = (x_tr - t(x_id)) exp(-s(x_id))``, ``log|det dz/dx| = -sum(s)``; the flow's
    ``log p(x) = log N(T(x); 0, I) + sum over layers of log|det|``. Both directions take one pass.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to every coupling's MLP (0: unconditional).
        depth: Number of affine couplings.
        hidden: Hidden layer sizes of each coupling's MLP.
        mask: Which features the first coupling keeps fixed: ``"half"`` or ``"alternating"``.
        scale_bound: Smooth bound of every log-scale; ``None``: unbounded.
        batch_norm: Put a `BatchNorm` between consecutive couplings.
        embedding: A context embedding network trained with the flow: layer widths such as ``[64, 16]`` or
            any ``nn.Module`` mapping ``(batch, context)`` to ``(batch, e)``; ``None``: the raw context (see `Flow`).
        standardize_context: Standardise the context inside the flow with statistics fitted at `exactflow.fit`
            (see `Flow.fit_context`).

    Returns:
        The flow, a `Flow` on N(0, I); ``flow.spec`` records the call.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> flow = RealNVP(4, context=2, depth=3, hidden=(16,))
        >>> x, c = torch.randn(5, 4), torch.randn(5, 2)
        >>> flow.log_prob(x, c).shape, flow.sample(3, c[0]).shape
        (torch.Size([5]), torch.Size([3, 4]))
        >>> torch.allclose(flow.from_latent(flow.to_latent(x, c), c), x, atol=1e-5)
        True
    """
    check_sizes(features, context, hidden, depth=depth)
    net, embedded = context_embedding(context, embedding)
    layers = []
    for i in range(depth):
        layers.append(AffineCoupling(features, embedded, mask=mask, flip=i % 2 == 1, hidden=hidden,
                                     scale_bound=scale_bound))
        if batch_norm and i < depth - 1:
            layers.append(BatchNorm(features))
    return Flow(CouplingChain(*layers), StandardNormal(features), context=context, embedding=net,
                standardize_context=standardize_context)


@FLOWS.register("NICE", renamed={"transforms": "depth"}, test_kwargs={"depth": 3, "hidden": (16,)})
def NICE(features: int, context: int = 0, depth: int = 4, hidden: Sequence[int] = (64, 64, 64),
         mask: str = "alternating", embedding: Sequence[int] | nn.Module | None = None,
         standardize_context: bool = True) -> Flow:
    """NICE (Dinh et al. 2015): additive couplings, then a learned diagonal scaling, on N(0, I).

    ``depth`` additive couplings with alternating parts, ``z_tr = x_tr + t(x_id)`` (volume preserving), then the
    diagonal scaling ``z = (x - loc) exp(-log_scale)``, the only volume change: data -> latent
    ``log|det dz/dx| = -sum(log_scale)``, the same for every x.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to every coupling's MLP (0: unconditional).
        depth: Number of additive couplings.
        hidden: Hidden layer sizes of each coupling's MLP.
        mask: Which features the first coupling keeps fixed: ``"alternating"`` or ``"half"``.
        embedding: A context embedding network trained with the flow: layer widths such as ``[64, 16]`` or
            any ``nn.Module`` mapping ``(batch, context)`` to ``(batch, e)``; ``None``: the raw context (see `Flow`).
        standardize_context: Standardise the context inside the flow with statistics fitted at `exactflow.fit`
            (see `Flow.fit_context`).

    Returns:
        The flow, a `Flow` on N(0, I); ``flow.spec`` records the call.

    References:
        L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation (2014).
        https://arxiv.org/abs/1410.8516

    Examples:
        >>> flow = NICE(4, depth=3, hidden=(16,))
        >>> x = torch.randn(5, 4)
        >>> flow.log_prob(x).shape, flow.sample(3).shape
        (torch.Size([5]), torch.Size([3, 4]))
        >>> z, ladj = flow.transform(x)
        >>> torch.allclose(ladj, ladj[:1].expand(5))  # volume change: the same for every x
        True
    """
    check_sizes(features, context, hidden, depth=depth)
    net, embedded = context_embedding(context, embedding)
    layers = [AdditiveCoupling(features, embedded, mask=mask, flip=i % 2 == 1, hidden=hidden) for i in range(depth)]
    layers.append(ElementwiseAffine(features))
    return Flow(CouplingChain(*layers), StandardNormal(features), context=context, embedding=net,
                standardize_context=standardize_context)
