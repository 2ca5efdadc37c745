"""Variational inference with flows: fit q to an unnormalised density by the reverse KL.

For ``p(x) = p~(x) / Z`` and a flow ``q``,

    KL(q || p) = E_q[log q(x) - log p~(x)] + log Z,

so minimising ``E_q[log q - log p~]`` maximises the ELBO ``E_q[log p~(x) - log q(x)] <= log Z``.
Each step draws ``x = T^{-1}(z)``, ``z ~ p_z``, and ``log q(x)`` in one reparameterised pass
(:meth:`Flow.sample_and_log_prob`). After fitting, importance sampling with q as proposal gives

    log Z ~= logsumexp_i(log p~(x_i) - log q(x_i)) - log n,     x_i ~ q,

with effective sample size ``ESS = 1 / sum_i w_i^2`` for the normalised weights ``w_i``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .distributions import Flow

__all__ = ["VIResult", "build_flow", "fit_reverse_kl", "importance_estimate"]


@dataclass
class VIResult:
    """Outcome of :func:`fit_reverse_kl`.

    ``elbo``: E_q[log p~ - log q] on ``samples`` fresh draws; ``log_z``: the importance-sampled
    estimate of log Z from the same draws; ``ess``: their effective sample size (1..samples);
    ``history``: the training ELBO (at full temperature) of every step's batch.
    """

    elbo: float
    log_z: float
    ess: float
    samples: int
    history: list[float] = field(default_factory=list)

    @property
    def ess_fraction(self) -> float:
        return self.ess / self.samples

    def as_dict(self) -> dict:
        return {"elbo": self.elbo, "log_z": self.log_z, "ess": self.ess, "ess_fraction": self.ess_fraction,
                "samples": self.samples, "steps": len(self.history)}


def build_flow(name: str, features: int, context: int = 0, depth: int | None = None, **kwargs) -> Flow:
    """The registered flow ``name`` (case-insensitive) with ``depth=`` (None: the factory's default)."""
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


def _log_weights(flow: Flow, log_target: Callable[[Tensor], Tensor], n: int) -> tuple[Tensor, Tensor]:
    """``n`` draws from q with log q and log p~ - log q, shape ``(n,)`` each."""
    x, log_q = flow.sample_and_log_prob(n)
    log_p = log_target(x)
    if not isinstance(log_p, Tensor) or log_p.shape != (n,):
        got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(f"log_target must map x of shape ({n}, ...) to a tensor of shape ({n},), got {got}")
    return log_p, log_q


@torch.no_grad()
def importance_estimate(flow: Flow, log_target: Callable[[Tensor], Tensor], samples: int = 10000,
                        chunk: int = 4096) -> tuple[float, float, float]:
    """``(elbo, log_z, ess)`` from ``samples`` draws of q, drawn ``chunk`` at a time (float64 reductions)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    parts = []
    for start in range(0, samples, chunk):
        log_p, log_q = _log_weights(flow, log_target, min(chunk, samples - start))
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
) -> VIResult:
    """Fit the unconditional ``flow`` to ``p~ = exp(log_target)`` by minimising E_q[log q - beta log p~] with Adam.

    ``beta`` rises linearly from 0.01 to 1 over the first ``anneal`` steps (0: no annealing), as in
    Rezende & Mohamed (2015). ``clip_grad`` caps the gradient norm (None: off). Returns the final
    ELBO, log Z estimate and ESS from ``samples`` fresh draws (see :func:`importance_estimate`).
    """
    if flow.context_features:
        raise ValueError("fit_reverse_kl needs an unconditional flow (context=0)")
    for label, value in (("steps", steps), ("batch", batch), ("samples", samples)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if lr <= 0 or anneal < 0:
        raise ValueError(f"need lr > 0 and anneal >= 0, got lr={lr}, anneal={anneal}")
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    flow.train()
    for step in range(steps):
        beta = min(1.0, 0.01 + step / anneal) if anneal else 1.0
        log_p, log_q = _log_weights(flow, log_target, batch)
        loss = (log_q - beta * log_p).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"reverse KL diverged at step {step}: loss is {loss.item()} (lower lr or set clip_grad)")
        opt.zero_grad()
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        opt.step()
        history.append(float((log_p - log_q).detach().mean()))
    flow.eval()
    elbo, log_z, ess = importance_estimate(flow, log_target, samples)
    return VIResult(elbo, log_z, ess, samples, history)
