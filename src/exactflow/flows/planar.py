"""Planar and radial flows (Rezende & Mohamed 2015), the flows of variational inference.

With ``context > 0`` every layer's parameters are affine in the context (amortised posteriors);
the base stays N(0, I) (a VAE puts its own context-dependent base under the layers, see
:mod:`exactflow.vae`).
"""

from __future__ import annotations

from ..core import Compose
from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.planar import Planar as PlanarLayer
from ..transforms.planar import Radial as RadialLayer
from ..validation import check_sizes

__all__ = ["Planar", "Radial"]


@FLOWS.register("Planar", conditional=True, renamed={"layers": "depth"}, test_kwargs={"depth": 4})
def Planar(features: int, context: int = 0, depth: int = 16) -> Flow:
    """``depth`` planar maps on N(0, I). Sampling and ``sample_and_log_prob`` are closed form;
    ``log_prob`` of given data inverts each layer numerically (bisection)."""
    check_sizes(features, context, depth=depth)
    return Flow(Compose(*[PlanarLayer(features, context) for _ in range(depth)]), StandardNormal(features), context)


@FLOWS.register("Radial", conditional=True, renamed={"layers": "depth"}, test_kwargs={"depth": 4})
def Radial(features: int, context: int = 0, depth: int = 16) -> Flow:
    """``depth`` radial maps on N(0, I); both directions closed form."""
    check_sizes(features, context, depth=depth)
    return Flow(Compose(*[RadialLayer(features, context) for _ in range(depth)]), StandardNormal(features), context)
