"""Planar and radial flows (Rezende & Mohamed 2015), the flows of variational inference."""

from __future__ import annotations

from ..core import Compose
from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.planar import Planar as PlanarLayer
from ..transforms.planar import Radial as RadialLayer

__all__ = ["Planar", "Radial"]


def _unconditional(name: str, context: int) -> None:
    if context:
        raise ValueError(f"{name} flows are unconditional; got context={context}")


@FLOWS.register("Planar", conditional=False, test_kwargs={"layers": 4})
def Planar(features: int, context: int = 0, layers: int = 16) -> Flow:
    """``layers`` planar maps on N(0, I). Sampling and ``sample_and_log_prob`` are closed form;
    ``log_prob`` of given data inverts each layer numerically (bisection)."""
    _unconditional("Planar", context)
    return Flow(Compose(*[PlanarLayer(features) for _ in range(layers)]), StandardNormal(features))


@FLOWS.register("Radial", conditional=False, test_kwargs={"layers": 4})
def Radial(features: int, context: int = 0, layers: int = 16) -> Flow:
    """``layers`` radial maps on N(0, I); both directions closed form."""
    _unconditional("Radial", context)
    return Flow(Compose(*[RadialLayer(features) for _ in range(layers)]), StandardNormal(features))
