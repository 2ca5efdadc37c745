"""Sylvester normalizing flows (van den Berg et al. 2018): planar flows with ``M`` hidden units per layer.

With ``context > 0`` every layer's parameters are affine in the context (amortised posteriors); the base stays
N(0, I).
"""

from __future__ import annotations

from ..core import Bijection, Compose
from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.sylvester import HouseholderSylvester, TriangularSylvester
from ..transforms.sylvester import Sylvester as SylvesterLayer
from ..validation import check_sizes

__all__ = ["Sylvester"]

KINDS = ("orthogonal", "householder", "triangular")


@FLOWS.register("Sylvester", conditional=True, test_kwargs={"depth": 3, "rank": 3})
def Sylvester(features: int, context: int = 0, depth: int = 8, kind: str = "orthogonal", rank: int | None = None,
              reflections: int | None = None) -> Flow:
    """``depth`` Sylvester layers on N(0, I), each ``x = z + Q R tanh(R~ Q^T z + b)`` (latent -> data).

    Sampling and ``sample_and_log_prob`` are closed form; ``log_prob`` of given data solves each layer's
    triangular system numerically (back-substitution and bisection), see `exactflow.transforms.sylvester`.

    Args:
        features: the dimension ``D`` of the data.
        context: number of context features (0: unconditional).
        depth: number of layers.
        kind: how ``Q`` is made: ``"orthogonal"`` (``M`` columns of a learned rotation, O-SNF),
            ``"householder"`` (a product of reflections, H-SNF) or ``"triangular"`` (identity and reversal
            alternating between layers, T-SNF).
        rank: hidden units ``M <= D`` per layer, ``"orthogonal"`` only (default ``D``).
        reflections: reflections per layer, ``"householder"`` only (default ``D``).

    Returns:
        The flow, its layers in the data -> latent order.

    References:
        R. van den Berg, L. Hasenclever, J. M. Tomczak and M. Welling, "Sylvester Normalizing Flows for
        Variational Inference" (2018), https://arxiv.org/abs/1803.05649

    Example:
        >>> flow = Sylvester(2, depth=2)
        >>> x = flow.sample(5)
        >>> x.shape, flow.log_prob(x).shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    check_sizes(features, context, depth=depth)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if rank is not None and kind != "orthogonal":
        raise ValueError(f"rank= applies to kind='orthogonal' only (kind={kind!r} uses M = features)")
    if reflections is not None and kind != "householder":
        raise ValueError(f"reflections= applies to kind='householder' only, got kind={kind!r}")

    def layer(i: int) -> Bijection:
        if kind == "orthogonal":
            return SylvesterLayer(features, context, rank=rank)
        if kind == "householder":
            return HouseholderSylvester(features, context, reflections=reflections)
        return TriangularSylvester(features, context, reverse=i % 2 == 1)

    return Flow(Compose(*[layer(i) for i in range(depth)]), StandardNormal(features), context)
