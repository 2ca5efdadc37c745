"""Training objectives for `exactflow.fit`: what one step minimises and what validation scores.

An objective knows its data (or its target), draws a batch, computes the loss to minimise and a
validation score (lower is better, used for early stopping and best-weight restore). The loop in
`exactflow.training` does everything else (optimiser, schedule, clipping, EMA, checkpoints,
divergence), so every objective gets the same training:

- `MaximumLikelihood`: ``-(1/B) sum_i log p(x_i | c_i)`` on rows of data (with optional context
  ``c``); quantised images (``levels``) are dequantised afresh every batch and reported in bits/dim.
- `FlowMatching`: conditional flow matching for a `CNF`
  (straight path, no ODE solve); validated by the same loss on the validation rows with a fixed seed.
- `ReverseKL`: ``E_q[log q(x) - beta log p~(x)]`` for an unnormalised target ``p~`` (no data);
  validated by ``-ELBO`` on a fixed set of draws.
- `ELBO`: the negative one-sample ELBO of a `VAE` on rows of data.

A batch is drawn by ``batch(generator, size, step, shard)``: ``size`` rows of the global batch, of which
this process keeps ``shard = (rank, world)``, i.e. rows ``rank::world``; every process draws the same
indices, so N processes reproduce one process with the same global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from .data import Dataset
from .images import bits_per_dim, dequantize

__all__ = ["ELBO", "OBJECTIVES", "FlowMatching", "MaximumLikelihood", "Objective", "ReverseKL", "make_objective"]

Data = Tensor | np.ndarray
Pair = tuple[Tensor, Tensor | None]


@runtime_checkable
class Objective(Protocol):
    """What `exactflow.fit` needs from an objective.

    ``name``: for messages (``"likelihood"``); ``label``: what the loss is (``"NLL"``); ``unit``: of the reported
    numbers. ``check(model)`` raises ``ValueError`` if the model does not fit the objective. ``initialize(model,
    size)`` runs once before training (data-dependent initialisation such as ActNorm, on ``size`` rows).
    ``batch`` draws a training batch, ``loss(model, batch)`` is the scalar to minimise, ``report(value)`` turns a
    loss into the unit reported, and ``score(model)`` is the validation score (lower is better; None when there is
    nothing to validate on).
    """

    name: str
    label: str
    unit: str

    def check(self, model: nn.Module) -> None: ...

    def initialize(self, model: nn.Module, size: int) -> None: ...

    def batch(self, generator: torch.Generator, size: int, step: int, shard: tuple[int, int] = (0, 1)) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...

    def report(self, value: float) -> float: ...

    def score(self, model: nn.Module) -> float | None: ...


def as_tensor(x: Data, what: str) -> Tensor:
    """``x`` as a tensor (a numpy array is wrapped without a copy); a ``TypeError`` for anything else."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    return x


def as_pair(data: Data | tuple | None, what: str) -> Pair | None:
    """``x`` or a tuple ``(x, context)`` as a pair of tensors with matching rows (None stays None)."""
    if data is None:
        return None
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"{what} must be x or a pair (x, context), got a tuple of {len(data)}")
        x, c = as_tensor(data[0], what), as_tensor(data[1], f"{what} context")
        if c.dim() != 2 or c.shape[0] != x.shape[0]:
            raise ValueError(f"{what}: context has shape {tuple(c.shape)}, expected ({x.shape[0]}, features): "
                             "one row of context per row of x")
        return x, c
    return as_tensor(data, what), None


def reference(model: nn.Module) -> Tensor:
    """A floating parameter or buffer of ``model``: its device and dtype."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t
    raise ValueError(f"{type(model).__name__} has no floating parameter or buffer to take a device and dtype from")


class DataObjective:
    """Shared by the objectives on rows of data ``x`` (and optional context ``c``): batches and validation.

    ``train``/``valid``: tensors or numpy arrays, or pairs ``(x, context)``; a `Dataset`
    as ``train`` gives both (and its context part and levels). ``levels``: dequantise image levels every batch.
    """

    name = "data"
    label = "loss"

    def __init__(self, train: Data | tuple | Dataset, valid: Data | tuple | None = None, levels: int | None = None,
                 seed: int = 0, eval_batch: int = 4096) -> None:
        if isinstance(train, Dataset):
            ctx = train.context
            if valid is None and len(train.valid):
                valid = (train.valid, ctx[1]) if ctx is not None else train.valid
            if levels is None and train.kind == "image":
                levels = train.levels
            train = (train.train, ctx[0]) if ctx is not None else train.train
        self.train = as_pair(train, "train")
        self.valid = as_pair(valid, "valid")
        if self.train[0].shape[0] == 0:
            raise ValueError("the training set is empty")
        if self.valid is not None and self.valid[0].shape[0] == 0:
            self.valid = None
        if (self.valid is not None) and ((self.valid[1] is None) != (self.train[1] is None)):
            raise ValueError("train and valid must both have a context or both have none")
        self.levels, self.seed, self.eval_batch = levels, seed, eval_batch
        self.unit = "bits/dim" if levels is not None else "nats"

    @property
    def context_features(self) -> int:
        c = self.train[1]
        return 0 if c is None else int(c.shape[1])

    def check(self, model: nn.Module) -> None:
        shape = tuple(self.train[0].shape[1:])
        expected = tuple(getattr(model, "event_shape", shape))
        if shape != expected:
            raise ValueError(f"training data have event shape {shape} but the {type(model).__name__} expects "
                             f"{expected}")
        wanted = getattr(model, "context_features", self.context_features)
        if wanted != self.context_features:
            raise ValueError(f"the model takes {wanted} context features but the data give {self.context_features} "
                             "(pass train=(x, context) for a conditional flow)")

    def batch(self, generator: torch.Generator, size: int, step: int, shard: tuple[int, int] = (0, 1)) -> Any:
        """Rows drawn with replacement (the same indices on every process), this process's share kept, on the
        CPU (`loss` moves them to the model's device and dtype)."""
        idx = torch.randint(self.train[0].shape[0], (size,), generator=generator)
        x, c = self.train[0][idx], None if self.train[1] is None else self.train[1][idx]
        if self.levels is not None:
            x = dequantize(x, self.levels, generator=generator)
        rank, world = shard
        return x[rank::world], None if c is None else c[rank::world]

    def _moved(self, model: nn.Module, batch: Pair) -> Pair:
        ref = reference(model)
        x, c = batch
        return x.to(device=ref.device, dtype=ref.dtype), None if c is None else c.to(device=ref.device, dtype=ref.dtype)

    def initialize(self, model: nn.Module, size: int) -> None:
        """One pass in train mode on a fixed batch of ``size`` rows (data-dependent initialisation such as ActNorm),
        the same on every process."""
        with torch.no_grad():
            self.loss(model, self.batch(torch.Generator().manual_seed(self.seed + 1), size, 0))

    def report(self, value: float) -> float:
        if self.levels is None:
            return float(value)
        return float(bits_per_dim(-torch.as_tensor(float(value)), tuple(self.train[0].shape[1:]), self.levels))

    @torch.no_grad()
    def score(self, model: nn.Module) -> float | None:
        """The mean loss over the validation rows (eval mode; a fixed seed for dequantisation and noise)."""
        if self.valid is None:
            return None
        was_training = model.training
        model.eval()
        total, n = 0.0, self.valid[0].shape[0]
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            torch.manual_seed(self.seed)
            for start in range(0, n, self.eval_batch):
                idx = torch.arange(start, min(n, start + self.eval_batch))
                x, c = self.valid[0][idx], None if self.valid[1] is None else self.valid[1][idx]
                if self.levels is not None:
                    x = dequantize(x, self.levels, generator=gen)
                total += float(self.loss(model, (x, c))) * len(idx)
        model.train(was_training)
        return self.report(total / n)


def _cuda_devices(model: nn.Module) -> list[int]:
    ref = reference(model)
    return [ref.device.index or 0] if ref.device.type == "cuda" else []


class MaximumLikelihood(DataObjective):
    """Maximum likelihood: minimise ``-(1/B) sum_i log p(x_i | c_i)``; validation is the mean NLL."""

    name = "likelihood"
    label = "NLL"

    def loss(self, model: nn.Module, batch: Pair) -> Tensor:
        x, c = self._moved(model, batch)
        return -(model(x) if c is None else model(x, c)).mean()


class FlowMatching(DataObjective):
    """Conditional flow matching for a CNF flow (see `flow_matching_loss`);
    the validation score is the same loss on the validation rows with fixed noise (not an NLL).

    ``coupling``: ``"independent"`` (default) or ``"ot"`` (noise and data paired within each batch by an exact
    optimal transport plan; needs POT). ``fit(flow, objective=FlowMatching(data, coupling="ot"))``. With several
    processes each one pairs within its own share of the batch, so "ot" runs differ from one process's run.
    """

    name = "flow-matching"
    label = "FM loss"

    def __init__(self, *args: Any, coupling: str = "independent", **kwargs: Any) -> None:
        from .transforms.continuous import COUPLINGS

        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
        super().__init__(*args, **kwargs)
        self.unit = "FM loss"
        self.coupling = coupling

    def check(self, model: nn.Module) -> None:
        from .transforms.continuous import CNF

        if not isinstance(getattr(model, "transform", None), CNF):
            raise ValueError("the flow-matching objective needs a Flow whose transform is a CNF (e.g. --flow CNF)")
        super().check(model)

    def initialize(self, model: nn.Module, size: int) -> None:
        """Nothing to initialise from data (a CNF has no data-dependent layers)."""

    def loss(self, model: nn.Module, batch: Pair) -> Tensor:
        from .transforms.continuous import flow_matching_loss

        x, c = self._moved(model, batch)
        return flow_matching_loss(model, x, c, coupling=self.coupling)

    def report(self, value: float) -> float:
        return float(value)


class ELBO(DataObjective):
    """A VAE's negative one-sample ELBO ``-(1/B) sum_i elbo(x_i)`` (nats per example); validated on the
    validation rows with a fixed seed."""

    name = "elbo"
    label = "-ELBO"

    def check(self, model: nn.Module) -> None:
        if not callable(getattr(model, "elbo", None)):
            raise ValueError(f"the elbo objective needs a VAE (a model with .elbo(x)), got {type(model).__name__}")
        model.check_data(self.train[0])
        if self.train[1] is not None:
            raise ValueError("the elbo objective takes no context")

    def initialize(self, model: nn.Module, size: int) -> None:
        """Nothing to initialise from data."""

    def loss(self, model: nn.Module, batch: Pair) -> Tensor:
        x, _ = self._moved(model, batch)
        return -model.elbo(x).mean()


class ReverseKL:
    """Reverse KL to an unnormalised density ``p~ = exp(log_target)``: minimise ``E_q[log q - beta log p~]`` over
    reparameterised draws of the flow ``q`` (``KL(q || p) - log Z`` at ``beta = 1``, i.e. ``-ELBO``).

    ``beta`` rises linearly from 0.01 to 1 over the first ``anneal`` steps (0: always 1; Rezende & Mohamed 2015).
    ``valid_samples`` draws (fixed seed) give the validation score ``-ELBO``; 0 turns validation off.
    """

    name = "reverse-kl"
    label = "-ELBO"
    unit = "nats"

    def __init__(self, log_target: Callable[[Tensor], Tensor], anneal: int = 0, valid_samples: int = 2048,
                 seed: int = 0) -> None:
        if not callable(log_target):
            raise TypeError(f"log_target must be callable (x -> log p~(x)), got {type(log_target).__name__}")
        if anneal < 0 or valid_samples < 0:
            raise ValueError(f"need anneal >= 0 and valid_samples >= 0, got {anneal} and {valid_samples}")
        self.log_target, self.anneal, self.valid_samples, self.seed = log_target, anneal, valid_samples, seed

    def check(self, model: nn.Module) -> None:
        if getattr(model, "context_features", 0):
            raise ValueError("the reverse-KL objective needs an unconditional flow (context=0)")
        if not callable(getattr(model, "sample_and_log_prob", None)):
            raise ValueError(f"the reverse-KL objective needs a Flow, got {type(model).__name__}")

    def initialize(self, model: nn.Module, size: int) -> None:
        """Nothing to initialise from data."""

    def batch(self, generator: torch.Generator, size: int, step: int, shard: tuple[int, int] = (0, 1)) -> Any:
        """``(draws for this process, beta)``: the draws come from the global RNG inside `loss`."""
        rank, world = shard
        beta = min(1.0, 0.01 + (step - 1) / self.anneal) if self.anneal else 1.0
        return len(range(rank, size, world)), beta

    def log_weights(self, model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
        """``n`` draws of q: ``(log p~(x), log q(x))``, shape ``(n,)`` each."""
        x, log_q = model.sample_and_log_prob(n)
        log_p = self.log_target(x)
        if not isinstance(log_p, Tensor) or log_p.shape != (n,):
            got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
            raise ValueError(f"log_target must map x of shape ({n}, ...) to a tensor of shape ({n},), got {got}")
        return log_p, log_q

    def loss(self, model: nn.Module, batch: tuple[int, float]) -> Tensor:
        n, beta = batch
        log_p, log_q = self.log_weights(model, n)
        return (log_q - beta * log_p).mean()

    def report(self, value: float) -> float:
        return float(value)

    @torch.no_grad()
    def score(self, model: nn.Module) -> float | None:
        """``-ELBO`` on ``valid_samples`` draws with a fixed seed (the global RNG is left as it was)."""
        if not self.valid_samples:
            return None
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            torch.manual_seed(self.seed)
            log_p, log_q = self.log_weights(model, self.valid_samples)
        model.train(was_training)
        value = float((log_q - log_p).double().mean())
        return value if not math.isnan(value) else math.inf


OBJECTIVES = ("likelihood", "flow-matching", "reverse-kl", "elbo")


def make_objective(name: str, train: Any, valid: Any = None, levels: int | None = None, seed: int = 0,
                   **options: Any) -> Objective:
    """The objective ``name`` (one of `OBJECTIVES`) on ``train``: data (or ``(x, context)``, or a
    `Dataset`), or for ``"reverse-kl"`` the target's log density."""
    if name == "reverse-kl":
        if valid is not None:
            raise ValueError("the reverse-KL objective has no validation data (it validates on draws of q)")
        return ReverseKL(train, seed=seed, **options)
    classes = {"likelihood": MaximumLikelihood, "flow-matching": FlowMatching, "elbo": ELBO}
    if name not in classes:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return classes[name](train, valid, levels=levels, seed=seed, **options)
