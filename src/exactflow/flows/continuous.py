"""A continuous normalizing flow on N(0, I), trained by flow matching or maximum likelihood."""

from __future__ import annotations

from collections.abc import Sequence

from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.continuous import CNF as CNFTransform
from ..validation import check_sizes

__all__ = ["CNF"]


@FLOWS.register("CNF", tolerance=1e-4, test_kwargs={"hidden": (8,), "steps": 16})
def CNF(features: int, context: int = 0, hidden: Sequence[int] = (64, 64), steps: int = 32,
        trace: str = "exact", activation: str = "silu") -> Flow:
    """Continuous normalizing flow (Chen et al. 2018) on N(0, I), trained by flow matching or likelihood.

    ``dx/dt = v(x, t, context)`` with noise at t = 0 and data at t = 1, RK4 with ``steps`` steps; train with
    :func:`~exactflow.transforms.continuous.flow_matching_loss` (Lipman et al. 2023) or ``-log_prob``."""
    check_sizes(features, context, hidden, steps=steps)
    cnf = CNFTransform(features, context, hidden=hidden, steps=steps, trace=trace, activation=activation)
    return Flow(cnf, StandardNormal(features), context=context)
