"""Equal-time density estimation: each library as its documentation recommends, against exactflow's defaults.

Every run gets the same CPU-time budget for training, measured with ``time.thread_time()`` (this thread's
CPU time, so other processes on the machine do not change the result), one torch thread, the same
standardised data (`benchmarks.tasks`) and a seed; the libraries take turns within one process (for each
seed and task, every library in a rotating order). Then the test NLL (nats) is measured, and for tasks with a
known density the distance to the truth, test NLL minus the Monte Carlo entropy of the test rows.

- exactflow: ``exactflow.build("auto", features=D)`` trained by ``exactflow.fit(flow, train, valid,
  time_budget=B, clock=time.thread_time)`` with the recipe the flow carries (its validation split picks the
  best weights, as `fit` does by default).
- zuko: its README's flow, ``zuko.flows.NSF(D, transforms=3, hidden_features=[128] * 3)``, Adam at lr 1e-3
  (batch 256: the README leaves the batch to the user's loader).
- nflows: the flow of its README and moons example: 5 x (``ReversePermutation``,
  ``MaskedAffineAutoregressiveTransform(features=D, hidden_features=4)``), Adam at its default lr 1e-3, batch 128.
- normflows: its README's Real NVP: 32 x (``AffineCouplingBlock(MLP([D/2, 64, 64, D], init_zeros=True))``,
  ``Permute(D, mode="swap")``) on ``DiagGaussian(D)``, Adam at lr 5e-4 with weight decay 1e-5 and batch 512 (its
  example notebooks).

The peers' recipes use no validation split; they train until the budget is spent and keep the last weights.

    python benchmarks/equal_time.py --budget 30 --seeds 0 1 --out benchmarks/results/equal_time
    python benchmarks/equal_time.py --budget 0.3 --tasks moons --seeds 0 --out /tmp/e   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import exactflow  # noqa: E402
from benchmarks.tasks import HELD_OUT, TUNING, Task, load  # noqa: E402

LIBRARIES = ("exactflow", "zuko", "nflows", "normflows")


class Peer:
    """A peer's flow with its recommended optimiser and batch size: ``log_prob(x)``, ``parameters()``."""

    def __init__(self, module: nn.Module, log_prob: Callable[[Tensor], Tensor], lr: float, batch_size: int,
                 weight_decay: float = 0.0) -> None:
        self.module, self.log_prob, self.batch_size = module, log_prob, batch_size
        self.opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)


def zuko_flow(d: int) -> Peer:
    import zuko

    flow = zuko.flows.NSF(d, transforms=3, hidden_features=[128] * 3)
    return Peer(flow, lambda x: flow().log_prob(x), lr=1e-3, batch_size=256)


def nflows_flow(d: int) -> Peer:
    from nflows import distributions, flows, transforms

    layers = []
    for _ in range(5):
        layers += [transforms.ReversePermutation(features=d),
                   transforms.MaskedAffineAutoregressiveTransform(features=d, hidden_features=4)]
    flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal(shape=[d]))
    return Peer(flow, flow.log_prob, lr=1e-3, batch_size=128)


def normflows_flow(d: int) -> Peer:
    import normflows as nf

    if d % 2:
        raise ValueError("normflows' README Real NVP splits the channels in halves: it needs an even dimension")
    layers = []
    for _ in range(32):
        layers += [nf.flows.AffineCouplingBlock(nf.nets.MLP([d // 2, 64, 64, d], init_zeros=True)),
                   nf.flows.Permute(d, mode="swap")]
    model = nf.NormalizingFlow(nf.distributions.base.DiagGaussian(d), layers)
    return Peer(model, model.log_prob, lr=5e-4, batch_size=512, weight_decay=1e-5)


PEERS: dict[str, Callable[[int], Peer]] = {"zuko": zuko_flow, "nflows": nflows_flow, "normflows": normflows_flow}


@torch.no_grad()
def test_nll(log_prob: Callable[[Tensor], Tensor], x: Tensor) -> float:
    return -float(torch.cat([log_prob(chunk) for chunk in x.split(2500)]).double().mean())


def run(library: str, task: Task, seed: int, budget: float) -> dict:
    """Train ``library``'s recommended flow on ``task`` for ``budget`` CPU seconds; test NLL and steps."""
    torch.manual_seed(seed)
    if library == "exactflow":
        flow = exactflow.build("auto", features=task.features)
        h = exactflow.fit(flow, task.train, task.valid, steps=10**7, seed=seed, progress=False, time_budget=budget,
                          clock=time.thread_time)
        nll = test_nll(flow.log_prob, task.test) if h.status != "diverged" else math.nan
        return {"test": nll, "steps": h.step[-1] if h.step else 0, "status": h.status}
    peer = PEERS[library](task.features)
    gen = torch.Generator().manual_seed(seed)
    steps, status, start = 0, "time budget", time.thread_time()
    peer.module.train()
    while time.thread_time() - start < budget:
        x = task.train[torch.randint(len(task.train), (peer.batch_size,), generator=gen)]
        loss = -peer.log_prob(x).mean()
        if not torch.isfinite(loss):
            status = "diverged"
            break
        peer.opt.zero_grad()
        loss.backward()
        peer.opt.step()
        steps += 1
    peer.module.eval()
    nll = test_nll(peer.log_prob, task.test)
    return {"test": nll if math.isfinite(nll) else math.nan, "steps": steps, "status": status}


def mean_se(values: list[float]) -> str:
    if any(math.isnan(v) for v in values):
        return f"nan ({sum(math.isnan(v) for v in values)} of {len(values)} failed)"
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return f"{m:.3f} ± {se:.3f}" if len(values) > 1 else f"{m:.3f}"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=30.0, help="CPU seconds (thread time) of training per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--tasks", nargs="+", default=["moons", "funnel-4d", "checkerboard", "student-t-8d"])
    p.add_argument("--libs", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument("--out", default="benchmarks/results/equal_time", help="writes OUT.jsonl and OUT.md")
    p.add_argument("--report", action="store_true", help="train nothing: tabulate the runs already in OUT.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    done = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[(row["library"], row["task"], row["seed"], row["budget"])] = row
    results: dict[tuple[str, str], list[dict]] = {}
    turn = 0
    for seed in args.seeds:
        for name in args.tasks:
            task = None if args.report else load(name, seed)
            entropy = None if task is None else task.entropy()
            for library in args.libs[turn % len(args.libs):] + args.libs[:turn % len(args.libs)]:  # rotating order
                k = (library, name, seed, args.budget)
                if k not in done and args.report:
                    continue
                if k not in done:
                    row = {"library": library, "task": name, "seed": seed, "budget": args.budget,
                           **run(library, task, seed, args.budget)}
                    row["distance"] = None if entropy is None else row["test"] - entropy
                    done[k] = row
                    with log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"seed {seed} {name:14s} {library:10s} test NLL {row['test']:.4f} "
                          f"({row['steps']} steps, {row['status']})", flush=True)
                results.setdefault((name, library), []).append(done[k])
            turn += 1
    split = {n: ("tuning" if n in TUNING else "held-out" if n in HELD_OUT else "other") for n in args.tasks}
    lines = [f"{args.budget:g} s of training CPU time (thread time) per run, one thread, seeds "
             f"{' '.join(map(str, args.seeds))}; test NLL in nats (mean ± standard error over seeds; lower is "
             "better), and in brackets the distance to the truth (test NLL - true entropy) where it is known.", "",
             "| task | split | " + " | ".join(args.libs) + " |", "|---|---|" + "---|" * len(args.libs)]
    for name in args.tasks:
        cells = []
        for library in args.libs:
            rows = results.get((name, library))
            if not rows:
                cells.append("not run")
                continue
            cell = mean_se([r["test"] for r in rows])
            if rows[0]["distance"] is not None:
                cell += f" ({mean_se([r['distance'] for r in rows])})"
            cell += f" [{statistics.fmean(r['steps'] for r in rows):.0f} steps, {len(rows)} seeds]"
            cells.append(cell)
        lines.append(f"| {name} | {split[name]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
