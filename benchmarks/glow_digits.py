"""Glow on scikit-learn's 8x8 digits: exactflow vs normflows, same data, batches, steps and sizes.

Both models see the same dequantised batches ``y = (k + u) / 17`` in (0, 1), are trained by Adam
on the negative log-likelihood with their training steps interleaved round robin in one process
(the order alternates every step), and are scored on the same test images with the same
dequantisation noise. Both start with a logit (alpha = 0.05) whose log-det is in log_prob, so

    bits/dim = -(log p(y) - D log 17) / (D log 2)

is the discrete-data bound for both. Prints a Markdown table (test bits/dim, parameters, median
ms per training step) and writes sample grids as PNG.

    .venv/bin/python benchmarks/glow_digits.py --steps 2000 --out runs/glow_digits
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

from exactflow.data import registry as datasets
from exactflow.flows.glow import Glow
from exactflow.images import bits_per_dim, dequantize, quantize
from exactflow.plots import image_grid


def normflows_glow(shape: tuple[int, int, int], levels: int, steps: int, hidden: int, alpha: float):
    """normflows' own multi-scale Glow recipe (GlowBlock: affine coupling, 1x1 conv LU, ActNorm; a learned
    diagonal Gaussian per level), unconditional, with its Logit transform in front."""
    import normflows as nf

    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):
        level = [nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                 for _ in range(steps)]
        flows.append(level + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha), class_cond=False)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def test_bits_per_dim(log_prob, test: torch.Tensor, levels: int, draws: int, seed: int) -> float:
    """Mean bits/dim over the test images and ``draws`` fixed dequantisation draws."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(test.shape[1:])
    values = []
    for _ in range(draws):
        y = dequantize(test, levels, gen)
        values.append(torch.cat([bits_per_dim(log_prob(b), shape, levels) for b in y.split(500)]))
    return torch.cat(values).mean().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per library")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--flow-steps", type=int, default=4, help="Glow steps per level (K)")
    parser.add_argument("--hidden", type=int, default=64, help="channels of the coupling CNNs")
    parser.add_argument("--alpha", type=float, default=0.05, help="logit preprocessing parameter")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the grids")
    parser.add_argument("--draws", type=int, default=4, help="dequantisation draws for the test bits/dim")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/glow_digits")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = datasets.build("digits")
    shape, levels = data.shape, data.levels
    models = {
        "exactflow": Glow(shape, levels=args.levels, depth=args.flow_steps, hidden=args.hidden, alpha=args.alpha),
        "normflows": normflows_glow(shape, args.levels, args.flow_steps, args.hidden, args.alpha),
    }
    log_prob = {"exactflow": models["exactflow"].log_prob, "normflows": lambda y: models["normflows"].log_prob(y, None)}
    optims = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    train_nll: dict[str, float] = {}

    gen = torch.Generator().manual_seed(args.seed + 1)
    names = list(models)
    for step in range(args.steps):
        batch = dequantize(data.train[torch.randint(len(data.train), (args.batch,), generator=gen)], levels, gen)
        for name in names if step % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            loss = -log_prob[name](batch).mean()
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            optims[name].step()
            times[name].append(time.perf_counter() - start)
            train_nll[name] = loss.item()
        if not all(math.isfinite(v) for v in train_nll.values()):
            raise RuntimeError(f"non-finite training loss at step {step}: {train_nll}")
        if (step + 1) % max(1, args.steps // 10) == 0:
            d = math.prod(shape)
            print(f"step {step + 1}: train bits/dim " + ", ".join(
                f"{k} {(v / d + math.log(levels)) / math.log(2):.3f}" for k, v in train_nll.items()), file=sys.stderr)

    out = Path(args.out)
    results = {}
    for name, model in models.items():
        model.eval()
        bpd = test_bits_per_dim(log_prob[name], data.test, levels, args.draws, args.seed + 2)
        torch.manual_seed(args.seed + 3)
        if name == "exactflow":
            samples = model.sample(64, temperature=args.temperature)
        else:
            samples = model.sample(64, temperature=args.temperature)[0].detach()
        grid = image_grid(quantize(samples, levels), out / f"{name}_samples.png", nrow=8, levels=levels)
        results[name] = {"test_bits_per_dim": bpd, "parameters": count(model),
                         "median_ms_per_step": 1000 * statistics.median(times[name]), "samples": str(grid)}
    image_grid(data.test[:64], out / "test_data.png", nrow=8, levels=levels)

    ref = results["normflows"]["median_ms_per_step"]
    print(f"\nGlow on digits (1x8x8, 17 levels): levels={args.levels}, K={args.flow_steps}, hidden={args.hidden}, "
          f"batch={args.batch}, steps={args.steps}, Adam lr={args.lr}, threads={args.threads}\n")
    print("| library | test bits/dim | parameters | median ms/step | time vs normflows |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['test_bits_per_dim']:.3f} | {r['parameters']:,} | {r['median_ms_per_step']:.2f} "
              f"| {r['median_ms_per_step'] / ref:.2f}x |")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
