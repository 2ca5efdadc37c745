"""Maximum-likelihood training: :func:`fit`, the loop the command line uses too.

The loss is the mean negative log-likelihood ``-(1/B) sum_i log p(x_i)`` of a batch drawn with
replacement from a seeded generator. Quantised images (``levels`` set) are dequantised afresh every
batch, ``y = (k + u) / levels``, and reported in bits per dimension; vectors in nats.

Under ``torch.distributed`` (e.g. ``torchrun``) the flow is wrapped in ``DistributedDataParallel``:
every rank draws the same global batch of indices and processes its own shard ``rank::world``,
so the averaged gradient, and hence the run, equals a single-process run with the same global
batch and seed (up to float rounding; batch norm sees per-rank batches). Only rank 0 writes.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import checkpoint as ckpt
from .data import Dataset
from .distributions import Flow
from .images import bits_per_dim, dequantize

__all__ = ["History", "evaluate", "fit", "standardize"]

SCHEDULES = ("constant", "cosine")


@dataclass
class History:
    """What :func:`fit` did: per-step train NLL and learning rate, per-evaluation valid NLL (in ``unit``),
    the best evaluation, and how it ended (``status``: finished, early stopped, diverged)."""

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**d)


def standardize(flow: Flow, x: Tensor, columns: Sequence[str] | None = None) -> Flow:
    """Prepend :class:`~exactflow.transforms.standardize.Standardize` fitted to ``x`` (mean/std per feature),
    so the flow models standardised data while ``log_prob`` stays in ``x``'s original units.

    A constant column (std 0, floored at 1e-8) gets a ``UserWarning`` naming it (with its name from
    ``columns`` when given): its density becomes a spike, so the NLL runs to large negative values."""
    from .transforms.standardize import Standardize

    ref = _ref(flow)
    b = Standardize.fit(x).to(device=ref.device, dtype=ref.dtype)
    constant = [i for i, std in enumerate(x.detach().double().std(0).tolist()) if std == 0]
    if constant:
        names = ", ".join(f"{i} ({columns[i]!r})" if columns is not None else str(i) for i in constant)
        warnings.warn(f"standardizing constant column(s) {names}: a std of 0 is floored at 1e-8, so the NLL "
                      "runs to large negative values that say nothing about the other columns; drop the column(s)",
                      UserWarning, stacklevel=2)
    return ckpt.prepend(flow, "Standardize", bijection=b, features=x.shape[1])


def _ref(flow: torch.nn.Module) -> Tensor:
    """A floating parameter or buffer: the flow's device and dtype (a Flow's base always owns a buffer)."""
    for t in (*flow.parameters(), *flow.buffers()):
        if t.is_floating_point():
            return t
    raise ValueError(f"{type(flow).__name__} has no floating parameter or buffer to take a device and dtype from")


def _device(flow: torch.nn.Module) -> torch.device:
    return _ref(flow).device


def _dtype(flow: torch.nn.Module) -> torch.dtype:
    return _ref(flow).dtype


def _as_tensor(x: Tensor | np.ndarray, what: str) -> Tensor:
    """``x`` as a tensor (a numpy array is wrapped without a copy); a ``TypeError`` for anything else."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    return x


def _to_unit(nll: Tensor | float, shape: tuple[int, ...], levels: int | None) -> float:
    """A mean NLL in nats, or in bits/dim when ``levels`` is set."""
    if levels is None:
        return float(nll)
    return float(bits_per_dim(-torch.as_tensor(float(nll)), shape, levels))


@torch.no_grad()
def evaluate(flow: Flow, x: Tensor | np.ndarray, batch_size: int = 4096, levels: int | None = None,
             seed: int = 0) -> dict:
    """Mean NLL of the rows of ``x`` (a tensor or numpy array) in nats (eval mode, batches of ``batch_size``);
    for quantised images (``levels``) the data are dequantised with a fixed ``seed`` and bits/dim is added."""
    x = _as_tensor(x, "x")
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty data set")
    was_training = flow.training
    flow.eval()
    device, dtype = _device(flow), _dtype(flow)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for chunk in torch.split(x, batch_size):
        if levels is not None:
            chunk = dequantize(chunk, levels, generator=gen)
        total += float(flow.log_prob(chunk.to(device=device, dtype=dtype)).double().sum())
    flow.train(was_training)
    out = {"nll": -total / x.shape[0], "n": int(x.shape[0])}
    if levels is not None:
        out["bits_per_dim"] = _to_unit(out["nll"], tuple(x.shape[1:]), levels)
    return out


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _lr_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    if warmup and step <= warmup:
        return step / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return 1.0


def _snapshot(flow: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _finite(flow: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in flow.parameters())


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
        raise ValueError(f"the checkpoint's optimizer state does not match this flow: {err}") from None


def _progress(show: bool | None, total: int, initial: int):
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)


def fit(
    flow: Flow,
    train: Tensor | np.ndarray | Dataset,
    valid: Tensor | np.ndarray | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    schedule: str = "cosine",
    warmup: int = 0,
    clip_grad: float | None = 5.0,
    weight_decay: float = 0.0,
    patience: int | None = None,
    eval_every: int = 100,
    levels: int | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    info: dict | None = None,
    progress: bool | None = None,
    callback: Callable[[int, History], None] | None = None,
) -> History:
    """Fit ``flow`` to the rows of ``train`` by maximum likelihood with Adam; returns the :class:`History`.

    ``train`` is a tensor or numpy array ``(n, *event)`` or a :class:`~exactflow.data.Dataset` (then ``valid``
    and ``levels`` default to its validation split and levels). ``schedule`` is ``"cosine"`` (to zero at
    ``steps``) or ``"constant"``, after ``warmup`` linear steps; ``clip_grad`` caps the gradient norm.
    Every ``eval_every`` steps the valid NLL is computed; after ``patience`` evaluations without
    improvement training stops, and at the end the best weights are restored. A NaN/inf loss or
    gradient stops training with a warning naming the step; the flow goes back to the last good
    state and the checkpoint on disk (last good one, if one was written yet) is left untouched.

    With ``checkpoint=path`` (the flow needs a ``spec``, see :func:`exactflow.build`) the weights,
    optimizer, RNG states and history are written atomically every evaluation; ``resume=True``
    continues from that file exactly where it stopped. ``info`` is stored in it. ``progress``: a
    tqdm bar (None: only on a terminal). ``callback(step, history)`` runs after each evaluation.
    """
    if isinstance(train, Dataset):
        if valid is None:
            valid = train.valid if len(train.valid) else None
        if levels is None and train.kind == "image":
            levels = train.levels
        train = train.train
    train = _as_tensor(train, "train")
    if valid is not None:
        valid = _as_tensor(valid, "valid")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be a positive number of evaluations, got {patience}")
    if train.shape[0] == 0:
        raise ValueError("the training set is empty")
    if tuple(train.shape[1:]) != tuple(flow.event_shape):
        raise ValueError(f"training data have event shape {tuple(train.shape[1:])} but the flow expects "
                         f"{tuple(flow.event_shape)}")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and getattr(flow, "spec", None) is None:
        raise ValueError("fit(checkpoint=...) needs a flow built with exactflow.build(name, ...) so the checkpoint "
                         "can rebuild it without pickle")
    world, rank = _world()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes ({world})")
    device, dtype = _device(flow), _dtype(flow)
    shape = tuple(train.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay)
    history = History(unit="bits/dim" if levels is not None else "nats")
    best_state: dict[str, Tensor] | None = None
    bad_evals, start = 0, 0
    saved_step: int | None = None  # the step of the checkpoint on disk, once there is one of this run

    def batch() -> Tensor:
        idx = torch.randint(train.shape[0], (batch_size,), generator=gen)
        x = train[idx]
        if levels is not None:
            x = dequantize(x, levels, generator=gen)
        return x[rank::world].to(device=device, dtype=dtype)

    if resume and checkpoint is not None and checkpoint.is_file():
        header, tensors = ckpt.read(checkpoint)
        state = header["info"].get("training_state")
        if state is None:
            raise ValueError(f"{checkpoint}: holds no training state to resume from")
        ckpt.load_state(flow, tensors, where=str(checkpoint))
        _load_optimizer(opt, state["optimizer"], tensors)
        torch.set_rng_state(tensors["rng.torch"])
        gen.set_state(tensors["rng.batches"])
        history = History.from_dict(state["history"])
        bad_evals, start = state["bad_evals"], state["step"]
        saved_step = start
        if any(k.startswith("best.") for k in tensors):
            best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        if start > steps:
            raise ValueError(f"{checkpoint} is at step {start}, beyond steps={steps}")
        if history.status == "early stopped" or start == steps:  # nothing left: hand back the final (best) weights
            if best_state is not None:
                flow.load_state_dict(best_state)
            flow.eval()
            return history
        history.status = "running"
    else:
        flow.train()
        with torch.no_grad():  # data-dependent initialisation (ActNorm) on one global batch, the same on every rank
            idx = torch.randint(train.shape[0], (batch_size,), generator=torch.Generator().manual_seed(seed + 1))
            x0 = train[idx] if levels is None else dequantize(train[idx], levels, generator=gen)
            flow.log_prob(x0.to(device=device, dtype=dtype))

    model: torch.nn.Module = flow
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(flow, device_ids=[device.index] if device.type == "cuda" else None)

    good_state, good_step = _snapshot(flow), start

    def write(step: int) -> None:
        nonlocal saved_step
        if checkpoint is None or rank != 0:
            return
        opt_json, tensors = _optimizer_state(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batches"] = gen.get_state()
        if best_state is not None:
            tensors.update({"best." + k: v for k, v in best_state.items()})
        state = {"step": step, "bad_evals": bad_evals, "optimizer": opt_json, "history": history.to_dict()}
        ckpt.save(checkpoint, flow, info={**(info or {}), "training_state": state}, extra=tensors)
        saved_step = step

    def diverged(step: int, what: str) -> None:
        flow.load_state_dict(good_state)
        if checkpoint is None or rank != 0:
            kept = ""
        elif saved_step is None:
            kept = "; no checkpoint was written"
        else:
            kept = f"; the last good checkpoint (step {saved_step}) is kept in {checkpoint}"
        history.status = "diverged"
        history.message = f"training diverged at step {step} ({what}); the flow is back at step {good_step}{kept}"

    bar = _progress(progress if rank == 0 else False, steps, start)
    began = time.perf_counter()
    step = start
    try:
        for step in range(start + 1, steps + 1):
            flow.train()
            factor = _lr_factor(schedule, step, steps, warmup)
            for group in opt.param_groups:
                group["lr"] = lr * factor
            loss = -model(batch()).mean()
            value = loss.detach().clone()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(value)
                value /= world
            value = float(value)
            if not math.isfinite(value):
                diverged(step, f"loss = {value}")
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), clip_grad)
                if not math.isfinite(float(norm)):
                    diverged(step, f"gradient norm = {float(norm)}")
                    break
            opt.step()
            if not _finite(flow):
                diverged(step, "non-finite parameters after the update")
                break
            history.step.append(step)
            history.train.append(_to_unit(value, shape, levels))
            history.lr.append(lr * factor)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix_str(f"NLL {history.train[-1]:.3f} {history.unit}")
            if step % eval_every == 0 or step == steps:
                stop = False
                if valid is not None:
                    result = evaluate(flow, valid, levels=levels, seed=seed)
                    score = result.get("bits_per_dim", result["nll"])
                    if world > 1:  # every rank takes rank 0's number, so all make the same early-stopping call
                        import torch.distributed as dist

                        shared = torch.tensor([score], dtype=torch.float64, device=device)
                        dist.broadcast(shared, 0)
                        score = float(shared)
                    history.valid_step.append(step)
                    history.valid.append(score)
                    if history.best_valid is None or score < history.best_valid:
                        history.best_valid, history.best_step, bad_evals = score, step, 0
                        best_state = _snapshot(flow)
                    else:
                        bad_evals += 1
                        stop = patience is not None and bad_evals >= patience
                    if bar is not None:
                        bar.set_postfix_str(f"NLL {history.train[-1]:.3f} valid {score:.3f} {history.unit}")
                if stop:
                    history.status = "early stopped"
                    history.message = (f"early stopped at step {step}: no improvement of the valid NLL in "
                                       f"{patience} evaluations (best {history.best_valid:.4f} at step "
                                       f"{history.best_step})")
                elif step == steps:
                    history.status = "finished"
                history.seconds += time.perf_counter() - began
                began = time.perf_counter()
                write(step)
                good_state, good_step = _snapshot(flow), step
                if callback is not None and rank == 0:
                    callback(step, history)
                if stop:
                    break
    finally:
        if bar is not None:
            bar.close()
    if history.status == "diverged":
        history.seconds += time.perf_counter() - began
        warnings.warn(history.message, RuntimeWarning, stacklevel=2)
    elif best_state is not None:
        flow.load_state_dict(best_state)
    flow.eval()
    return history
