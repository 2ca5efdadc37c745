"""A continuous normalizing flow on N(0, I), trained by flow matching or maximum likelihood."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.continuous import CNF as CNFTransform
from ..validation import check_sizes

__all__ = ["CNF", "CNFFlow"]


class CNFFlow(Flow):
    """A `Flow` whose transform is a `exactflow.transforms.continuous.CNF`: ``sample`` solves the ODE without the
    divergence (the log-det is not needed there), ``D`` times cheaper with the exact trace on ``D`` features.

    ``log_prob``, ``rsample`` and ``sample_and_log_prob`` are those of `Flow` (with the divergence: ``rsample`` may
    be differentiated and its log-det asked for by ``sample_and_log_prob``).
    """

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` samples ``x = phi_1(z)``, ``z ~ N(0, I)``, by the CNF's solver (``nfe`` counts its evaluations);
        shapes as in `Flow.sample`."""
        total, ctx, lead = self._expand(n, context)
        x, _ = self.transform.integrate(self.base.rsample(total, ctx), 0.0, 1.0, ctx, logdet=False)
        return x.reshape(*lead, *self.event_shape)


@FLOWS.register("CNF", tolerance=1e-4, test_kwargs={"hidden": (8,), "steps": 16})
def CNF(features: int, context: int = 0, hidden: Sequence[int] = (64, 64), steps: int = 32,
        trace: str = "exact", activation: str = "silu", solver: str = "rk4", rtol: float = 1e-5,
        atol: float = 1e-5) -> Flow:
    """Continuous normalizing flow (Chen et al. 2018) on N(0, I), trained by flow matching or likelihood.

    ``dx/dt = v(x, t, context)`` with noise at t = 0 and data at t = 1, RK4 with ``steps`` steps; train with
    `flow_matching_loss` (Lipman et al. 2023) or ``-log_prob``.
    Data -> latent integrates from t = 1 to t = 0, ``z = x(0)``, with ``log|det dz/dx| = -int_0^1 div v dt``, so
    ``log p(x) = log N(z; 0, I) - int_0^1 div v(x_t, t) dt``.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to the velocity field (0: unconditional).
        hidden: Hidden layer sizes of the velocity MLP.
        steps: Number of fixed RK4 steps over ``[0, 1]``.
        trace: ``"exact"`` divergence, or ``"hutchinson"`` (an unbiased estimate, so ``log_prob`` is one too).
        activation: Activation of the velocity MLP (smooth ones suit RK4).
        solver: ``"rk4"`` (fixed steps) or ``"dopri5"`` (adaptive, torchdiffeq; ``flow.transform.nfe`` counts
            the velocity evaluations of the last solve).
        rtol: Relative tolerance of the adaptive solver.
        atol: Absolute tolerance of the adaptive solver.

    Returns:
        The flow, a `CNFFlow` on N(0, I) (its ``sample`` skips the divergence); ``flow.spec`` records the call.

    References:
        R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud. Neural Ordinary Differential Equations (2018);
        W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud. FFJORD (2018);
        Y. Lipman, R. T. Q. Chen, H. Ben-Hamu, M. Nickel, M. Le. Flow Matching for Generative Modeling (2022).
        https://arxiv.org/abs/1806.07366, https://arxiv.org/abs/1810.01367, https://arxiv.org/abs/2210.02747

    Examples:
        >>> from exactflow.transforms.continuous import flow_matching_loss
        >>> flow = CNF(2, hidden=(8,), steps=4)
        >>> x = torch.randn(6, 2)
        >>> flow_matching_loss(flow, x).shape  # a scalar loss, no ODE solve
        torch.Size([])
        >>> flow.log_prob(x).shape, flow.rsample(3).shape, flow.sample(3).shape
        (torch.Size([6]), torch.Size([3, 2]), torch.Size([3, 2]))
    """
    check_sizes(features, context, hidden, steps=steps)
    cnf = CNFTransform(features, context, hidden=hidden, steps=steps, trace=trace, activation=activation,
                       solver=solver, rtol=rtol, atol=atol)
    return CNFFlow(cnf, StandardNormal(features), context=context)
