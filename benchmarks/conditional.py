"""Conditional density estimation at equal CPU time: exactflow's conditional NSF and MAF against zuko's and nflows'.

Four tasks whose true conditional density p(x | c) is known in closed form, sampled exactly (the first three
chose exactflow's conditional default, ``benchmarks/conditional_sweep.py``; ``hetero-t`` was held out):

- ``linear-gaussian``: x in R^2 given c in R^3, ``x = A u + b + L eps`` with ``u`` the context rescaled to
  [-1, 1]; the context is drawn on the simulator's own scales (uniform on [-1, 1], [0, 10] and [-20, 20]).
- ``mixture``: x in R^2 given c in R^2 (uniform on [0, 5] x [-3, 3]), four Gaussians (std 0.35) at the corners
  of a square, their weights ``softmax(2 (u1, -u1, u2, -u2))`` following the context.
- ``two-moons``: the simulator of the SBI two-moons benchmark (Greenberg et al. 2019): ``theta ~ U(-1, 1)^2``,
  ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``, ``x = (r cos a + 0.25, r sin a) + (-|t1 + t2|, -t1 + t2)/sqrt 2``;
  a crescent whose place depends on theta, with density ``N(r; 0.1, 0.01^2) / (pi r)`` (r the distance to the
  crescent's centre, on its right half).
- ``hetero-t``: x in R^2 given c in R^2 (uniform on [-2, 2] x [0, 4]), heavy-tailed and heteroscedastic:
  ``x = m(u) + R diag(s(u)) t`` with ``u`` the context rescaled to [-1, 1], ``t`` two independent Student-t(3)
  draws, ``m(u) = (sin 2 u1 + u2 / 2, u1 u2)``, ``s(u) = (0.3 exp(u2 / 2), 0.2 + 0.4 u1^2)`` and ``R`` a
  rotation by 30 degrees.

Score: the expected NLL gap to the truth, ``mean over test pairs of log p(x | c) - log q(x | c)`` (nats, >= 0 in
expectation: the conditional KL averaged over c), on 4096 fresh test pairs, mean and standard error over seeds.

Every model trains on the same simulations (``--train`` pairs per seed), the same mini-batches (256) and
optimiser (Adam, lr 1e-3), for the same CPU time (``time.thread_time()``, one torch thread, all models of a
seed and task interleaved in one process), and has the same size: 3 layers, hidden (64, 64), 8 bins on [-5, 5]
for the splines. Each library is used as its documentation shows: zuko's ``NSF``/``MAF(features, context)``
and nflows' conditional transforms take the context as the simulator gives it; exactflow's presets use their
defaults, which standardise the context inside the flow (fitted on the training context, as ``exactflow.fit``
does; its cost is inside the budget). ``exactflow NSF (raw context)`` turns that off, to show what it buys.
``exactflow auto`` is the recommended use instead: ``exactflow.build("auto", features=D, context=C)`` trained by
``exactflow.fit`` with its own recipe (`fit_recommended`: the last tenth of the training pairs validates, the
best validation weights of the EMA are kept), for the same CPU time.
Models: exactflow ``NSF`` (coupling, LU mixing) and ``MAF``; zuko ``NSF`` (autoregressive splines) and ``MAF``;
nflows spline couplings (alternating masks, LU mixing, residual conditioner of one block) and MAF (reversal
between layers, residual MADE).

Speed: training steps per CPU-second, and the CPU time to draw 100 samples for each of 100 contexts (batched in
every library), each as a ratio to exactflow's NSF or MAF of the same kind.

    python benchmarks/conditional.py --budget 10 --seeds 0 1 2 --out benchmarks/results/conditional.jsonl  # docs
    python benchmarks/conditional.py --budget 0.3 --seeds 0 --tasks mixture --train 512   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import exactflow

TEST = 4096
LAYERS, HIDDEN, BINS, BOUND = 3, (64, 64), 8, 5.0


# ----------------------------------------------------------------------------------------------- tasks

class Task:
    """A simulator: contexts ``prior(n, generator)``, draws ``given(c, generator)`` of x given each row of ``c``,
    and the true density ``log_prob(x, c)``."""

    def __init__(self, name: str, features: int, context: int, prior: Callable, given: Callable,
                 log_prob: Callable) -> None:
        self.name, self.features, self.context = name, features, context
        self.prior, self.given, self.log_prob = prior, given, log_prob

    def simulate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` pairs ``(x, c)`` from the joint: c from the prior, then x given c."""
        c = self.prior(n, generator)
        return self.given(c, generator), c


def _linear_gaussian() -> Task:
    low, high = torch.tensor([-1.0, 0.0, -20.0]), torch.tensor([1.0, 10.0, 20.0])
    a = torch.tensor([[2.0, -1.0, 0.5], [0.5, 1.5, -2.0]])
    b = torch.tensor([1.0, -0.5])
    chol = torch.tensor([[0.5, 0.0], [0.3, 0.2]])

    def mean(c: Tensor) -> Tensor:
        return (2 * (c - low) / (high - low) - 1) @ a.T + b

    def prior(n: int, g: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand(n, 3, generator=g)

    def given(c: Tensor, g: torch.Generator) -> Tensor:
        return mean(c) + torch.randn(len(c), 2, generator=g) @ chol.T

    def log_prob(x: Tensor, c: Tensor) -> Tensor:
        return torch.distributions.MultivariateNormal(mean(c), scale_tril=chol).log_prob(x)

    return Task("linear-gaussian", 2, 3, prior, given, log_prob)


def _mixture() -> Task:
    low, high = torch.tensor([0.0, -3.0]), torch.tensor([5.0, 3.0])
    means = torch.tensor([[1.5, 1.5], [-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5]])
    std = 0.35

    def logits(c: Tensor) -> Tensor:
        u = 2 * (c - low) / (high - low) - 1
        return 2 * torch.stack([u[:, 0], -u[:, 0], u[:, 1], -u[:, 1]], dim=1)

    def prior(n: int, g: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand(n, 2, generator=g)

    def given(c: Tensor, g: torch.Generator) -> Tensor:
        k = torch.multinomial(torch.softmax(logits(c), 1), 1, generator=g).squeeze(1)
        return means[k] + std * torch.randn(len(c), 2, generator=g)

    def log_prob(x: Tensor, c: Tensor) -> Tensor:
        comp = torch.distributions.Normal(means, std).log_prob(x[:, None, :]).sum(-1)  # (n, K)
        return torch.logsumexp(torch.log_softmax(logits(c), 1) + comp, dim=1)

    return Task("mixture", 2, 2, prior, given, log_prob)


def _two_moons() -> Task:
    def shift(theta: Tensor) -> Tensor:
        s = math.sqrt(2)
        return torch.stack([-(theta[:, 0] + theta[:, 1]).abs() / s, (theta[:, 1] - theta[:, 0]) / s], dim=1)

    def prior(n: int, g: torch.Generator) -> Tensor:
        return 2 * torch.rand(n, 2, generator=g) - 1

    def given(theta: Tensor, g: torch.Generator) -> Tensor:
        n = len(theta)
        a = math.pi * (torch.rand(n, generator=g) - 0.5)
        r = 0.1 + 0.01 * torch.randn(n, generator=g)
        p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=1)
        return p + shift(theta)

    def log_prob(x: Tensor, theta: Tensor) -> Tensor:
        u = x - shift(theta) - torch.tensor([0.25, 0.0])
        r = u.norm(dim=1)
        lp = torch.distributions.Normal(0.1, 0.01).log_prob(r) - math.log(math.pi) - torch.log(r)
        return torch.where(u[:, 0] > 0, lp, torch.full_like(lp, -math.inf))

    return Task("two-moons", 2, 2, prior, given, log_prob)


def _hetero_t() -> Task:
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 4.0])
    angle = math.pi / 6
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    noise = torch.distributions.StudentT(3.0)

    def loc_scale(c: Tensor) -> tuple[Tensor, Tensor]:
        u = 2 * (c - low) / (high - low) - 1
        loc = torch.stack([torch.sin(2 * u[:, 0]) + 0.5 * u[:, 1], u[:, 0] * u[:, 1]], dim=1)
        scale = torch.stack([0.3 * torch.exp(0.5 * u[:, 1]), 0.2 + 0.4 * u[:, 0] ** 2], dim=1)
        return loc, scale

    def prior(n: int, g: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand(n, 2, generator=g)

    def given(c: Tensor, g: torch.Generator) -> Tensor:
        loc, scale = loc_scale(c)
        # Student-t(3) = N(0, 1) / sqrt(chi2_3 / 3), drawn from the generator
        t = torch.randn(len(c), 2, generator=g) / torch.sqrt(torch.randn(len(c), 2, 3, generator=g).pow(2).mean(2))
        return loc + (scale * t) @ rotation.T

    def log_prob(x: Tensor, c: Tensor) -> Tensor:
        loc, scale = loc_scale(c)
        t = ((x - loc) @ rotation) / scale
        return (noise.log_prob(t) - torch.log(scale)).sum(1)

    return Task("hetero-t", 2, 2, prior, given, log_prob)


TASKS = {t.name: t for t in (_linear_gaussian(), _mixture(), _two_moons(), _hetero_t())}
#: Tasks never used to choose exactflow's conditional default (`exactflow.flows.auto`); the others tuned it.
HELD_OUT = ("hetero-t",)


# ---------------------------------------------------------------------------------------------- models

class Model:
    """``log_prob(x, c) -> (n,)`` and ``sample(n, C) -> (n, m, d)`` over a library's flow. ``fit(x, c, budget,
    seed) -> steps``, when given, trains it instead of the shared loop of `train` (exactflow's recommended use)."""

    def __init__(self, module: nn.Module, log_prob: Callable, sample: Callable, prepare: Callable | None = None,
                 fit: Callable[[Tensor, Tensor, float, int], int] | None = None):
        self.module, self.log_prob, self.sample = module, log_prob, sample
        self.prepare = prepare or (lambda c: None)
        self.fit = fit


def _exactflow(name: str, **options: object) -> Callable[[Task], Model]:
    def make(task: Task) -> Model:
        extra = {"bins": BINS, "bound": BOUND} if name == "NSF" else {}
        flow = exactflow.build(name, features=task.features, context=task.context, depth=LAYERS, hidden=HIDDEN,
                               **extra, **options)
        prepare = flow.fit_context if flow.standardizes_context else None
        return Model(flow, flow.log_prob, flow.sample, prepare)

    return make


def fit_recommended(flow: nn.Module, x: Tensor, c: Tensor, budget: float, seed: int, **recipe: object) -> int:
    """``exactflow.fit`` as its documentation recommends, within ``budget`` CPU-seconds: the last tenth of the
    training pairs is the validation split (the best validation weights are restored), every setting not in
    ``recipe`` is the flow's own recipe (the measured one for ``"auto"``); returns the number of steps."""
    n = len(x) - len(x) // 10
    history = exactflow.fit(flow, (x[:n], c[:n]), (x[n:], c[n:]), steps=10**9, seed=seed, progress=False,
                            time_budget=budget, clock=time.thread_time, **recipe)
    return history.step[-1] if history.step else 0


def _exactflow_auto(task: Task) -> Model:
    flow = exactflow.build("auto", features=task.features, context=task.context)
    return Model(flow, flow.log_prob, flow.sample, fit=lambda x, c, budget, seed: fit_recommended(flow, x, c,
                                                                                                   budget, seed))


def _zuko(name: str) -> Callable[[Task], Model]:
    def make(task: Task) -> Model:
        import zuko

        if name == "NSF":
            flow = zuko.flows.NSF(task.features, task.context, transforms=LAYERS, hidden_features=HIDDEN, bins=BINS)
        else:
            flow = zuko.flows.MAF(task.features, task.context, transforms=LAYERS, hidden_features=HIDDEN)
        return Model(flow, lambda x, c: flow(c).log_prob(x), lambda n, c: flow(c).sample((n,)))

    return make


def _nflows(name: str) -> Callable[[Task], Model]:
    def make(task: Task) -> Model:
        from nflows import transforms as T
        from nflows.distributions import StandardNormal
        from nflows.flows import Flow
        from nflows.nn.nets import ResidualNet
        from nflows.utils import torchutils

        d, c = task.features, task.context
        layers: list[nn.Module] = []
        for i in range(LAYERS):
            if name == "NSF":
                if i:
                    layers.append(T.LULinear(d))
                layers.append(T.PiecewiseRationalQuadraticCouplingTransform(
                    mask=torchutils.create_alternating_binary_mask(d, even=i % 2 == 0),
                    transform_net_create_fn=lambda n_in, n_out: ResidualNet(n_in, n_out, HIDDEN[0], c, num_blocks=1),
                    num_bins=BINS, tails="linear", tail_bound=BOUND))
            else:
                if i:
                    layers.append(T.ReversePermutation(d))
                layers.append(T.MaskedAffineAutoregressiveTransform(d, HIDDEN[0], c, num_blocks=1))
        flow = Flow(T.CompositeTransform(layers), StandardNormal([d]))
        # nflows draws (m contexts, n, d); transposed to the (n, m, d) of the others
        return Model(flow, lambda x, ctx: flow.log_prob(x, ctx), lambda n, ctx: flow.sample(n, ctx).transpose(0, 1))

    return make


MODELS: dict[str, Callable[[Task], Model]] = {
    "exactflow auto": _exactflow_auto,
    "exactflow NSF": _exactflow("NSF"),
    "exactflow NSF (raw context)": _exactflow("NSF", standardize_context=False),
    "exactflow MAF": _exactflow("MAF"),
    "zuko NSF": _zuko("NSF"),
    "zuko MAF": _zuko("MAF"),
    "nflows NSF": _nflows("NSF"),
    "nflows MAF": _nflows("MAF"),
}


# ------------------------------------------------------------------------------------------ measuring

def train(model: Model, x: Tensor, c: Tensor, budget: float, seed: int, batch: int = 256) -> tuple[int, float]:
    """Adam (lr 1e-3) on mini-batches until ``budget`` CPU-seconds of this thread are spent (or the model's own
    ``fit`` for that budget); (steps, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    start = time.thread_time()
    if model.fit is not None:
        steps = model.fit(x, c, budget, seed)
        model.module.eval()
        return steps, time.thread_time() - start
    model.prepare(c)
    opt = torch.optim.Adam(model.module.parameters(), lr=1e-3)
    model.module.train()
    steps = 0
    while time.thread_time() - start < budget:
        idx = torch.randint(len(x), (batch,), generator=gen)
        loss = -model.log_prob(x[idx], c[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    model.module.eval()
    return steps, time.thread_time() - start


@torch.no_grad()
def gap(model: Model, task: Task, x: Tensor, c: Tensor) -> float:
    """mean(log p(x | c) - log q(x | c)) over the test pairs (nats)."""
    q = torch.cat([model.log_prob(xb, cb) for xb, cb in zip(x.split(1024), c.split(1024), strict=True)])
    return float((task.log_prob(x, c) - q).mean())


@torch.no_grad()
def sampling_time(model: Model, c: Tensor, n: int = 100, repeats: int = 3) -> float:
    """Median CPU-seconds to draw ``n`` samples for each context row of ``c`` in one batched call."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        s = model.sample(n, c)
        times.append(time.thread_time() - start)
        assert s.shape == (n, c.shape[0], 2), s.shape
    return statistics.median(times)


def _mean_se(values: list[float]) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.3f}"
    return f"{m:.3f} ± {statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=8.0, help="CPU-seconds of training per model")
    parser.add_argument("--train", type=int, default=10000, help="simulated training pairs per seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON lines of the runs: each run is appended, and runs already there are reused")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    done: dict[str, dict] = {}
    if args.out is not None and args.out.exists():
        for line in args.out.read_text().splitlines():
            run = json.loads(line)
            done[json.dumps(run["key"])] = run
    warm = TASKS[args.tasks[0]].simulate(512, torch.Generator().manual_seed(0))
    for name in args.models:  # first calls (allocations, lazy imports) outside every measurement
        train(MODELS[name](TASKS[args.tasks[0]]), *warm, budget=0.05, seed=0)
    gaps: dict[tuple[str, str], list[float]] = {}
    speed: dict[tuple[str, str], list[float]] = {}
    draw: dict[tuple[str, str], list[float]] = {}
    for seed in args.seeds:
        for task_name in args.tasks:
            task = TASKS[task_name]
            g = torch.Generator().manual_seed(1000 + seed)
            x, c = task.simulate(args.train, g)
            xt, ct = task.simulate(TEST, g)
            order = args.models[seed % len(args.models):] + args.models[: seed % len(args.models)]
            for name in order:  # interleaved, the starting model rotating with the seed
                key = [name, task_name, seed, args.budget, args.train]
                run = done.get(json.dumps(key))
                if run is None:
                    torch.manual_seed(seed)
                    model = MODELS[name](task)
                    steps, seconds = train(model, x, c, args.budget, seed)
                    run = {"key": key, "gap": gap(model, task, xt, ct), "steps": steps, "seconds": seconds,
                           "draw": sampling_time(model, ct[:100])}
                    if args.out is not None:
                        with args.out.open("a") as f:
                            f.write(json.dumps(run) + "\n")
                gaps.setdefault((task_name, name), []).append(run["gap"])
                speed.setdefault((task_name, name), []).append(run["steps"] / run["seconds"])
                draw.setdefault((task_name, name), []).append(run["draw"])
                print(f"seed {seed} {task_name:16s} {name:28s} gap {run['gap']:8.4f}  {run['steps']:5d} steps "
                      f"({run['steps'] / run['seconds']:6.1f}/s)  sample 100x100 {1e3 * run['draw']:7.1f} ms",
                      flush=True)

    header = ("| model | " + " | ".join(args.tasks)
              + " | train steps/s (x exactflow) | sample 100 x 100 ms (x exactflow) |")
    lines = [header, "|---" * (len(args.tasks) + 3) + "|"]
    for name in args.models:
        cells = [_mean_se(gaps[(t, name)]) for t in args.tasks]
        ref = "exactflow " + ("NSF" if "NSF" in name or name == "exactflow auto" else "MAF")
        ref = ref if ref in args.models else name
        rate = statistics.fmean(statistics.fmean(speed[(t, name)]) for t in args.tasks)
        rate_ref = statistics.fmean(statistics.fmean(speed[(t, ref)]) for t in args.tasks)
        ms = statistics.fmean(statistics.fmean(draw[(t, name)]) for t in args.tasks)
        ms_ref = statistics.fmean(statistics.fmean(draw[(t, ref)]) for t in args.tasks)
        cells.append(f"{rate:.0f} ({rate / rate_ref:.2f})")
        cells.append(f"{1e3 * ms:.1f} ({ms / ms_ref:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
