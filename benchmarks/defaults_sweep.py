"""Choose exactflow's default flow and training recipe by measurement, at a fixed CPU-time budget per run.

A coordinate-wise sweep: start from ``START`` (the flow and `fit` defaults before this sweep, with NSF), then for
each stage in turn try every value of one setting with the others at the best values found so far, and keep
the value with the lowest mean validation NLL over the tuning tasks and seeds (`benchmarks.tasks.TUNING`).
Every run trains with ``exactflow.fit(..., time_budget=B, clock=time.thread_time)``: ``B`` seconds of this
thread's CPU time (not wall time, so other processes on the machine do not change the result), one torch
thread, the seed fixing the data, the initialisation and the batches. The best validation weights are
restored at the end; the test NLL of those is reported, and for tasks with a known density the distance to
the truth (test NLL minus the Monte Carlo entropy). Runs already in ``--out``'s JSON lines are reused.

``--start auto`` starts from ``AUTO`` (the winner of the first sweep) instead of ``START``, for later stages such as
``tails`` (how the flow treats the data's tails: a wider spline interval, affine couplings, a Student-t base);
``--append`` then adds the report to ``OUT.md`` as its own section (a rerun with the same settings replaces it).

    python benchmarks/defaults_sweep.py --budget 3 --seeds 0 1 --out benchmarks/results/defaults_sweep
    python benchmarks/defaults_sweep.py --budget 10 --seeds 0 1 --start auto --stages tails --append \
        --out benchmarks/results/defaults_sweep --held-out student-t-4d student-t-8d funnel-8d
    python benchmarks/defaults_sweep.py --budget 30 --seeds 0 1 --start auto --stages tails-confirm --append \
        --out benchmarks/results/defaults_sweep
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
# the winner of the first sweep (all the stages below but tails, 3 s per run): `auto` before the tails stage
AUTO = {**START, "lr": 1e-2, "schedule": "constant", "batch_size": 512, "ema": 0.999}
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
    # the tails: the spline is the identity outside [-bound, bound], where only the linear mixing acts
    "tails": [{"bound": 5.0}, {"bound": 10.0}, {"affine": "ends"}, {"affine": "interleaved"},
              {"base": "StudentT"}, {"base": "StudentT", "affine": "ends"}],
    # the start and the winner of tails (screened at 10 s per run) again at a longer budget (30 s)
    "tails-confirm": [{"bound": 5.0}, {"base": "StudentT", "affine": "ends"}],
}
SPLINE_ONLY = ("bins", "bound", "tails", "tails-confirm")


def build(config: dict, features: int) -> torch.nn.Module:
    """The flow a configuration describes (the spline settings only for the spline presets)."""
    kwargs = {"features": features, "depth": config["depth"], "hidden": tuple(config["hidden"])}
    if config["preset"].startswith("NSF"):
        kwargs.update(bins=config["bins"], bound=config["bound"])
    if "affine" in config:  # keys absent from the first sweep's configurations, so its runs are reused
        kwargs.update(affine=config["affine"])
    return exactflow.build(config["preset"], base=config.get("base"), **kwargs)


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


class Report:
    """The markdown report: the whole file, or (``title`` given) one ``title`` section of it, kept after the
    text already there and replaced on a rerun with the same title."""

    def __init__(self, path: Path, title: str | None) -> None:
        self.path, self.title = path, title

    def write(self, text: str) -> None:
        if self.title is None:
            self.path.write_text(text)
            return
        old = self.path.read_text() if self.path.is_file() else ""
        head, sep, rest = old.partition("\n" + self.title + "\n")
        tail = ""
        if sep:  # keep the sections after the one replaced
            cut = rest.find("\n## ")
            tail = rest[cut:] if cut >= 0 else ""
        self.path.write_text(head.rstrip("\n") + "\n\n" + self.title + "\n\n" + text.rstrip("\n") + "\n" + tail)


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def label(change: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in change.items())


def held_out(runs: Runs, first: dict, best: dict, names: list[str], seeds: list[int], budget: float) -> list[str]:
    """Markdown rows: the old default, the start and the winner on tasks the sweep never looked at."""
    if first == START:
        configs = {"RealNVP (the default before)": {**START, "preset": "RealNVP", "depth": 8}, "start (NSF)": START,
                   "winner (auto)": best}
    else:
        configs = {"start (auto before)": first, "winner": best}
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
    p.add_argument("--stages", nargs="+", default=[s for s in STAGES if not s.startswith("tails")],
                   choices=list(STAGES), help="default: the first sweep's (all but the tails stages)")
    p.add_argument("--out", default="benchmarks/results/defaults_sweep", help="writes OUT.jsonl and OUT.md")
    p.add_argument("--start", choices=["before", "auto"], default="before",
                   help="start from the defaults before the first sweep (START) or from its winner (AUTO)")
    p.add_argument("--append", action="store_true",
                   help="add the report to OUT.md as a section of its own instead of replacing the file")
    p.add_argument("--held-out", nargs="*", metavar="TASK",
                   help="then score the old default (RealNVP), the start and the winner on these held-out tasks "
                   f"(no names: all of {', '.join(HELD_OUT)})")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = Runs(out.with_suffix(".jsonl"))
    tasks = {name: {seed: load(name, seed) for seed in args.seeds} for name in args.tasks}
    first = dict(START if args.start == "before" else AUTO)
    start, best = time.perf_counter(), dict(first)
    title = (f"## Stages {', '.join(args.stages)} from {args.start}, {args.budget:g} s, seeds "
             f"{' '.join(map(str, args.seeds))}")
    report = Report(out.with_suffix(".md"), title if args.append else None)
    lines = [f"Coordinate-wise sweep, {args.budget:g} s of CPU time (thread time) per run, one thread, tasks "
             f"{', '.join(args.tasks)}, seeds {' '.join(map(str, args.seeds))}. Per stage: mean validation NLL "
             "(the choice criterion), mean test NLL, and the paired test-NLL difference to the stage's first row "
             "(mean ± standard error over tasks x seeds; negative = better). Start: "
             f"`{json.dumps(first)}`.", ""]

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
        report.write("\n".join(lines))  # after every stage, so a cut-short sweep still reports
    _, _, base_test, _ = score(first)
    _, _, best_test, _ = score(best)
    d, se = mean_se([a - b for a, b in zip(best_test, base_test, strict=True)])
    lines += [f"**Winner**: `{json.dumps(best)}`; its mean test NLL is {d:+.4f} ± {se:.4f} nats from the start "
              f"configuration's (paired over tasks x seeds). Sweep wall time {time.perf_counter() - start:.0f} s.", ""]
    if args.held_out is not None:
        lines += held_out(runs, first, best, args.held_out or list(HELD_OUT), args.seeds, args.budget)
    text = "\n".join(lines)
    report.write(text)
    print(text)
    print("WINNER " + json.dumps(best))
    return text


if __name__ == "__main__":
    main()
