"""Training: `fit`, one loop for every objective, the loop the command line uses too.

The objective (`exactflow.objectives`) says what a step minimises and what validation scores:
maximum likelihood on data (optionally conditional, ``(x, context)``), flow matching for a CNF, the
reverse KL to an unnormalised target, or a VAE's ELBO. The loop gives them all the same Adam steps,
schedule with warm-up, gradient clipping, optional EMA of the weights, early stopping on the
validation score with best-weight restore, atomic checkpoints with exact resume, a progress bar,
callbacks and one divergence policy:

    a NaN/inf loss, gradient norm or parameter stops training with a warning naming the step; the model
    goes back to its last good state (the last evaluation) and the checkpoint on disk, written only at
    evaluations, is left as it was (the message says which step it holds, or that none was written).

Under ``torch.distributed`` (e.g. ``torchrun``) every rank draws the same global batch and processes its
own shard ``rank::world``; gradients are averaged over the ranks, so the run equals a single-process
run with the same global batch and seed (up to float rounding). Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .distributions import Flow
from .images import bits_per_dim, dequantize
from .objectives import Objective, as_pair, make_objective, reference

if TYPE_CHECKING:
    from tqdm import tqdm  # an optional extra ("progress"), imported when a bar is shown

__all__ = ["EMA", "History", "evaluate", "fit", "read_module", "save_module", "standardize"]

SCHEDULES = ("constant", "cosine")


class _FromRecipe:
    """The default of a `fit` setting that comes from the model's training recipe (`exactflow.flows.auto.recipe`)."""

    def __repr__(self) -> str:
        return "<from the recipe>"


RECIPE_DEFAULT: Any = _FromRecipe()
COMPILE_NOTICE = "compiling {name} with torch.compile: the first call takes up to a minute"


@dataclass
class History:
    """What `fit` did: per-step training loss and learning rate, per-evaluation validation score (in
    ``unit``), the best evaluation, and how it ended (``status``: finished, early stopped, time budget,
    diverged; ``message`` says why in words)."""

    unit: str = "nats"
    step: list[int] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    valid_step: list[int] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    best_step: int | None = None
    best_valid: float | None = None
    status: str = "running"
    message: str = ""
    seconds: float = 0.0
    objective: str = "likelihood"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**d)


def standardize(flow: Flow, x: Tensor, columns: Sequence[str] | None = None) -> Flow:
    """Prepend `Standardize` fitted to ``x`` (mean/std per feature),
    so the flow models standardised data while ``log_prob`` stays in ``x``'s original units.

    A constant column (std 0, floored at 1e-8) gets a ``UserWarning`` naming it (with its name from
    ``columns`` when given): its density becomes a spike, so the NLL runs to large negative values."""
    from .transforms.standardize import Standardize

    ref = reference(flow)
    b = Standardize.fit(x).to(device=ref.device, dtype=ref.dtype)
    constant = [i for i, std in enumerate(x.detach().double().std(0).tolist()) if std == 0]
    if constant:
        names = ", ".join(f"{i} ({columns[i]!r})" if columns is not None else str(i) for i in constant)
        warnings.warn(f"standardizing constant column(s) {names}: a std of 0 is floored at 1e-8, so the NLL "
                      "runs to large negative values that say nothing about the other columns; drop the column(s)",
                      UserWarning, stacklevel=2)
    return ckpt.prepend(flow, "Standardize", bijection=b, features=x.shape[1])


@torch.no_grad()
def evaluate(flow: Flow, x: Tensor | np.ndarray, batch_size: int = 4096, levels: int | None = None,
             seed: int = 0, context: Tensor | np.ndarray | None = None) -> dict:
    """Mean NLL of the rows of ``x`` (a tensor or numpy array; ``context`` its context rows for a conditional
    flow) in nats (eval mode, batches of ``batch_size``); for quantised images (``levels``) the data are
    dequantised with a fixed ``seed`` and bits/dim is added."""
    x, c = as_pair(x if context is None else (x, context), "x")
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty data set")
    was_training = flow.training
    flow.eval()
    ref = reference(flow)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        if levels is not None:
            chunk = dequantize(chunk, levels, generator=gen)
        ctx = None if c is None else c[start : start + batch_size].to(device=ref.device, dtype=ref.dtype)
        total += float(flow.log_prob(chunk.to(device=ref.device, dtype=ref.dtype), ctx).double().sum())
    flow.train(was_training)
    out = {"nll": -total / x.shape[0], "n": int(x.shape[0])}
    if levels is not None:
        out["bits_per_dim"] = float(bits_per_dim(torch.tensor(total / x.shape[0]), tuple(x.shape[1:]), levels))
    return out


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _lr_factor(schedule: str, step: int, steps: int, warmup: int, used: float = 0.0) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then constant or a cosine
    from 1 to 0 over the rest of the run. The run's progress is the larger of the fraction of ``steps`` done and
    ``used``, the fraction of a time budget spent, so a budgeted run still anneals to (nearly) zero."""
    if warmup and step <= warmup:
        return step / warmup
    if schedule == "cosine":
        done = max((step - warmup) / max(1, steps - warmup), min(1.0, used))
        return 0.5 * (1 + math.cos(math.pi * done))
    return 1.0


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class EMA:
    """An exponential moving average of a model's floating state (parameters and float buffers).

    After update ``t`` the average is ``a <- d a + (1 - d) w`` with ``d = min(decay, (1 + t) / (10 + t))``, so
    the first updates follow the weights closely instead of staying near the initialisation.
    `applied` swaps the averaged weights into the model for evaluation and saving.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema must be a decay in (0, 1), e.g. 0.999, got {decay}")
        self.decay = decay
        self.state = _snapshot(model)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[key].mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                self.state[key].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back afterwards."""
        own = _snapshot(model)
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict[str, Tensor]]:
    """Optimizer state split for a pickle-free checkpoint: tensors ``optim.<param>.<name>`` and JSON scalars."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return {"param_groups": sd["param_groups"], "state": scalars}, tensors


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict, tensors: dict[str, Tensor]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in saved["state"].items():
        state.setdefault(int(idx), {}).update(scalars)
    try:
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError) as err:
        raise ValueError(f"the checkpoint's optimizer state does not match this model: {err}") from None


def _progress(show: bool | None, total: int, initial: int) -> tqdm | None:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)


MODULE_HEADER = "exactflow.module"


def save_module(path: str | Path, module: nn.Module, info: dict | None = None,
                extra: dict[str, Tensor] | None = None) -> Path:
    """Write a model that is not a `Flow` (a VAE) the way `exactflow.save` writes a flow:
    atomically, without pickle, its ``module.spec`` (how to rebuild it), dtype and ``info`` in the header, the
    weights as ``model.<key>`` beside any ``extra`` tensors, and a SHA-256 over header and tensors."""
    from . import __version__

    spec = getattr(module, "spec", None)
    if spec is None:
        raise ValueError(f"{type(module).__name__} has no spec to rebuild it from")
    tensors = {**_prefixed(module.state_dict(), ckpt.MODEL), **(extra or {})}
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = json.dumps({"format": ckpt.FORMAT, "version": __version__, "spec": spec,
                         "dtype": str(reference(module).dtype).removeprefix("torch."), "info": info or {}})
    ckpt.write_tensors(path, tensors, metadata={MODULE_HEADER: header, ckpt.CHECKSUM: ckpt._digest(header, tensors)})
    return Path(path)


def read_module(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """The header and tensors `save_module` wrote, after checking the SHA-256."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = ckpt.resolve(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as err:
        raise ValueError(f"{path}: corrupted or truncated checkpoint ({err})") from None
    if MODULE_HEADER not in meta:
        raise ValueError(f"{path}: not a saved model other than a flow (use exactflow.load for flows)")
    if ckpt._digest(meta[MODULE_HEADER], tensors) != meta.get(ckpt.CHECKSUM):
        raise ValueError(f"{path}: checksum mismatch, the file was changed or corrupted after it was written")
    return json.loads(meta[MODULE_HEADER]), tensors


def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _unprefixed(tensors: dict[str, Tensor], prefix: str, device: torch.device) -> dict[str, Tensor] | None:
    out = {k[len(prefix):]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}
    return out or None


@dataclass
class Options:
    """The loop's settings (see `fit` for their meaning)."""

    steps: int
    batch_size: int
    lr: float
    schedule: str
    warmup: int
    clip_grad: float | None
    patience: int | None
    eval_every: int
    seed: int
    time_budget: float | None = None
    clock: Callable[[], float] = time.perf_counter

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be a positive number of evaluations, got {self.patience}")
        budget = self.time_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not 0 < budget < math.inf):
            raise ValueError(f"time_budget must be a positive number of seconds, got {budget!r}")
        if not callable(self.clock):
            raise ValueError(f"clock must be a function returning seconds (e.g. time.thread_time), got {self.clock!r}")


class Trainer:
    """The state of one `fit` run and the steps that change it: a training step, an evaluation,
    a checkpoint write or read, the divergence policy. `fit` only wires them together."""

    def __init__(self, model: nn.Module, objective: Objective, options: Options, weight_decay: float,
                 ema: float | None, checkpoint: Path | None, info: dict | None) -> None:
        self.model, self.objective, self.o = model, objective, options
        self.world, self.rank = _world()
        self.opt = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=weight_decay)
        self.gen = torch.Generator().manual_seed(options.seed)
        self.ema = EMA(model, ema) if ema is not None else None
        self.checkpoint, self.info = checkpoint, info
        self.history = History(unit=objective.unit, objective=objective.name)
        self.best_state: dict[str, Tensor] | None = None
        self.bad_evals, self.start = 0, 0
        self.saved_step: int | None = None  # the step of this run's checkpoint on disk, once there is one
        self.good: tuple[dict[str, Tensor], dict[str, Tensor] | None, int] | None = None
        self.started = options.clock()  # the time budget counts from here, the start of `fit`

    def budget_used(self) -> float:
        """The fraction of the time budget spent so far (0 without a budget)."""
        if self.o.time_budget is None:
            return 0.0
        return (self.o.clock() - self.started) / self.o.time_budget

    # -- state a divergence returns to ---------------------------------------------------------------------------
    def remember_good(self, step: int) -> None:
        """Keep the weights (and the EMA) of ``step`` as the state a divergence returns to."""
        ema = None if self.ema is None else {k: v.clone() for k, v in self.ema.state.items()}
        self.good = (_snapshot(self.model), ema, step)

    def diverged(self, step: int, what: str) -> None:
        """The divergence policy: back to the last good state, the checkpoint untouched, a truthful message."""
        weights, ema, good_step = self.good
        self.model.load_state_dict(weights)
        if self.ema is not None:
            self.ema.state = ema
        if self.checkpoint is None or self.rank != 0:
            kept = ""
        elif self.saved_step is None:
            kept = "; no checkpoint was written"
        else:
            kept = f"; the last good checkpoint (step {self.saved_step}) is kept in {self.checkpoint}"
        self.history.status = "diverged"
        self.history.message = (f"training diverged at step {step} ({what}); the model is back at step {good_step}"
                                f"{kept}")

    # -- one step --------------------------------------------------------------------------------------------------
    def step(self, step: int) -> str | None:
        """One optimisation step; returns what went wrong (non-finite loss, gradient or weights) or None."""
        o, model = self.o, self.model
        model.train()
        factor = _lr_factor(o.schedule, step, o.steps, o.warmup, self.budget_used())
        for group in self.opt.param_groups:
            group["lr"] = o.lr * factor
        loss = self.objective.loss(model, self.objective.batch(self.gen, o.batch_size, step, (self.rank, self.world)))
        value = self._mean_over_ranks(loss.detach().clone())
        if not math.isfinite(value):
            return f"loss = {value}"
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self._average_gradients()
        if o.clip_grad is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad))
            if not math.isfinite(norm):
                return f"gradient norm = {norm}"
        self.opt.step()
        if not _finite(model):
            return "non-finite parameters after the update"
        if self.ema is not None:
            self.ema.update(model, step)
        self.history.step.append(step)
        self.history.train.append(self.objective.report(value))
        self.history.lr.append(o.lr * factor)
        return None

    def _mean_over_ranks(self, value: Tensor) -> float:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    # -- evaluation ------------------------------------------------------------------------------------------------
    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """The weights that are evaluated, kept as best and saved: the EMA's when there is one."""
        if self.ema is None:
            yield
        else:
            with self.ema.applied(self.model):
                yield

    def evaluate(self, step: int) -> bool:
        """Score the validation data (if any); returns True when early stopping says stop."""
        with self.evaluation_weights():
            score = self.objective.score(self.model)
            if score is None:
                return False
            if self.world > 1:  # every rank takes rank 0's number, so all make the same early-stopping call
                import torch.distributed as dist

                shared = torch.tensor([score], dtype=torch.float64, device=reference(self.model).device)
                dist.broadcast(shared, 0)
                score = float(shared)
            h = self.history
            h.valid_step.append(step)
            h.valid.append(score)
            if h.best_valid is None or score < h.best_valid:
                h.best_valid, h.best_step, self.bad_evals = score, step, 0
                self.best_state = _snapshot(self.model)
                return False
        self.bad_evals += 1
        return self.o.patience is not None and self.bad_evals >= self.o.patience

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def write(self, step: int) -> None:
        """Write the training state atomically (rank 0). With an EMA the model's tensors are the averaged weights
        (what `exactflow.load` gives), the optimised ones go under ``train.``."""
        if self.checkpoint is None or self.rank != 0:
            return
        opt_json, tensors = _optimizer_state(self.opt)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batches"] = self.gen.get_state()
        if self.best_state is not None:
            tensors.update(_prefixed(self.best_state, "best."))
        if self.ema is not None:
            tensors.update(_prefixed(_snapshot(self.model), "train."))
        state = {"step": step, "bad_evals": self.bad_evals, "optimizer": opt_json, "history": self.history.to_dict(),
                 "ema": None if self.ema is None else self.ema.decay}
        save = ckpt.save if isinstance(self.model, Flow) else save_module
        with self.evaluation_weights():
            save(self.checkpoint, self.model, info={**(self.info or {}), "training_state": state}, extra=tensors)
        self.saved_step = step

    def resume(self) -> None:
        """Continue from the checkpoint: weights, EMA, optimizer, RNG streams, history and early-stopping state."""
        header, tensors = (ckpt.read if isinstance(self.model, Flow) else read_module)(self.checkpoint)
        state = header["info"].get("training_state")
        if state is None:
            raise ValueError(f"{self.checkpoint}: holds no training state to resume from")
        if (state.get("ema") is None) != (self.ema is None):
            raise ValueError(f"{self.checkpoint}: written with ema={state.get('ema')}, resumed with "
                             f"ema={None if self.ema is None else self.ema.decay}; use the same setting")
        where = str(self.checkpoint)
        if self.ema is not None:
            ckpt.load_state(self.model, tensors, where=where)
            self.ema.state = _snapshot(self.model)
            ckpt.load_state(self.model, tensors, prefix="train.", where=where)
        else:
            ckpt.load_state(self.model, tensors, where=where)
        _load_optimizer(self.opt, state["optimizer"], tensors)
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.batches"])
        self.history = History.from_dict(state["history"])
        self.bad_evals, self.start = state["bad_evals"], state["step"]
        self.saved_step = self.start
        self.best_state = _unprefixed(tensors, "best.", reference(self.model).device)
        if self.start > self.o.steps:
            raise ValueError(f"{self.checkpoint} is at step {self.start}, beyond steps={self.o.steps}")

    def finish(self) -> None:
        """Hand back the weights to use: the best evaluated ones, else the EMA's, else the last; eval mode."""
        if self.history.status != "diverged":
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            elif self.ema is not None:
                self.model.load_state_dict(self.ema.state)
        self.model.eval()


def _objective(train: Any, valid: Any, objective: str | Objective, levels: int | None,
               seed: int, coupling: str | None = None) -> Objective:
    if coupling is not None and objective != "flow-matching":
        raise ValueError(f"coupling={coupling!r} is an option of objective='flow-matching', got objective={objective!r}"
                         + (" (give it to the FlowMatching instance instead)" if isinstance(objective, Objective)
                            else ""))
    if isinstance(objective, str):
        if train is None:
            raise ValueError(f"fit(objective={objective!r}) needs training data (or the target, for reverse-kl)")
        options = {} if coupling is None else {"coupling": coupling}
        return make_objective(objective, train, valid, levels=levels, seed=seed, **options)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a name or an Objective, got {type(objective).__name__}")
    if train is not None or valid is not None:
        raise ValueError("give the data to the objective, not to fit(), when passing an Objective instance")
    return objective


def fit(
    model: nn.Module,
    train: Any = None,
    valid: Any = None,
    *,
    objective: str | Objective = "likelihood",
    coupling: str | None = None,
    steps: int = 1000,
    batch_size: int = RECIPE_DEFAULT,
    lr: float = RECIPE_DEFAULT,
    schedule: str = RECIPE_DEFAULT,
    warmup: int = RECIPE_DEFAULT,
    clip_grad: float | None = RECIPE_DEFAULT,
    weight_decay: float = RECIPE_DEFAULT,
    patience: int | None = None,
    eval_every: int = 100,
    levels: int | None = None,
    seed: int = 0,
    ema: float | None = RECIPE_DEFAULT,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    info: dict | None = None,
    progress: bool | None = None,
    callback: Callable[[int, History], None] | None = None,
    callbacks: Sequence[Callable[[int, History], None]] = (),
    compile: bool = False,
    time_budget: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> History:
    """Train ``model`` on ``objective`` with Adam; returns the `History`.

    The settings ``batch_size``, ``lr``, ``schedule``, ``warmup``, ``clip_grad``, ``weight_decay`` and ``ema``
    that are not given come from the model's training recipe (`exactflow.flows.auto.recipe`): for a flow built
    with ``exactflow.build("auto", ...)`` the measured recipe it carries in ``spec["auto"]``, for any other model
    ``CLASSIC``: batch 256, lr 1e-3, cosine schedule without warm-up, gradient clipping at 5, no weight decay,
    no EMA.

    ``objective``: ``"likelihood"`` (default), ``"flow-matching"`` (a CNF flow), ``"elbo"`` (a
    `VAE`) on ``train``; ``"reverse-kl"`` with ``train`` the target's log density; or an
    `Objective` instance that holds its own data (``train`` and ``valid`` None). ``coupling``, with
    ``"flow-matching"`` only: how noise and data are paired, ``"independent"`` (the default) or ``"ot"`` (minibatch
    optimal transport, needs POT); see `exactflow.objectives.FlowMatching`.
    Data are a tensor or numpy array ``(n, *event)``, a pair ``(x, context)`` for a conditional flow, or a
    `Dataset` (then ``valid``, its context and ``levels`` default to the data set's). A flow built with
    ``standardize_context=True`` (the conditional presets' default) whose context statistics are not fitted yet
    gets them from the training context first (`Flow.fit_context`); a fitted flow keeps its own.

    ``schedule`` is ``"cosine"`` (to zero at ``steps``) or ``"constant"``, after ``warmup`` linear steps;
    ``clip_grad`` caps the gradient norm. Every ``eval_every`` steps the validation score is computed; after
    ``patience`` evaluations without improvement training stops, and at the end the best weights are
    restored. ``ema=0.999`` keeps an exponential moving average of the weights (see `EMA`): evaluation,
    the best weights, the saved model and the returned one are the averaged weights. Divergence (NaN/inf)
    follows the policy in the module docstring and warns with ``RuntimeWarning``.

    With ``checkpoint=path`` (the model needs a ``spec``, see `exactflow.build`) the weights, EMA,
    optimizer, RNG states and history are written atomically every evaluation; ``resume=True`` continues
    from that file exactly where it stopped. ``info`` is stored in it. ``progress``: a tqdm bar (None: only
    on a terminal). ``callback`` and each of ``callbacks`` run as ``fn(step, history)`` after every
    evaluation (on rank 0). ``compile=True`` compiles a Flow with `exactflow.compile` and prints a
    one-line notice to stderr before the first (slow) compiled call.

    ``time_budget`` (seconds of ``clock``, by default the wall clock ``time.perf_counter``; pass
    ``clock=time.thread_time`` for the CPU time of this thread) stops training at the first step that ends past
    the budget, counted from the start of `fit`; ``steps`` is then only an upper bound. That last step is
    evaluated, the best weights (the EMA's, with ``ema``) are restored as at any other end, and ``history.status``
    is ``"time budget"``. The cosine schedule anneals over whichever runs out first, the steps or the budget.

    Examples:
        >>> import time
        >>> import exactflow
        >>> flow = exactflow.build("NSF", features=2, depth=2, hidden=(16,))
        >>> x = torch.randn(2000, 2)
        >>> history = exactflow.fit(flow, x[:1500], x[1500:], steps=10**6, time_budget=0.3, eval_every=20,
        ...                         clock=time.thread_time)
        >>> history.status, history.best_step is not None
        ('time budget', True)
    """
    from .flows.auto import recipe

    given = {"batch_size": batch_size, "lr": lr, "schedule": schedule, "warmup": warmup, "clip_grad": clip_grad,
             "weight_decay": weight_decay, "ema": ema}
    chosen = {**recipe(model), **{k: v for k, v in given.items() if v is not RECIPE_DEFAULT}}
    batch_size, ema, weight_decay = chosen["batch_size"], chosen["ema"], chosen["weight_decay"]
    options = Options(steps, batch_size, chosen["lr"], chosen["schedule"], chosen["warmup"], chosen["clip_grad"],
                      patience, eval_every, seed, time_budget, clock)
    options.check()
    obj = _objective(train, valid, objective, levels, seed, coupling)
    obj.check(model)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and getattr(model, "spec", None) is None:
        raise ValueError("fit(checkpoint=...) needs a flow built with exactflow.build(name, ...) (or a model with a "
                         "spec, such as a VAE) so the checkpoint can rebuild it without pickle")
    trainer = Trainer(model, obj, options, weight_decay, ema, path, info)
    if batch_size % trainer.world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes ({trainer.world})")
    if compile:
        _compile(model, trainer.rank)
    if resume and path is not None and path.is_file():
        trainer.resume()
        if trainer.history.status == "early stopped" or trainer.start == steps:  # nothing left to do
            trainer.finish()
            return trainer.history
        trainer.history.status = "running"
    else:
        model.train()
        _fit_context(model, obj)
        obj.initialize(model, batch_size)  # data-dependent initialisation (ActNorm), the same on every rank
        if trainer.ema is not None:
            trainer.ema.state = _snapshot(model)
    _run(trainer, progress, [*([callback] if callback is not None else []), *callbacks])
    return trainer.history


def _fit_context(model: nn.Module, objective: Objective) -> None:
    """A flow built with ``standardize_context=True`` whose context statistics are not fitted yet gets them from
    the training context (all of it, the same on every rank); a fitted flow keeps its statistics."""
    if not isinstance(model, Flow) or not model.standardizes_context or bool(model.context_fitted):
        return
    train = getattr(objective, "train", None)
    if isinstance(train, tuple) and len(train) == 2 and isinstance(train[1], Tensor):
        model.fit_context(train[1])


def _compile(model: nn.Module, rank: int) -> None:
    from .distributions import compile_flow

    if not isinstance(model, Flow):
        raise ValueError(f"compile=True compiles a Flow; got {type(model).__name__}")
    compile_flow(model)
    if rank == 0:
        name = (getattr(model, "spec", None) or {}).get("flow", type(model.transform).__name__)
        print(COMPILE_NOTICE.format(name=name), file=sys.stderr, flush=True)


def _run(trainer: Trainer, progress: bool | None, callbacks: list[Callable[[int, History], None]]) -> None:
    """The loop: steps, evaluations and checkpoints every ``eval_every`` steps, the bar, the callbacks."""
    o, h = trainer.o, trainer.history
    trainer.remember_good(trainer.start)
    bar = _progress(progress if trainer.rank == 0 else False, o.steps, trainer.start)
    began = time.perf_counter()
    try:
        for step in range(trainer.start + 1, o.steps + 1):
            problem = trainer.step(step)
            if problem is not None:
                trainer.diverged(step, problem)
                break
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix_str(f"{trainer.objective.label} {h.train[-1]:.3f} {h.unit}")
            out_of_time = o.time_budget is not None and trainer.budget_used() >= 1
            if step % o.eval_every and step != o.steps and not out_of_time:
                continue
            stop = trainer.evaluate(step)
            if bar is not None and h.valid_step[-1:] == [step]:
                bar.set_postfix_str(f"{trainer.objective.label} {h.train[-1]:.3f} valid {h.valid[-1]:.3f} {h.unit}")
            if stop:
                h.status = "early stopped"
                h.message = (f"early stopped at step {step}: no improvement of the validation score in {o.patience} "
                             f"evaluations (best {h.best_valid:.4f} at step {h.best_step})")
            elif step == o.steps:
                h.status = "finished"
            elif out_of_time:
                stop = True
                h.status = "time budget"
                best = "" if h.best_step is None else f"; the best weights (step {h.best_step}) are restored"
                h.message = f"stopped at step {step}: the time budget of {o.time_budget:g} s was spent{best}"
            h.seconds += time.perf_counter() - began
            began = time.perf_counter()
            trainer.write(step)
            trainer.remember_good(step)
            if trainer.rank == 0:
                for fn in callbacks:
                    fn(step, h)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if h.status == "diverged":
        h.seconds += time.perf_counter() - began
        warnings.warn(h.message, RuntimeWarning, stacklevel=3)
    trainer.finish()
