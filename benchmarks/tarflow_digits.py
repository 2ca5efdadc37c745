"""TarFlow beside Glow on scikit-learn's 8x8 digits at equal training steps.

    .venv/bin/python benchmarks/tarflow_digits.py --steps 1000 --out runs/tarflow_digits

Both flows see the same dequantised batches ``y = (k + u) / 17`` in (0, 1), train by Adam on the negative
log-likelihood with their steps interleaved in one process, and are scored on the same test images with
the same dequantisation draws. Both start with the logit ``logit(0.05 + 0.9 y)`` whose log-det is inside
``log_prob``, so ``bits/dim = -(log p(y) - D log 17) / (D log 2)`` is the discrete-data bound for both.
Prints a Markdown table (test bits/dim, parameters, median ms per step) and writes TarFlow samples as PNG.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from exactflow.data import registry as datasets
from exactflow.flows import registry as flows
from exactflow.images import bits_per_dim, dequantize
from exactflow.plots import image_grid


@torch.no_grad()
def test_bits_per_dim(flow, test: torch.Tensor, levels: int, draws: int = 4, seed: int = 0) -> float:
    flow.eval()
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(test.shape[1:])
    values = [bits_per_dim(flow.log_prob(dequantize(test, levels, gen)), shape, levels).mean().item()
              for _ in range(draws)]
    flow.train()
    return sum(values) / draws


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--layers", type=int, default=2, help="transformer layers per TarFlow block")
    p.add_argument("--out", default="runs/tarflow_digits")
    args = p.parse_args()
    torch.manual_seed(0)
    ds = datasets["digits"]()
    shape, levels = ds.shape, ds.levels
    models = {
        "TarFlow": flows["TarFlow"](shape=shape, patch=args.patch, channels=args.channels, depth=args.blocks,
                                    layers_per_block=args.layers, heads=4),
        "Glow": flows["Glow"](shape=shape, levels=2, steps=4, hidden=64),
    }
    opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    gen = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        idx = torch.randint(len(ds.train), (args.batch,), generator=gen)
        y = dequantize(ds.train[idx], levels, gen)
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for k in order:
            t0 = time.perf_counter()
            loss = -models[k].log_prob(y).mean()
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            times[k].append(time.perf_counter() - t0)
    print(f"digits {shape}, {levels} levels, train {len(ds.train)} / test {len(ds.test)}; steps={args.steps}, "
          f"batch={args.batch}, Adam lr={args.lr}, threads={torch.get_num_threads()}")
    print("| flow | config | params | ms/step (median) | test bits/dim |")
    print("|---|---|---|---|---|")
    configs = {"TarFlow": f"patch {args.patch}, {args.blocks} blocks x {args.layers} layers, "
                          f"width {args.channels}, 4 heads",
               "Glow": "2 levels x 4 steps, hidden 64"}
    for k, m in models.items():
        n = sum(q.numel() for q in m.parameters())
        bpd = test_bits_per_dim(m, ds.test, levels)
        print(f"| {k} | {configs[k]} | {n} | {1e3 * statistics.median(times[k]):.1f} | {bpd:.3f} |", flush=True)
    out = Path(args.out)
    with torch.no_grad():
        models["TarFlow"].eval()
        path = image_grid(models["TarFlow"].sample(64), out / "tarflow_samples.png", nrow=8)
    print(f"samples: {path}")


if __name__ == "__main__":
    main()
