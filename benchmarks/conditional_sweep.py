"""Choose exactflow's conditional default (``exactflow.build("auto", features=D, context=C)``) by measurement.

Every candidate (a preset, its size and context handling, and a training recipe) trains with
``exactflow.fit(..., time_budget=B, clock=time.thread_time)`` on the simulations of ``benchmarks/conditional.py``
(``--train`` pairs per seed, the last tenth the validation split, see `fit_recommended`), and is scored by the
expected NLL gap to the true conditional density on 4096 fresh test pairs. The choice is the lowest mean gap over
the tuning tasks (every task of ``conditional.py`` but ``HELD_OUT``); the held-out task is reported, never used.
Runs already in ``--out`` (JSON lines) are reused, so several processes can share the work by ``--candidates``.

Recipes: ``auto`` is the measured unconditional recipe (`exactflow.flows.auto.RECIPE`: Adam at a constant lr
1e-2, batch 512, clipping at 5, EMA 0.999); ``lr1e-3`` is the peers' loop in ``conditional.py`` (Adam at a
constant lr 1e-3, batch 256, clipping at 5, no EMA).

    python benchmarks/conditional_sweep.py --budget 10 --seeds 0 1 --out benchmarks/results/conditional_sweep.jsonl
    python benchmarks/conditional_sweep.py --budget 0.2 --seeds 0 --train 512 --candidates nsf-d3 --out /tmp/c.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import exactflow  # noqa: E402
from benchmarks.conditional import HELD_OUT, TASKS, TEST, Model, _mean_se, fit_recommended, gap  # noqa: E402
from exactflow.flows.auto import RECIPE  # noqa: E402

RECIPES = {"auto": dict(RECIPE), "lr1e-3": {"lr": 1e-3, "schedule": "constant", "warmup": 0, "batch_size": 256,
                                             "clip_grad": 5.0, "weight_decay": 0.0, "ema": None}}
NSF = {"bins": 8, "bound": 5.0}
#: name -> (preset, its keywords, recipe)
CANDIDATES: dict[str, tuple[str, dict, str]] = {
    "nsf-d3 lr1e-3": ("NSF", {"depth": 3, "hidden": (64, 64), **NSF}, "lr1e-3"),
    "nsf-d3": ("NSF", {"depth": 3, "hidden": (64, 64), **NSF}, "auto"),
    "nsf-d4": ("NSF", {"depth": 4, "hidden": (64, 64), **NSF}, "auto"),
    "nsf-d4 bins16": ("NSF", {"depth": 4, "hidden": (64, 64), "bins": 16, "bound": 5.0}, "auto"),
    "nsf-d4 bound3": ("NSF", {"depth": 4, "hidden": (64, 64), "bins": 8, "bound": 3.0}, "auto"),
    "nsf-d4 cbase": ("NSF", {"depth": 4, "hidden": (64, 64), "conditional_base": True, **NSF}, "auto"),
    "nsf-d4 emb[64,16]": ("NSF", {"depth": 4, "hidden": (64, 64), "embedding": [64, 16], **NSF}, "auto"),
    "nsf-d4 h128": ("NSF", {"depth": 4, "hidden": (128, 128), **NSF}, "auto"),
    "nsf-d6": ("NSF", {"depth": 6, "hidden": (64, 64), **NSF}, "auto"),
    "maf-res-d3 lr1e-3": ("MAF", {"depth": 3, "hidden": (64, 64), "residual": True}, "lr1e-3"),
    "maf-res-d3": ("MAF", {"depth": 3, "hidden": (64, 64), "residual": True}, "auto"),
    "maf-res-d5": ("MAF", {"depth": 5, "hidden": (64, 64), "residual": True}, "auto"),
    "maf-res-d5 emb[64,16]": ("MAF", {"depth": 5, "hidden": (64, 64), "residual": True, "embedding": [64, 16]},
                              "auto"),
    "maf-res-d5 h128": ("MAF", {"depth": 5, "hidden": (128, 128), "residual": True}, "auto"),
    "maf-d5": ("MAF", {"depth": 5, "hidden": (64, 64)}, "auto"),
}


def run(name: str, task_name: str, seed: int, budget: float, n_train: int) -> dict:
    """Train candidate ``name`` on one task and seed; its gap to the truth (nats) and steps."""
    preset, kwargs, recipe = CANDIDATES[name]
    task = TASKS[task_name]
    g = torch.Generator().manual_seed(1000 + seed)  # the same simulations as conditional.py
    x, c = task.simulate(n_train, g)
    xt, ct = task.simulate(TEST, g)
    torch.manual_seed(seed)
    flow = exactflow.build(preset, features=task.features, context=task.context, **kwargs)
    start = time.thread_time()
    steps = fit_recommended(flow, x, c, budget, seed, **RECIPES[recipe])
    seconds = time.thread_time() - start
    flow.eval()
    value = gap(Model(flow, flow.log_prob, flow.sample), task, xt, ct)
    return {"gap": value, "steps": steps, "seconds": seconds}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget", type=float, default=10.0, help="CPU-seconds of training per run")
    parser.add_argument("--train", type=int, default=10000, help="simulated training pairs per seed")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines of the runs (reused when there)")
    parser.add_argument("--table", action="store_true", help="only tabulate the runs already in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    done = {}
    if args.out.exists():
        done = {json.dumps(r["key"]): r for r in map(json.loads, args.out.read_text().splitlines())}
    for seed in [] if args.table else args.seeds:
        for task_name in args.tasks:
            for name in args.candidates:
                key = [name, task_name, seed, args.budget, args.train]
                if json.dumps(key) in done:
                    continue
                result = {"key": key, **run(name, task_name, seed, args.budget, args.train)}
                done[json.dumps(key)] = result
                with args.out.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(f"seed {seed} {task_name:16s} {name:24s} gap {result['gap']:8.4f}  {result['steps']:5d} steps",
                      flush=True)

    # cells: mean (± standard error) over the seeds run; the mean over the tuning tasks needs all of them
    tuning = [t for t in args.tasks if t not in HELD_OUT]
    lines = ["| candidate | " + " | ".join(args.tasks) + " | mean over tuning tasks | seeds |",
             "|---" * (len(args.tasks) + 3) + "|"]
    for name in args.candidates:
        per_task = {t: [done[k]["gap"] for k in (json.dumps([name, t, s, args.budget, args.train]) for s in args.seeds)
                        if k in done] for t in args.tasks}
        if not any(per_task.values()):
            continue
        complete = tuning and all(per_task[t] for t in tuning)
        mean = f"{statistics.fmean(statistics.fmean(per_task[t]) for t in tuning):.3f}" if complete else "-"
        seeds = sorted({len(v) for v in per_task.values() if v})
        lines.append(f"| {name} | " + " | ".join(_mean_se(per_task[t]) if per_task[t] else "-" for t in args.tasks)
                     + f" | {mean} | {'/'.join(map(str, seeds))} |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
