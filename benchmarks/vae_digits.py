"""VAEs on scikit-learn's digits (binarised at 0.5): test ELBO and IWAE bound by posterior, at equal budget.

    python benchmarks/vae_digits.py                       # the table in docs/benchmarks.md
    python benchmarks/vae_digits.py --steps 50 --k 10     # a smoke run

Every posterior gets the same encoder/decoder sizes, steps, batch, learning rate and seeds; only the
flow on top of the encoder's diagonal Gaussian changes. Scores are nats per test image (higher is
better), mean and spread over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from exactflow.vae import VAE, binarize, evaluate_vae, fit_vae, load_data


def spread(v: list[float]) -> str:
    """`` ± stdev`` of ``v`` for the table, empty for a single seed."""
    return f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--posteriors", nargs="+", default=["diag", "planar:8", "radial:8", "iaf:2", "iaf:4"],
                   help="NAME or NAME:LAYERS (default layers: --layers)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=500, help="importance samples per test image")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_data("digits")
    train, test = binarize(data.train), binarize(data.test)
    print(f"digits: {len(train)} train / {len(test)} test images, 64 binary pixels; "
          f"{args.steps} steps x batch {args.batch}, seeds {args.seeds}, IWAE k = {args.k}")
    print("| posterior | parameters | test ELBO | test IWAE (k) | IWAE - ELBO | s/run |")
    print("|---|---|---|---|---|---|")
    rows = []
    for spec in args.posteriors:
        posterior, _, depth = spec.partition(":")
        layers = int(depth) if depth else args.layers
        runs = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            vae = VAE(64, latent=args.latent, hidden=args.hidden, posterior=posterior, layers=layers)
            start = time.perf_counter()
            fit_vae(vae, train, steps=args.steps, batch=args.batch, lr=args.lr)
            torch.manual_seed(10_000 + seed)
            scores = evaluate_vae(vae, test, k=args.k)
            runs.append({**scores, "seed": seed, "seconds": time.perf_counter() - start})
        params = sum(t.numel() for t in vae.parameters())
        elbo = [r["elbo"] for r in runs]
        iwae = [r["iwae"] for r in runs]
        seconds = statistics.mean(r["seconds"] for r in runs)
        rows.append({"posterior": posterior, "layers": layers, "parameters": params, "runs": runs})
        print(f"| {posterior}{'' if posterior == 'diag' else f' (K={layers})'} | {params} | "
              f"{statistics.mean(elbo):.2f}{spread(elbo)} | {statistics.mean(iwae):.2f}{spread(iwae)} | "
              f"{statistics.mean(iwae) - statistics.mean(elbo):.2f} | {seconds:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
