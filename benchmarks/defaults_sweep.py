"""Choose exactflow's default flow and training recipe by measurement, at a fixed CPU-time budget per run.

A coordinate-wise sweep: start from ``START`` (the flow and `fit` defaults before this sweep, with NSF), then for
each stage in turn try every value of one setting with the others at the best values found so far, and keep
the value with the lowest mean validation NLL over the tuning tasks and seeds (`benchmarks.tasks.TUNING`).
Every run trains with ``exactflow.fit(..., time_budget=B, clock=time.thread_time)``: ``B`` seconds of this
thread's CPU time (not wall time, so other processes on the machine do not change the result), one torch
thread, the seed fixing the data, the initialisation and the batches. The best validation weights are
restored at the end; the test NLL of those is reported, and for tasks with a known density the distance to
the truth (test NLL minus the Monte Carlo entropy). Runs already in ``--out``'s JSON lines are reused.

    python benchmarks/defaults_sweep.py --budget 3 --seeds 0 1 --out benchmarks/results/defaults_sweep
    python benchmarks/defaults_sweep.py --budget 0.2 --tasks moons --seeds 0 --stages preset --out /tmp/s  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import exactflow  # noqa: E402
from benchmarks.tasks import HELD_OUT, TUNING, Task, load  # noqa: E402

# the defaults before this sweep (fit's recipe; the size of the NSF preset with 4 layers)
START = {"preset": "NSF", "depth": 4, "hidden": [64, 64], "bins": 8, "bound": 5.0, "lr": 1e-3,
         "schedule": "cosine", "warmup": 0, "batch_size": 256, "clip_grad": 5.0, "weight_decay": 0.0, "ema": None}
PRESET_SIZES = {"RealNVP": {"depth": 8}, "MAF": {"depth": 5}, "NSF": {}, "NSFAutoregressive": {}}
STAGES: dict[str, list[dict]] = {  # in this order; each list's first entry is the value before the sweep
    "preset": [{"preset": p, **PRESET_SIZES[p]} for p in PRESET_SIZES],
    "lr": [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2)],
    "ema": [{"ema": e} for e in (None, 0.99, 0.999)],
    "schedule": [{"schedule": "cosine", "warmup": 0}, {"schedule": "cosine", "warmup": 50},
                 {"schedule": "constant", "warmup": 0}],
    "batch_size": [{"batch_size": b} for b in (256, 512)],
    "depth": [{"depth": d} for d in (4, 8)],
    "hidden": [{"hidden": h} for h in ([64, 64], [128, 128])],
    "bins": [{"bins": b} for b in (8, 16)],
    "clip_grad": [{"clip_grad": c} for c in (5.0, None)],
    "weight_decay": [{"weight_decay": w} for w in (0.0, 1e-4)],
}
SPLINE_ONLY = ("bins", "bound")


def build(config: dict, features: int) -> torch.nn.Module:
    """The flow a configuration describes (the spline settings only for the spline presets)."""
    kwargs = {"features": features, "depth": config["depth"], "hidden": tuple(config["hidden"])}
    if config["preset"].startswith("NSF"):
        kwargs.update(bins=config["bins"], bound=config["bound"])
    return exactflow.build(config["preset"], **kwargs)


def train(config: dict, task: Task, seed: int, budget: float) -> dict:
    """Train a fresh flow for ``budget`` CPU seconds; its best-validation weights' NLLs (nats)."""
    torch.manual_seed(seed)
    flow = build(config, task.features)
    h = exactflow.fit(flow, task.train, task.valid, steps=10**7, batch_size=config["batch_size"], lr=config["lr"],
                      schedule=config["schedule"], warmup=config["warmup"], clip_grad=config["clip_grad"],
                      weight_decay=config["weight_decay"], ema=config["ema"], eval_every=50, seed=seed,
                      progress=False, time_budget=budget, clock=time.thread_time)
    test = exactflow.evaluate(flow, task.test)["nll"] if h.status != "diverged" else math.inf
    valid = h.best_valid if h.best_valid is not None and h.status != "diverged" else math.inf
    entropy = task.entropy()
    return {"valid": valid, "test": test, "steps": h.step[-1] if h.step else 0, "status": h.status,
            "distance": None if entropy is None else test - entropy}


def key(config: dict, task: str, seed: int, budget: float) -> str:
    return json.dumps([config, task, seed, budget], sort_keys=True)


class Runs:
    """Finished runs, appended to a JSON-lines file as they end (a rerun reuses them)."""

    def __init__(self, path: Path) -> None:
        self.path, self.done = path, {}
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.done[row["key"]] = row["result"]

    def get(self, config: dict, task: Task, seed: int, budget: float) -> dict:
        k = key(config, task.name, seed, budget)
        if k not in self.done:
            self.done[k] = train(config, task, seed, budget)
            with self.path.open("a") as f:
                f.write(json.dumps({"key": k, "result": self.done[k]}) + "\n")
        return self.done[k]


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def label(change: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in change.items())


def held_out(runs: Runs, best: dict, names: list[str], seeds: list[int], budget: float) -> list[str]:
    """Markdown rows: the old default, the start and the winner on tasks the sweep never looked at."""
    configs = {"RealNVP (the default before)": {**START, "preset": "RealNVP", "depth": 8}, "start (NSF)": START,
               "winner (auto)": best}
    lines = ["### held-out tasks (not used to choose)", "",
             f"Test NLL after {budget:g} s of CPU time, mean over seeds {' '.join(map(str, seeds))}; in brackets the "
             "distance to the truth (test NLL - true entropy) where it is known.", "",
             "| task | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for name in names:
        data = {seed: load(name, seed) for seed in seeds}
        cells = []
        for config in configs.values():
            results = [runs.get(config, data[seed], seed, budget) for seed in seeds]
            cell = f"{statistics.fmean(r['test'] for r in results):.3f}"
            if results[0]["distance"] is not None:
                cell += f" ({statistics.fmean(r['distance'] for r in results):.3f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return [*lines, ""]


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=3.0, help="CPU seconds (thread time) per run (default 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--tasks", nargs="+", default=list(TUNING))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--out", default="benchmarks/results/defaults_sweep", help="writes OUT.jsonl and OUT.md")
    p.add_argument("--held-out", nargs="*", metavar="TASK",
                   help="then score the old default (RealNVP), the start and the winner on these held-out tasks "
                   f"(no names: all of {', '.join(HELD_OUT)})")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = Runs(out.with_suffix(".jsonl"))
    tasks = {name: {seed: load(name, seed) for seed in args.seeds} for name in args.tasks}
    start, best = time.perf_counter(), dict(START)
    lines = [f"Coordinate-wise sweep, {args.budget:g} s of CPU time (thread time) per run, one thread, tasks "
             f"{', '.join(args.tasks)}, seeds {' '.join(map(str, args.seeds))}. Per stage: mean validation NLL "
             "(the choice criterion), mean test NLL, and the paired test-NLL difference to the stage's first row "
             "(mean ± standard error over tasks x seeds; negative = better). Start: "
             f"`{json.dumps(START)}`.", ""]

    def score(config: dict) -> tuple[float, list[float], list[float], dict[str, list[float]]]:
        valid, test, per_task = [], [], {}
        for name in args.tasks:
            for seed in args.seeds:
                r = runs.get(config, tasks[name][seed], seed, args.budget)
                valid.append(r["valid"])
                test.append(r["test"])
                per_task.setdefault(name, []).append(r["test"])
        return statistics.fmean(valid), valid, test, per_task

    for stage in args.stages:
        if stage in SPLINE_ONLY and not best["preset"].startswith("NSF"):
            continue
        rows = []
        for change in STAGES[stage]:
            config = {**best, **change}
            rows.append((change, config, *score(config)))
            print(f"[{time.perf_counter() - start:6.0f} s] {stage}: {label(change)}  valid {rows[-1][2]:.4f}",
                  flush=True)
        winner = min(rows, key=lambda r: r[2])
        first_test = rows[0][4]
        lines += [f"### {stage}", "", "| choice | valid NLL | test NLL | test vs first row | "
                  + " | ".join(args.tasks) + " |", "|---|---|---|---|" + "---|" * len(args.tasks)]
        for change, _config, v, _vs, test, per_task in rows:
            d, se = mean_se([a - b for a, b in zip(test, first_test, strict=True)])
            cells = " | ".join(f"{statistics.fmean(per_task[n]):.3f}" for n in args.tasks)
            mark = " **(won)**" if change is winner[0] else ""
            lines.append(f"| {label(change)}{mark} | {v:.4f} | {statistics.fmean(test):.4f} | {d:+.4f} ± {se:.4f} | "
                         f"{cells} |")
        lines.append("")
        best = winner[1]
        out.with_suffix(".md").write_text("\n".join(lines))  # after every stage, so a cut-short sweep still reports
    _, _, base_test, _ = score(START)
    _, _, best_test, _ = score(best)
    d, se = mean_se([a - b for a, b in zip(best_test, base_test, strict=True)])
    lines += [f"**Winner**: `{json.dumps(best)}`; its mean test NLL is {d:+.4f} ± {se:.4f} nats from the start "
              f"configuration's (paired over tasks x seeds). Sweep wall time {time.perf_counter() - start:.0f} s.", ""]
    if args.held_out is not None:
        lines += held_out(runs, best, args.held_out or list(HELD_OUT), args.seeds, args.budget)
    text = "\n".join(lines)
    out.with_suffix(".md").write_text(text)
    print(text)
    print("WINNER " + json.dumps(best))
    return text


if __name__ == "__main__":
    main()
