"""Variational inference with flows: fit q to an unnormalised density by the reverse KL.

For ``p(x) = p~(x) / Z`` and a flow ``q``,

    KL(q || p) = E_q[log q(x) - log p~(x)] + log Z,

so minimising ``E_q[log q - log p~]`` maximises the ELBO ``E_q[log p~(x) - log q(x)] <= log Z``.
Each step draws ``x = T^{-1}(z)``, ``z ~ p_z``, and ``log q(x)`` in one reparameterised pass
(`Flow.sample_and_log_prob`). After fitting, importance sampling with q as proposal gives

    log Z ~= logsumexp_i(log p~(x_i) - log q(x_i)) - log n,     x_i ~ q,

with effective sample size ``ESS = 1 / sum_i w_i^2`` for the normalised weights ``w_i`` and standard error
``se(log Z) ~= sqrt(1/ESS - 1/n)`` (the delta method: the weights' squared coefficient of variation is n/ESS - 1).

Neither the ESS nor that standard error can see a mode q has missed: draws of q never land there, so the
weights look well balanced while log Z is underestimated. For 2-D targets `check_log_z` compares the
estimate with quadrature (`quadrature_log_z`) and says when they disagree by more
than the standard error allows.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .distributions import Flow
from .objectives import ReverseKL

if TYPE_CHECKING:
    from .training import History

__all__ = ["VIResult", "build_flow", "check_log_z", "fit_reverse_kl", "importance_estimate"]


@dataclass
class VIResult:
    """Outcome of `fit_reverse_kl`.

    ``elbo``: E_q[log p~ - log q] on ``samples`` fresh draws; ``log_z``: the importance-sampled
    estimate of log Z from the same draws; ``ess``: their effective sample size (1..samples);
    ``history``: the negated training loss of every step's batch (the ELBO once ``beta`` is 1);
    ``fit``: the `History` of the run (status, validation scores, message).
    """

    elbo: float
    log_z: float
    ess: float
    samples: int
    history: list[float] = field(default_factory=list)
    fit: History | None = None

    @property
    def ess_fraction(self) -> float:
        return self.ess / self.samples

    @property
    def log_z_se(self) -> float:
        """The standard error of ``log_z``, ``sqrt(1/ESS - 1/samples)`` (blind to modes q misses)."""
        return math.sqrt(max(0.0, 1 / self.ess - 1 / self.samples)) if self.ess > 0 else math.inf

    def as_dict(self) -> dict:
        return {"elbo": self.elbo, "log_z": self.log_z, "log_z_se": self.log_z_se, "ess": self.ess,
                "ess_fraction": self.ess_fraction, "samples": self.samples, "steps": len(self.history)}


def build_flow(name: str, features: int, context: int = 0, depth: int | None = None, **kwargs: Any) -> Flow:
    """The registered flow ``name`` (case-insensitive) with ``depth=`` (None: the factory's default); it records
    its spec, so it can be saved and loaded."""
    from .flows import registry

    matches = [key for key in registry if key.lower() == name.lower()]
    if not matches:
        raise ValueError(f"unknown flow {name!r}; available: {', '.join(sorted(registry))}")
    entry = registry[matches[0]]
    if depth is not None:
        if "depth" not in inspect.signature(entry.factory).parameters:
            raise ValueError(f"flow {entry.name!r} has no depth= argument")
        kwargs["depth"] = depth
    if context and not entry.conditional:
        raise ValueError(f"flow {entry.name!r} does not accept a context")
    return entry(features=features, context=context, **kwargs)


@torch.no_grad()
def importance_estimate(flow: Flow, log_target: Callable[[Tensor], Tensor], samples: int = 10000,
                        chunk: int = 4096) -> tuple[float, float, float]:
    """``(elbo, log_z, ess)`` from ``samples`` draws of q, drawn ``chunk`` at a time (float64 reductions)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    objective = ReverseKL(log_target)
    parts = []
    for start in range(0, samples, chunk):
        log_p, log_q = objective.log_weights(flow, min(chunk, samples - start))
        parts.append((log_p - log_q).double())
    log_w = torch.cat(parts)
    if torch.isnan(log_w).any() or (log_w == math.inf).any():
        raise ValueError("NaN or +inf importance weights: log_target or the flow misbehaves on q's samples")
    lse = torch.logsumexp(log_w, 0)
    ess = torch.exp(-torch.logsumexp(2 * (log_w - lse), 0))
    return float(log_w.mean()), float(lse - math.log(samples)), float(ess)


def fit_reverse_kl(
    flow: Flow,
    log_target: Callable[[Tensor], Tensor],
    steps: int = 2000,
    batch: int = 256,
    lr: float = 1e-3,
    anneal: int = 0,
    clip_grad: float | None = 10.0,
    samples: int = 10000,
    **options: Any,
) -> VIResult:
    """Fit the unconditional ``flow`` to ``p~ = exp(log_target)`` by minimising E_q[log q - beta log p~]:
    `exactflow.fit` with the `ReverseKL` objective and a constant learning rate.

    ``beta`` rises linearly from 0.01 to 1 over the first ``anneal`` steps (0: no annealing), as in
    Rezende & Mohamed (2015). ``clip_grad`` caps the gradient norm (None: off). Any other keyword of
    `exactflow.fit` (``ema``, ``patience``, ``eval_every``, ``checkpoint``, ``callbacks``, ``progress``,
    ``schedule``, ...) is passed on. Returns the final ELBO, log Z estimate and ESS from ``samples`` fresh draws
    (see `importance_estimate`); a diverged run warns and is reported at its last good state.
    """
    from .training import fit

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    objective = ReverseKL(log_target, anneal=anneal, seed=options.get("seed", 0),
                          valid_samples=options.pop("valid_samples", 2048))
    options = {"schedule": "constant", "progress": False, **options}
    history = fit(flow, objective=objective, steps=steps, batch_size=batch, lr=lr, clip_grad=clip_grad, **options)
    elbo, log_z, ess = importance_estimate(flow, log_target, samples)
    return VIResult(elbo, log_z, ess, samples, [-v for v in history.train], history)


def check_log_z(result: VIResult, reference: float, tolerance: float = 0.01, sigmas: float = 3.0) -> str | None:
    """A warning when the importance-sampled ``result.log_z`` and a ``reference`` value (e.g. quadrature) differ
    by more than ``sigmas`` standard errors plus ``tolerance`` (the reference's own error); None when they agree."""
    gap = result.log_z - reference
    allowed = sigmas * result.log_z_se + tolerance
    if abs(gap) <= allowed:
        return None
    side = "below" if gap < 0 else "above"
    hint = ("q misses probability mass of the target (a mode?): the ESS cannot see missed modes, it only weighs "
            "the draws q makes") if gap < 0 else "the estimate has heavy-tailed weights; draw more samples"
    return (f"the importance-sampled log Z {result.log_z:.4f} is {abs(gap):.4f} {side} the reference {reference:.4f}, "
            f"more than {sigmas:g} standard errors ({result.log_z_se:.4f}) allow: {hint}")
