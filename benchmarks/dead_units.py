"""Dead ReLU units of ``exactflow.build("auto")`` after training with `exactflow.fit`, per training recipe.

A hidden ReLU unit of a coupling's conditioner network is *dead* when its output is 0 on every training row:
it passes no gradient, so it cannot come back. For each task, seed, recipe and number of steps this trains
`auto` with `exactflow.fit` (which returns the EMA weights with the best validation score), pushes the whole
training split through the flow with forward hooks on every ReLU of every coupling network (spline and
affine; the plain reference maths, ``exactflow.backend.reference``, so that the modules run), and reports
the fraction of dead units per layer, the worst single layer, and the test NLL (nats).

Tasks: ``banana`` (the README's first example: 4000 training and 1000 validation rows, unstandardised, test rows
drawn separately) and the tuning tasks of ``benchmarks/tasks.py``. Recipes: the measured default (Adam at a
constant lr 1e-2, batch 512, clip 5, EMA 0.999), the same at lr 3e-3, with a 100-step linear warm-up, and with
a cosine schedule; each changes one setting of the default.

    python benchmarks/dead_units.py --steps 300 --seeds 0 1 2 --json benchmarks/results/dead_units_300.json
    python benchmarks/dead_units.py --steps 1500 --seeds 0 --tasks moons mixture-4d funnel-4d manifold-4d \
        --recipes default "lr 3e-3" "warmup 100" --json benchmarks/results/dead_units_1500.json
    python benchmarks/dead_units.py --table benchmarks/results/dead_units_*.json   # the table again
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import exactflow  # noqa: E402
from benchmarks.tasks import TUNING, load  # noqa: E402
from exactflow import backend  # noqa: E402

#: one setting of the default recipe changed per variant (the rest comes from the flow's recipe)
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "lr 3e-3": {"lr": 3e-3},
    "warmup 100": {"warmup": 100},
    "cosine": {"schedule": "cosine"},
}
TASKS = ("banana", *TUNING)


def banana(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The README's banana: train, valid (its first 4000 and last 1000 of 5000 rows) and 5000 test rows; it leaves
    the global RNG where the README builds its flow (the test rows come from a separate generator)."""
    torch.manual_seed(seed)
    z = torch.randn(5000, 2)
    x = torch.stack([2 * z[:, 0], z[:, 0] ** 2 + 0.5 * z[:, 1]], 1)
    zt = torch.randn(5000, 2, generator=torch.Generator().manual_seed(10_000 + seed))
    test = torch.stack([2 * zt[:, 0], zt[:, 0] ** 2 + 0.5 * zt[:, 1]], 1)
    return x[:4000], x[4000:], test


def dead_fractions(flow: exactflow.Flow, x: Tensor) -> list[dict[str, Any]]:
    """For every coupling network of ``flow`` (in data-to-latent order), the fraction of dead units per hidden
    ReLU layer on the rows ``x``: a unit is dead when its activation is 0 on every row."""
    nets = [(i, type(b).__name__, b.net) for i, b in enumerate(flow.transform.bijections)
            if isinstance(getattr(b, "net", None), nn.Module)]
    alive: dict[tuple[int, int], Tensor] = {}
    hooks = []
    for i, _, net in nets:
        relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        for j, relu in enumerate(relus):
            def hook(_m: nn.Module, _inp: Any, out: Tensor, key: tuple[int, int] = (i, j)) -> None:
                on = (out.reshape(-1, out.shape[-1]) > 0).any(0)
                alive[key] = on if key not in alive else alive[key] | on
            hooks.append(relu.register_forward_hook(hook))
    try:
        with torch.no_grad(), backend.reference():
            flow.transform(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for i, kind, net in nets:
        layers = sum(isinstance(m, nn.ReLU) for m in net.modules())
        if any((i, j) not in alive for j in range(layers)):
            raise RuntimeError(f"the ReLUs of coupling {i} did not run under backend.reference()")
        rows.append({"index": i, "kind": kind,
                     "dead": [1.0 - float(alive[i, j].float().mean()) for j in range(layers)]})
    return rows


def run(task: str, seed: int, recipe: str, steps: int) -> dict[str, Any]:
    """Train `auto` on ``task`` with ``seed`` under ``recipe`` for ``steps``; dead fractions and test NLL."""
    if task == "banana":
        train, valid, test = banana(seed)  # seed 0: the README's data and initial weights
    else:
        t = load(task, seed=seed)
        train, valid, test = t.train, t.valid, t.test
        torch.manual_seed(seed)
    flow = exactflow.build("auto", features=train.shape[1])
    start = time.thread_time()
    history = exactflow.fit(flow, train, valid, steps=steps, seed=seed, progress=False, **RECIPES[recipe])
    cpu = time.thread_time() - start
    nets = dead_fractions(flow, train)
    units = [d for n in nets for d in n["dead"]]
    return {"task": task, "seed": seed, "recipe": recipe, "steps": steps, "cpu_s": cpu,
            "best_step": history.best_step, "status": history.status,
            "nll": exactflow.evaluate(flow, test)["nll"], "nets": nets,
            "dead_mean": statistics.fmean(units), "dead_max": max(units),
            "dead_layers_half": sum(d >= 0.5 for d in units)}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per task, steps and recipe, means over the seeds of the dead fraction of the first and of the
    second hidden layer (over all six coupling networks), of the worst single layer, of the number of layers at
    least half dead (of 12), the test NLL (mean +- sd over seeds; the seed also draws the data) and its difference
    to the default recipe's on the same seeds (negative: better than the default)."""
    out = ["| task | steps | recipe | seeds | dead, layer 1 | dead, layer 2 | worst layer | layers >= 50% dead "
           "(of 12) | test NLL | NLL - default's |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["task"], r["steps"], r["recipe"]) for r in rows},
                  key=lambda k: (TASKS.index(k[0]), k[1], list(RECIPES).index(k[2])))
    for task, steps, recipe in keys:
        rs = [r for r in rows if (r["task"], r["steps"], r["recipe"]) == (task, steps, recipe)]
        layer = [statistics.fmean(statistics.fmean(n["dead"][j] for n in r["nets"]) for r in rs) for j in (0, 1)]
        nll = [r["nll"] for r in rs]
        sd = f" +- {statistics.stdev(nll):.3f}" if len(nll) > 1 else ""
        base = {r["seed"]: r["nll"] for r in rows if (r["task"], r["steps"], r["recipe"]) == (task, steps, "default")}
        paired = [r["nll"] - base[r["seed"]] for r in rs if r["seed"] in base]
        gap = f"{statistics.fmean(paired):+.3f}" if paired else "-"
        out.append(f"| {task} | {steps} | {recipe} | {len(rs)} | {layer[0]:.0%} | {layer[1]:.0%} | "
                   f"{statistics.fmean(r['dead_max'] for r in rs):.0%} | "
                   f"{statistics.fmean(r['dead_layers_half'] for r in rs):.1f} | "
                   f"{statistics.fmean(nll):.3f}{sd} | {gap} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    """Run the grid of the command line; prints and returns the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", nargs="+", type=int, default=[300, 1500])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--json", type=Path, default=None, help="write every run (per-layer fractions) here")
    p.add_argument("--table", type=Path, nargs="+", default=None,
                   help="print the table of the runs in these --json files instead of running")
    args = p.parse_args(argv)
    if args.table is not None:
        text = table([r for f in args.table for r in json.loads(f.read_text())])
        print(text)
        return text
    torch.set_num_threads(1)
    rows = []
    for steps in args.steps:
        for task in args.tasks:
            for recipe in args.recipes:
                for seed in args.seeds:
                    r = run(task, seed, recipe, steps)
                    rows.append(r)
                    print(f"{task} steps={steps} {recipe} seed={seed}: nll {r['nll']:.3f}, dead mean "
                          f"{r['dead_mean']:.0%}, worst layer {r['dead_max']:.0%}, cpu {r['cpu_s']:.1f}s",
                          flush=True)
                    if args.json is not None:
                        args.json.write_text(json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
