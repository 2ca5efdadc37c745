"""This exactflow against an earlier one: the same flows with the same weights, in one process, taking turns
(after, before, before, after, ...), median of the repeats; prints after/before per row.

The earlier version is imported as ``exactflow_before``: a copy of its package under that name, e.g.

    git archive 24dd8a9 src/exactflow | tar -x -C /tmp/b && mv /tmp/b/src/exactflow /tmp/b/exactflow_before
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/before_after.py /tmp/b realnvp,maf,nsf-ar,nsf-cp 7
"""
import importlib
import json
import statistics
import sys
import time

import torch

import exactflow

torch.set_num_threads(1)
# the earlier copy is found only once its folder is on the path
sys.path.insert(0, sys.argv[1])
exactflow_before = importlib.import_module("exactflow_before")

HIDDEN, BINS, BOUND = (64, 64), 8, 5.0

def build(pkg, flow: str, d: int) -> torch.nn.Module:
    """The benchmark's flows (as in :mod:`benchmarks.peers`) from ``pkg``'s registry."""
    reg = pkg.flows.registry
    torch.manual_seed(0)
    if flow == "realnvp":
        return reg["RealNVP"](features=d, transforms=8, hidden=HIDDEN, mask="half")
    if flow == "maf":
        return reg["MAF"](features=d, transforms=5, hidden=HIDDEN)
    if flow == "nsf-ar":
        return reg["NSFAutoregressive"](features=d, transforms=5, hidden=HIDDEN, bins=BINS, bound=BOUND)
    return reg["NSF"](features=d, transforms=5, hidden=HIDDEN, bins=BINS, bound=BOUND, mask="half", permutation="none")

def op_fn(f, op, x, n):
    if op == "log_prob":
        def fn():
            with torch.no_grad():
                f.log_prob(x)
    elif op == "train":
        def fn():
            f.zero_grad(set_to_none=True)
            (-f.log_prob(x).mean()).backward()
    else:
        def fn():
            f.sample(n)
    return fn

def once(fn, min_time):
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    inner = max(1, int(min_time / max(one, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner

flows = sys.argv[2].split(",") if len(sys.argv) > 2 else ["realnvp", "maf", "nsf-ar", "nsf-cp"]
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 7
rows = []
for flow in flows:
    for d in (2, 8, 64):
        new, old = build(exactflow, flow, d), build(exactflow_before, flow, d)
        old.load_state_dict(new.state_dict())
        for b in (64, 4096):
            x = torch.randn(b, d)
            for op in ("log_prob", "train", "sample"):
                fns = {"after": op_fn(new, op, x, b), "before": op_fn(old, op, x, b)}
                for fn in fns.values():
                    fn()
                t = {"after": [], "before": []}
                slow = False
                for r in range(reps):
                    order = ("after", "before") if r % 2 == 0 else ("before", "after")
                    for k in order:
                        t[k].append(once(fns[k], 0.02 if not slow else 0))
                    if t["before"] and t["before"][-1] > 1.0:
                        slow = True
                med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
                rows.append((flow, op, d, b, med["before"], med["after"], med["after"] / med["before"]))
                print(
                    f"{flow:7s} {op:8s} d={d:2d} b={b:4d}  before {med['before']:9.3f} ms"
                    f"  after {med['after']:9.3f} ms  after/before {med['after'] / med['before']:.2f}",
                    flush=True,
                )
if len(sys.argv) > 4:
    with open(sys.argv[4], "w") as f:
        json.dump(rows, f)
