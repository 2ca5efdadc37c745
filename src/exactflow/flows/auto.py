"""``exactflow.build("auto", features=...)``: the flow and training recipe chosen by measurement.

The choice comes from ``benchmarks/defaults_sweep.py`` (a coordinate-wise sweep of presets, sizes, spline
settings and training recipes at a fixed CPU-time budget per run on the tuning tasks of
``benchmarks/tasks.py``; the table is in docs/benchmarks.md). `auto` builds the winning preset at the winning
size and records in ``flow.spec`` both the concrete preset (so a checkpoint rebuilds exactly that flow) and
``spec["auto"]``, the training recipe that `exactflow.fit` uses for every setting the caller leaves out.

The tails (a later stage of the sweep, ``tails``): the spline couplings are the identity outside
``[-bound, bound]``, so far from the data's bulk the first choice (NSF on N(0, I)) had only the LU layers' linear
maps, and it lost to an affine Real NVP on a funnel and on Student-t data. Of a wider spline interval (10), affine
couplings (two at the data end, or one before every spline), a Student-t base with learned degrees of freedom per
feature (`exactflow.bases.StudentT`) and both of the last together, the last had the lowest validation NLL on the
tuning tasks at 10 s of CPU time per run, mostly from funnel-4d. So `auto` adds two affine couplings at the data
end (``affine="ends"``: a scale that depends on the other half, tails included) and draws its base from a
`StudentT` (tails as heavy as the data's; it starts at 30 degrees of freedom, close to N(0, I)).

Conditional flows (``context > 0``) have their own choice, `conditional`, measured by
``benchmarks/conditional_sweep.py`` on the conditional tasks of ``benchmarks/conditional.py``.
"""

from __future__ import annotations

from typing import Any

from ..distributions import Flow
from ..registry import BASES, FLOWS

__all__ = ["BASE", "CONDITIONAL_PRESET", "CONDITIONAL_RECIPE", "CONDITIONAL_SIZE", "PRESET", "RECIPE", "SIZE",
           "auto", "conditional", "recipe"]

#: The preset the sweep chose for vector data.
PRESET = "NSF"
#: Its size and spline settings (keywords of the preset).
SIZE: dict[str, Any] = {"depth": 4, "hidden": (64, 64), "bins": 8, "bound": 5.0, "affine": "ends"}
#: The base distribution (a name in `exactflow.registry.BASES`, built with its defaults) in place of N(0, I).
BASE = "StudentT"
#: The training recipe `exactflow.fit` uses for a flow built with ``"auto"`` (for the settings not given).
RECIPE: dict[str, Any] = {"batch_size": 512, "lr": 1e-2, "schedule": "constant", "warmup": 0, "clip_grad": 5.0,
                          "weight_decay": 0.0, "ema": 0.999}
#: `exactflow.fit`'s recipe for every other model (the defaults from before the sweep).
CLASSIC: dict[str, Any] = {"batch_size": 256, "lr": 1e-3, "schedule": "cosine", "warmup": 0, "clip_grad": 5.0,
                           "weight_decay": 0.0, "ema": None}


def auto(features: int, context: int = 0, **overrides: Any) -> Flow:
    """The measured default flow for ``features``-dimensional vectors: `PRESET` at `SIZE` on a `BASE` base.

    With ``context > 0`` it returns `conditional` (a separate measured choice). ``overrides`` replace any keyword
    of the preset (e.g. ``depth=8``, ``affine="none"``). The returned flow's
    ``spec`` is the concrete preset's (``{"flow": PRESET, "kwargs": ..., "base": BASE}``) plus
    ``spec["auto"] = {"recipe": RECIPE}``.

    Examples:
        >>> import exactflow
        >>> flow = exactflow.build("auto", features=3)
        >>> flow.spec["flow"], flow.spec["base"], flow.spec["auto"]["recipe"] == RECIPE
        ('NSF', 'StudentT', True)
        >>> again = exactflow.flows.rebuild(exactflow.flows.describe(flow))  # what a checkpoint does
        >>> exactflow.flows.describe(again) == exactflow.flows.describe(flow)
        True
    """
    if context:
        return conditional(features, context, **overrides)
    flow = FLOWS.build(PRESET, features=features, **{**SIZE, **overrides})
    flow.base = BASES.build(BASE, flow.event_shape)
    flow.spec["base"] = BASE
    flow.spec["auto"] = {"recipe": dict(RECIPE)}
    return flow


#: The preset for conditional flows (``context > 0``), chosen by ``benchmarks/conditional_sweep.py``.
CONDITIONAL_PRESET = "NSF"
#: Its size: the splines cover [-3, 3] (finer bins where the data lie) instead of [-5, 5].
CONDITIONAL_SIZE: dict[str, Any] = {"depth": 4, "hidden": (64, 64), "bins": 8, "bound": 3.0}
#: Its training recipe: the unconditional one (`RECIPE`), which the conditional sweep also found best.
CONDITIONAL_RECIPE: dict[str, Any] = dict(RECIPE)


def conditional(features: int, context: int, **overrides: Any) -> Flow:
    """The measured default for ``x | c``: `CONDITIONAL_PRESET` at `CONDITIONAL_SIZE`, trained with
    `CONDITIONAL_RECIPE`; what ``exactflow.build("auto", features=D, context=C)`` builds for ``C > 0``.

    The choice comes from ``benchmarks/conditional_sweep.py``: candidates trained with `exactflow.fit` for 10
    CPU-seconds each on the three tuning tasks of ``benchmarks/conditional.py`` (a linear Gaussian with the context
    on unequal scales, a four-component mixture with context-driven weights, SBI two-moons), scored by the expected
    NLL gap to the true density ``E_c KL(p(. | c) || q(. | c))``; a heavy-tailed heteroscedastic task was held out.
    Lowest mean gap: NSF, 4 spline couplings with LU mixing, MLP (64, 64), 8 bins on [-3, 3], the context
    standardised inside the flow (the preset's default), Adam at a constant lr 1e-2 with an EMA of the weights.
    The narrower spline interval helped most on the thin two-moons crescent. The affine MAF (with or without
    residual MADE blocks) was better on the linear Gaussian and on two-moons but 5-10 times worse on the mixture
    (its mean gap was within 0.004 nats of the winner's); a context embedding network ``[64, 16]``, a conditional
    base and 6 couplings had higher mean gaps, lr 1e-3 without EMA was worse on every task it ran. One or two seeds
    and 10 s runs, so small differences are noise; the held-out task did not confirm the narrower interval (see
    the figures in docs/benchmarks.md).

    ``overrides`` replace any keyword of the preset (e.g. ``bound=5.0``); the spec is as in `auto`.

    Examples:
        >>> import exactflow
        >>> flow = exactflow.build("auto", features=2, context=3)
        >>> flow.spec["flow"], flow.spec["kwargs"]["bound"], flow.standardizes_context
        ('NSF', 3.0, True)
        >>> flow.spec["auto"]["recipe"] == CONDITIONAL_RECIPE
        True
        >>> flow.sample(4, torch.zeros(3)).shape
        torch.Size([4, 2])
    """
    if context < 1:
        raise ValueError(f"conditional needs context >= 1 context features, got {context}")
    flow = FLOWS.build(CONDITIONAL_PRESET, features=features, context=context, **{**CONDITIONAL_SIZE, **overrides})
    flow.spec["auto"] = {"recipe": dict(CONDITIONAL_RECIPE)}
    return flow


def recipe(model: Any) -> dict[str, Any]:
    """The training recipe for ``model``: the one in its ``spec["auto"]`` (built with ``"auto"``), else `CLASSIC`."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) and isinstance(spec.get("auto"), dict):
        return {**CLASSIC, **spec["auto"].get("recipe", {})}
    return dict(CLASSIC)
