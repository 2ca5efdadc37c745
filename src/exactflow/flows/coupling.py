"""Coupling flows on vectors: RealNVP (affine) and NICE (additive plus a final diagonal scaling)."""

from __future__ import annotations

from collections.abc import Sequence

from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.coupling import AdditiveCoupling, AffineCoupling, CouplingChain
from ..transforms.elementwise import ElementwiseAffine
from ..transforms.normalization import BatchNorm
from ..validation import check_sizes

__all__ = ["RealNVP", "NICE"]


@FLOWS.register("RealNVP", renamed={"transforms": "depth"}, test_kwargs={"depth": 3, "hidden": (16,)})
def RealNVP(features: int, context: int = 0, depth: int = 8, hidden: Sequence[int] = (64, 64),
            mask: str = "half", scale_bound: float | None = 3.0, batch_norm: bool = False) -> Flow:
    """RealNVP (Dinh et al. 2017): ``depth`` affine couplings whose fixed part alternates
    (``mask``, flipped every layer), optionally with batch norm between them, on N(0, I)."""
    check_sizes(features, context, hidden, depth=depth)
    layers = []
    for i in range(depth):
        layers.append(AffineCoupling(features, context, mask=mask, flip=i % 2 == 1, hidden=hidden,
                                     scale_bound=scale_bound))
        if batch_norm and i < depth - 1:
            layers.append(BatchNorm(features))
    return Flow(CouplingChain(*layers), StandardNormal(features), context=context)


@FLOWS.register("NICE", renamed={"transforms": "depth"}, test_kwargs={"depth": 3, "hidden": (16,)})
def NICE(features: int, context: int = 0, depth: int = 4, hidden: Sequence[int] = (64, 64, 64),
         mask: str = "alternating") -> Flow:
    """NICE (Dinh et al. 2015): ``depth`` additive couplings with alternating parts, then a learned
    diagonal scaling (the only volume change), on N(0, I)."""
    check_sizes(features, context, hidden, depth=depth)
    layers = [AdditiveCoupling(features, context, mask=mask, flip=i % 2 == 1, hidden=hidden) for i in range(depth)]
    layers.append(ElementwiseAffine(features))
    return Flow(CouplingChain(*layers), StandardNormal(features), context=context)
