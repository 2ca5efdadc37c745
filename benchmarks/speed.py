"""Side-by-side speed of exactflow, zuko, nflows and normflows on equivalent flows.

Every row (flow, operation, dimension, batch) is timed in one process: the libraries take turns
(round robin, the starting library rotating every repeat) and each cell is the median over repeats
of the time per call. Operations: ``log_prob`` without gradients, ``train`` (``zero_grad`` +
``-log_prob(x).mean()`` + ``backward``), and ``sample`` of ``batch`` points.

The ``limit`` column is the time the flow's networks need at this CPU's matmul speed: the FLOPs of
every linear layer (forward; forward and both backward products for ``train``; one network pass for
``sample``, which an autoregressive sampler can reach) divided by the throughput torch reaches on
exactly those matrix shapes here (:func:`matmul_ms`). ``of limit`` = limit / exactflow's time.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from exactflow.backend import INCREMENTAL_MIN_SIZE

from .peers import BINS, COMPILED, FLOWS, HIDDEN, LIBRARIES, Model, available, build, parameter_count

OPS = ("log_prob", "train", "sample")
SLOW_CALL = 2.0  # seconds: calls slower than this are timed once (the peers' autoregressive spline sampling)
PEER_LABELS = {"realnvp": "RealNVP", "maf": "MAF", "nsf-ar": "NSF (autoregressive)", "nsf-cp": "NSF (coupling)"}


# the physical limit ---------------------------------------------------------------------------

def network_layers(flow: str, features: int) -> list[tuple[int, int]]:
    """``(in, out)`` of every linear layer the flow's conditioners run in one log_prob pass."""
    params = 2 if flow in ("realnvp", "maf") else 3 * BINS - 1
    layers = []
    count = 8 if flow == "realnvp" else 5
    for i in range(count):
        if flow in ("realnvp", "nsf-cp"):
            fixed = (features + 1) // 2 if i % 2 == 0 else features // 2
            n_in, n_out = fixed, params * (features - fixed)
        else:
            n_in, n_out = features, params * features
        widths = [n_in, *HIDDEN, n_out]
        layers += list(itertools.pairwise(widths))
    return layers


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def _median_time(fn: Callable[[], object], min_time: float = 0.02, repeats: int = 5) -> float:
    """Median seconds per call of ``fn``, each measurement looping long enough to last ``min_time``."""
    fn()
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    times = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(inner):
            fn()
        times.append((clock() - t0) / inner)
    return statistics.median(times)


_MATMUL_CACHE: dict[tuple[int, int, int], float] = {}


def _matmul_s(m: int, k: int, n: int) -> float:
    """Seconds for one ``(m, k) @ (k, n)`` float32 product here (cached)."""
    key = (m, k, n)
    if key not in _MATMUL_CACHE:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        _MATMUL_CACHE[key] = _median_time(lambda: torch.mm(a, b, out=out))
    return _MATMUL_CACHE[key]


def matmul_ms(flow: str, features: int, batch: int, op: str) -> tuple[float, float]:
    """``(limit ms, GFLOP)`` of the networks' products for one call of ``op``, at measured matmul speed."""
    total_s, flops = 0.0, 0.0
    for n_in, n_out in network_layers(flow, features):
        shapes = [(batch, n_in, n_out)]
        if op == "train":  # grad wrt the layer input and wrt the weight
            shapes += [(batch, n_out, n_in), (n_out, batch, n_in)]
        for m, k, n in shapes:
            total_s += _matmul_s(m, k, n)
            flops += 2.0 * m * k * n
    return 1e3 * total_s, flops / 1e9


# timing ---------------------------------------------------------------------------------------

@dataclass
class Row:
    flow: str
    op: str
    dim: int
    batch: int
    repeats: int
    ms: dict[str, float]
    params: dict[str, int]
    limit_ms: float | None = None
    gflop: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    timed_once: list[str] = field(default_factory=list)  # libraries whose single call exceeded SLOW_CALL
    compile_s: float | None = None  # the first (compiling) call of exactflow+compile

    @property
    def fastest(self) -> float:
        return min(self.ms.values())

    def speedup(self, lib: str = "exactflow") -> float | None:
        """Fastest peer's time / ``lib``'s time (> 1: that exactflow variant is ahead)."""
        peers = [t for name, t in self.ms.items() if not name.startswith("exactflow")]
        if lib not in self.ms or not peers:
            return None
        return min(peers) / self.ms[lib]


def _call(model: Model, op: str, x: torch.Tensor) -> Callable[[], object]:
    if op == "log_prob":
        def run():
            with torch.no_grad():
                return model.log_prob(x)
    elif op == "train":
        def run():
            model.module.zero_grad(set_to_none=True)
            loss = -model.log_prob(x).mean()
            loss.backward()
            return loss
    else:
        n = x.shape[0]

        def run():
            with torch.no_grad():
                return model.sample(n)
    return run


def compiled_sampler(flow: str, dim: int, batch: int) -> bool:
    """Whether ``exactflow+compile`` is timed on sampling: where the sampler traces as one straight graph
    (coupling flows; autoregressive ones on their D-pass path). The incremental autoregressive sampler's
    loop over data-dependent block bounds stays eager."""
    threshold = INCREMENTAL_MIN_SIZE["affine" if flow == "maf" else "spline"]
    return flow in ("realnvp", "nsf-cp") or dim < 2 or dim * batch < threshold


def time_row(flow: str, op: str, dim: int, batch: int, libraries: list[str], repeats: int, budget: float,
             limit: bool = True) -> Row:
    """Time one row: build every library's flow, warm up, then round-robin ``repeats`` times (fewer
    when one round would exceed ``budget`` seconds, but at least 3 unless a round exceeds 3 budgets).
    A library whose single call takes over ``SLOW_CALL`` seconds is timed by that one call."""
    models, skipped = {}, {}
    if op == "sample" and not compiled_sampler(flow, dim, batch):
        libraries = [lib for lib in libraries if lib != COMPILED]
    for lib in libraries:
        try:
            models[lib] = build(lib, flow, dim)
        except (KeyError, ValueError, ImportError) as e:
            skipped[lib] = f"{type(e).__name__}: {e}"
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1))
    calls = {lib: _call(m, op, x) for lib, m in models.items()}
    if op == "train":
        for m in models.values():
            m.module.train()
    inner, once, samples = {}, {}, {}
    compile_s = None
    if COMPILED in calls:  # the compiling call, timed on its own, then one more untimed call
        t0 = clock()
        calls[COMPILED]()
        compile_s = clock() - t0
        calls[COMPILED]()
    for lib, fn in calls.items():  # warm-up, and the loop length that makes one measurement last ~20 ms
        t0 = clock()
        fn()
        once[lib] = clock() - t0
        if once[lib] > SLOW_CALL:  # a call of seconds: its warm-up call is its one measurement
            samples[lib] = [once[lib]]
            continue
        t0 = clock()
        fn()
        once[lib] = clock() - t0
        inner[lib] = max(1, int(0.02 / max(once[lib], 1e-7)))
    timed = [lib for lib in calls if lib not in samples]
    round_s = sum(max(once[lib] * inner[lib], 0.02) for lib in timed)
    reps = repeats if round_s * repeats <= budget else max(3, int(budget / max(round_s, 1e-9)))
    if round_s > 3 * budget:
        reps = 1
    reps = min(reps, repeats) if timed else 1
    samples.update({lib: [] for lib in timed})
    for r in range(reps if timed else 0):
        for lib in timed[r % len(timed):] + timed[: r % len(timed)]:
            fn, k = calls[lib], inner[lib]
            t0 = clock()
            for _ in range(k):
                fn()
            samples[lib].append((clock() - t0) / k)
    ms = {lib: 1e3 * statistics.median(s) for lib, s in samples.items()}
    row = Row(flow, op, dim, batch, reps, ms, {lib: parameter_count(m) for lib, m in models.items()}, skipped=skipped,
              timed_once=[lib for lib in calls if lib not in timed], compile_s=compile_s)
    if limit and ms:
        row.limit_ms, row.gflop = matmul_ms(flow, dim, batch, op)
    return row


# output ---------------------------------------------------------------------------------------

def _fmt_ms(t: float) -> str:
    return f"{t:.3g}" if t < 1000 else f"{t:,.0f}"


def table(rows: list[Row], libraries: list[str]) -> str:
    """Markdown: median ms per call, ratio to the fastest in brackets, exactflow's lead, the limit."""
    compiled = COMPILED in libraries
    head = ["flow", "op", "d", "batch", *libraries, "exactflow vs best peer",
            *(["compiled vs best peer"] if compiled else []), "limit ms", "of limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [PEER_LABELS[row.flow], row.op, str(row.dim), str(row.batch)]
        for lib in libraries:
            t = row.ms.get(lib)
            cells.append("-" if t is None else f"{_fmt_ms(t)} ({t / row.fastest:.2f})")
        for lib in ["exactflow", COMPILED] if compiled else ["exactflow"]:
            s = row.speedup(lib)
            cells.append("-" if s is None else f"{s:.2f}x")
        if row.limit_ms is None or "exactflow" not in row.ms:
            cells += ["-", "-"]
        else:
            cells += [f"{row.limit_ms:.3g}", f"{100 * row.limit_ms / row.ms['exactflow']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def versions(libraries: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for lib in libraries:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


# scaling figure -------------------------------------------------------------------------------

def scaling(flows: list[str], libraries: list[str], dims: list[int], batches: list[int], dim_batch: int,
            batch_dim: int, budget: float) -> dict[str, dict[str, list]]:
    """log_prob time per sample vs dimension (batch ``dim_batch``) and vs batch (dimension ``batch_dim``)."""
    out: dict[str, dict[str, list]] = {}
    for flow in flows:
        by_dim = [time_row(flow, "log_prob", d, dim_batch, libraries, 3, budget, limit=False) for d in dims]
        by_batch = [time_row(flow, "log_prob", batch_dim, b, libraries, 3, budget, limit=False) for b in batches]
        out[flow] = {
            "dims": dims, "batches": batches, "dim_batch": dim_batch, "batch_dim": batch_dim,
            "us_per_sample_vs_dim": {
                lib: [1e3 * r.ms.get(lib, math.nan) / dim_batch for r in by_dim] for lib in libraries
            },
            "us_per_sample_vs_batch": {
                lib: [1e3 * r.ms.get(lib, math.nan) / b for r, b in zip(by_batch, batches, strict=True)]
                for lib in libraries
            },
        }
    return out


def plot_scaling(data: dict[str, dict[str, list]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(data), 2, figsize=(10, 3.2 * len(data)), squeeze=False)
    for (flow, d), (ax_d, ax_b) in zip(data.items(), axes, strict=True):
        for lib, ys in d["us_per_sample_vs_dim"].items():
            ax_d.plot(d["dims"], ys, "o-", label=lib)
        for lib, ys in d["us_per_sample_vs_batch"].items():
            ax_b.plot(d["batches"], ys, "o-", label=lib)
        ax_d.set(xscale="log", yscale="log", xlabel="dimension", ylabel="µs per sample",
                 title=f"{PEER_LABELS[flow]} log_prob, batch {d['dim_batch']}")
        ax_b.set(xscale="log", yscale="log", xlabel="batch size", ylabel="µs per sample",
                 title=f"{PEER_LABELS[flow]} log_prob, d = {d['batch_dim']}")
        ax_d.set_xscale("log", base=2)
        ax_b.set_xscale("log", base=2)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# command line ---------------------------------------------------------------------------------

def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda s: [kind(v) for v in s.split(",") if v]


def parse_args(argv: list[str] | None = None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", type=_csv(str), default=list(FLOWS), help=f"comma list of {', '.join(FLOWS)}")
    p.add_argument("--libs", type=_csv(str), default=list(LIBRARIES), help=f"comma list of {', '.join(LIBRARIES)}")
    p.add_argument("--ops", type=_csv(str), default=list(OPS), help=f"comma list of {', '.join(OPS)}")
    p.add_argument("--dims", type=_csv(int), default=[2, 8, 64])
    p.add_argument("--batches", type=_csv(int), default=[64, 4096])
    p.add_argument("--repeats", type=int, default=7, help="round-robin repeats per row (median taken)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds per row that bound the repeats")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every library")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, "
                        "meaningful with --threads 1)")
    p.add_argument("--json", default="runs/bench/speed.json", help="where the rows go ('' = nowhere)")
    p.add_argument("--figure", default="runs/bench/scaling.png", help="scaling figure ('' = skip it)")
    p.add_argument("--compile", action="store_true",
                   help=f"add a '{COMPILED}' column: exactflow after exactflow.compile (inductor), on log_prob, "
                        "train and the sample rows whose sampler compiles as one graph (compiled_sampler); "
                        "every row compiles afresh (seconds to two minutes each), its time goes to the JSON")
    p.add_argument("--quick", action="store_true",
                   help="RealNVP, d=2, batch 64, 3 repeats, no figure: a smoke run of every code path")
    args = p.parse_args(argv)
    for name, allowed in (("flows", FLOWS), ("libs", LIBRARIES), ("ops", OPS)):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    if args.quick:
        args.flows = args.flows if args.flows != list(FLOWS) else ["realnvp"]
        args.dims = args.dims if args.dims != [2, 8, 64] else [2]
        args.batches = args.batches if args.batches != [64, 4096] else [64]
        args.repeats, args.budget, args.figure = 3, 0.5, ""
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    global clock
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    warnings.filterwarnings("ignore")
    libraries = [lib for lib in args.libs if available(lib)]
    if args.compile and "exactflow" in libraries:
        libraries.insert(libraries.index("exactflow") + 1, COMPILED)
    missing = [lib for lib in args.libs if lib not in libraries]
    if missing:
        print(f"not installed (pip install -e '.[bench]'): {', '.join(missing)}")
    print(f"machine: {machine()}")
    rows = []
    for flow in args.flows:
        for dim in args.dims:
            for batch in args.batches:
                for op in args.ops:
                    row = time_row(flow, op, dim, batch, libraries, args.repeats, args.budget)
                    rows.append(row)
                    cells = ", ".join(f"{lib} {_fmt_ms(t)} ms" for lib, t in row.ms.items())
                    once = f" (timed once: {', '.join(row.timed_once)})" if row.timed_once else ""
                    if row.compile_s is not None:
                        once += f" (compiling took {row.compile_s:.1f} s)"
                    print(f"{flow:8s} {op:8s} d={dim:<3d} batch={batch:<5d} x{row.repeats}: {cells}{once}", flush=True)
                    for lib, why in row.skipped.items():
                        print(f"    {lib} skipped: {why}")
    print("\nparameters per flow (equal sizes across libraries):")
    seen = set()
    for row in rows:
        if (row.flow, row.dim) not in seen:
            seen.add((row.flow, row.dim))
            print(f"  {PEER_LABELS[row.flow]} d={row.dim}: " + ", ".join(f"{k} {v:,}" for k, v in row.params.items()))
    print("\nmedian ms per call (ratio to the fastest); limit = network FLOPs at this CPU's matmul speed\n")
    print(table(rows, libraries))
    figure = None
    if args.figure:
        dims = [2, 4, 8, 16, 32, 64, 128, 256]
        batches = [1, 4, 16, 64, 256, 1024, 4096]
        eager = [lib for lib in libraries if lib != COMPILED]  # compiling each scaling point would take minutes
        figure = scaling(args.flows, eager, dims, batches, dim_batch=1024, batch_dim=8, budget=0.5)
        os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
        plot_scaling(figure, args.figure)
        print(f"\nscaling figure: {args.figure}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        payload = {"machine": machine(), "versions": versions(["exactflow", *libraries]), "args": vars(args),
                   "rows": [{**asdict(r), "speedup_vs_best_peer": r.speedup(),
                             "compiled_speedup_vs_best_peer": r.speedup(COMPILED)} for r in rows], "scaling": figure}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"rows: {args.json}")
    return rows
