"""Reverse-KL fits of planar flows to Rezende & Mohamed's U1-U4: final ELBO against the number of layers K.

    python benchmarks/vi_energies.py                    # the table in docs/benchmarks.md
    python benchmarks/vi_energies.py --steps 50 --layers 2 --targets u1   # a smoke run

For each target, K and seed, a planar flow is fitted with Adam (beta annealed from 0.01 to 1 over the
first half of the steps) and scored on fresh draws: ELBO = E_q[log p~ - log q], the importance-sampled log Z
and its ESS. log Z by quadrature (1000^2 grid on [-8, 8]^2) gives the gap KL(q || p) = log Z - ELBO.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from exactflow.targets import quadrature_log_z, registry
from exactflow.vi import build_flow, fit_reverse_kl


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=["u1", "u2", "u3", "u4"])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 suits these tiny flows)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    print("| target | K | seed | ELBO | log Z (IS) | ESS % | log Z (quadrature) | KL(q‖p) | fit s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.targets:
        target = registry.build(name)
        log_z = quadrature_log_z(target, (-8.0, 8.0, -8.0, 8.0), points=1000)
        for k in args.layers:
            for seed in args.seeds:
                torch.manual_seed(seed)
                flow = build_flow("Planar", 2, depth=k)
                start = time.perf_counter()
                r = fit_reverse_kl(flow, target, steps=args.steps, batch=args.batch, lr=args.lr,
                                   anneal=args.steps // 2, samples=args.samples)
                seconds = time.perf_counter() - start
                rows.append({"target": name, "layers": k, "seed": seed, **r.as_dict(), "quadrature_log_z": log_z,
                             "seconds": seconds})
                print(f"| {name} | {k} | {seed} | {r.elbo:.3f} | {r.log_z:.3f} | {100 * r.ess_fraction:.1f} | "
                      f"{log_z:.3f} | {log_z - r.elbo:.3f} | {seconds:.0f} |", flush=True)
    print("\nbest ELBO over the seeds (reverse KL is mode seeking: a run can lock onto one mode)")
    print("| target | " + " | ".join(f"K = {k}" for k in args.layers) + " | log Z (quadrature) |")
    print("|---|" + "---|" * (len(args.layers) + 1))
    for name in args.targets:
        best = [max(r["elbo"] for r in rows if r["target"] == name and r["layers"] == k) for k in args.layers]
        log_z = next(r["quadrature_log_z"] for r in rows if r["target"] == name)
        print(f"| {name} | " + " | ".join(f"{b:.3f}" for b in best) + f" | {log_z:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
