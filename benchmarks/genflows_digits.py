"""TarFlow (noise + denoising) vs Glow vs a flow-matching CNF on 8x8 digits at an equal CPU-time budget; the
Jacobi / GS-Jacobi speed-up over the KV-cache sampler; a class-conditional TarFlow with guidance.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/genflows_digits.py --budget 120 --out docs

One torch thread. Each model trains for ``--budget`` seconds of this thread's CPU time (``time.thread_time()``),
one model after the other, Adam with a cosine decay of the learning rate over the budget, batches of dequantised
images ``y = (k + u) / 17`` in (0, 1). Test bits/dim is the discrete-data bound
``-(log p(y) - D log 17) / (D log 2)`` on the 359 test images with the same dequantisation draws for every model:
the flows' exact ``log_prob`` for TarFlow (clean density, evaluation mode) and Glow, the ODE likelihood (RK4, exact
divergence, 16 steps) for the CNF, which models the per-pixel standardised image ``(y - m) / s`` (``log p(y)`` includes
``-sum log s``). Prints Markdown tables and writes sample grids (PNG) to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from tarflow_digits import test_bits_per_dim
from torch import Tensor, nn

from exactflow.data import registry as datasets
from exactflow.flows import registry as flows
from exactflow.images import dequantize
from exactflow.plots import image_grid
from exactflow.transforms.continuous import flow_matching_loss
from exactflow.transforms.tarflow import TarFlowBlock


class StandardisedCNF(nn.Module):
    """``log p(y) = log p_CNF((y - m) / s) - sum log s`` on flattened images: the CNF's density in image space."""

    def __init__(self, cnf: nn.Module, mean: Tensor, std: Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.cnf, self.shape = cnf, shape
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        x = (y.flatten(1) - self.mean) / self.std
        return self.cnf.log_prob(x) - self.std.log().sum()

    def sample(self, n: int) -> Tensor:
        return (self.cnf.sample(n) * self.std + self.mean).reshape(n, *self.shape)


def train(name: str, model: nn.Module, loss_fn, ds, budget: float, lr: float, batch: int,
          labels: Tensor | None = None) -> tuple[int, float]:
    """Adam on ``loss_fn(model, y, c)`` for ``budget`` s of thread CPU time (cosine decay); (steps, seconds)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    model.train()
    start, steps = time.thread_time(), 0
    while (used := time.thread_time() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, used / budget)))
        idx = torch.randint(len(ds.train), (batch,), generator=gen)
        y = dequantize(ds.train[idx], ds.levels, gen)
        loss = loss_fn(model, y, None if labels is None else labels[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        steps += 1
        if steps % 500 == 0:
            print(f"  {name}: step {steps}, {used:.0f} s, loss {loss.item():.3f}", flush=True)
    return steps, time.thread_time() - start


def per_image(fn, n: int, repeats: int = 3) -> float:
    """Median thread CPU time of ``fn()`` over ``repeats`` runs, divided by ``n`` (ms per image)."""
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return 1e3 * statistics.median(times) / n


def blocks_of(flow) -> list[TarFlowBlock]:
    return [b for b in flow.transform.bijections if isinstance(b, TarFlowBlock)]


@torch.no_grad()
def invert(blocks: list[TarFlowBlock], z: Tensor, how: str, segments: int = 1, tol: float | None = None) -> tuple:
    """The blocks' inverse (latent -> the first block's input) by ``how`` ("kv" or "jacobi"); (x, iterations)."""
    iterations = 0
    for b in reversed(blocks):
        if how == "kv":
            z, _ = b.inverse(z)
            iterations += b.tokens
        else:
            z, _, k = b.jacobi(z, tol=tol, segments=segments)
            iterations += k
    return z, iterations


def jacobi_table(title: str, flow, n: int, repeats: int) -> None:
    """KV-cache vs Jacobi vs GS-Jacobi on ``n`` latents: ms/image (interleaved, median), max |x - x_kv|."""
    flow.eval()
    blocks = blocks_of(flow)
    z = torch.randn(n, *flow.event_shape, generator=torch.Generator().manual_seed(2))
    tokens = blocks[0].tokens
    ref, _ = invert(blocks, z, "kv")
    configs = [("KV cache (sequential)", "kv", 1), ("Jacobi", "jacobi", 1)] + [
        (f"GS-Jacobi, {s} segments", "jacobi", s) for s in (2, 4) if s <= tokens]
    times: dict[str, list[float]] = {c[0]: [] for c in configs}
    out: dict[str, tuple] = {}
    for _ in range(repeats):  # interleaved
        for label, how, seg in configs:
            t0 = time.thread_time()
            out[label] = invert(blocks, z, how, seg)
            times[label].append(time.thread_time() - t0)
    base = statistics.median(times[configs[0][0]])
    print(f"\n{title}: {len(blocks)} blocks x {tokens} patches, batch {n}, median of {repeats} (thread CPU time)")
    print("| sampler | passes (all blocks) | ms / image | speed-up | max abs diff to KV |")
    print("|---|---|---|---|---|")
    for label, _, _ in configs:
        x, its = out[label]
        t = statistics.median(times[label])
        print(f"| {label} | {its} | {1e3 * t / n:.2f} | {base / t:.2f}x | {(x - ref).abs().max().item():.1e} |",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="training CPU seconds (thread time) per model")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--noise", type=float, default=0.05, help="TarFlow training noise (after the logit)")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--out", default="docs")
    p.add_argument("--smoke", action="store_true", help="a quick end-to-end check: 20 test images, a small big model")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(args.out)
    ds = datasets["digits"](labels=True)
    if args.smoke:
        ds.test, ds.context = ds.test[:20], (ds.context[0], ds.context[1], ds.context[2][:20])
    shape, levels = ds.shape, ds.levels
    tar_kw = {"shape": shape, "patch": 2, "channels": 64, "depth": 4, "layers_per_block": 2, "heads": 4}
    mean = ds.train.flatten(1).add(0.5).div(levels).mean(0)
    std = (ds.train.flatten(1).add(0.5).div(levels).var(0) + 1 / (12 * levels**2)).sqrt()
    models = {
        "TarFlow": (flows["TarFlow"](**tar_kw, noise=args.noise), 5e-4),
        "Glow": (flows["Glow"](shape=shape, levels=2, steps=4, hidden=64), 1e-3),
        "CNF (flow matching)": (StandardisedCNF(flows["CNF"](features=64, hidden=(256, 256, 256), steps=16),
                                                mean, std, shape), 1e-3),
    }
    configs = {"TarFlow": f"patch 2, 4 blocks x 2 layers, width 64, noise {args.noise}",
               "Glow": "2 levels x 4 steps, hidden 64",
               "CNF (flow matching)": "MLP 3 x 256, scored by RK4 x 16, exact divergence"}

    def nll(model, y, c):
        return -model.log_prob(y).mean()

    def fm(model, y, c):
        return flow_matching_loss(model.cnf, (y.flatten(1) - model.mean) / model.std)

    print(f"digits {shape}, {levels} levels, train {len(ds.train)} / test {len(ds.test)}; budget "
          f"{args.budget:.0f} s thread CPU time per model, batch {args.batch}, 1 thread", flush=True)
    rows = []
    for name, (model, lr) in models.items():
        torch.manual_seed(0)
        steps, used = train(name, model, fm if name.startswith("CNF") else nll, ds, args.budget, lr, args.batch)
        t0 = time.thread_time()
        bpd = test_bits_per_dim(model, ds.test, levels, draws=2)
        eval_s = time.thread_time() - t0
        n_params = sum(q.numel() for q in model.parameters())
        rows.append((name, n_params, steps, used, bpd, eval_s))
        print(f"  {name}: {steps} steps, test bits/dim {bpd:.3f} (scored in {eval_s:.0f} s)", flush=True)
    print("\n| flow | config | params | steps in budget | test bits/dim |")
    print("|---|---|---|---|---|")
    for name, n_params, steps, _, bpd, _ in rows:
        print(f"| {name} | {configs[name]} | {n_params} | {steps} | {bpd:.3f} |")

    # samples and sampling time per image (64 images, thread CPU time, median of 3)
    n = 64
    tar, glow, cnf = (models[k][0].eval() for k in models)
    draws = {
        "TarFlow, KV cache, denoised": lambda: tar.sample(n),
        "TarFlow, KV cache, no denoising": lambda: tar.sample(n, denoise=False),
        "TarFlow, Jacobi, denoised": lambda: tar.sample(n, sampler="jacobi"),
        "Glow": lambda: glow.sample(n),
        "CNF, RK4 x 16 steps (64 NFE)": lambda: cnf.sample(n),
    }
    print(f"\nSampling, {n} images per call, median of 3 calls (thread CPU time)")
    print("| model / sampler | ms / image |")
    print("|---|---|")
    with torch.no_grad():
        for label, fn in draws.items():
            print(f"| {label} | {per_image(fn, n):.2f} |", flush=True)
        cnf.cnf.transform.solver = "dopri5"
        cnf.cnf.transform.rtol = cnf.cnf.transform.atol = 1e-4
        ms = per_image(lambda: cnf.sample(n), n)
        print(f"| CNF, dopri5 rtol=atol=1e-4 ({cnf.cnf.transform.nfe} NFE) | {ms:.2f} |", flush=True)
        cnf.cnf.transform.solver = "rk4"
        torch.manual_seed(3)
        image_grid(tar.sample(n), out / "genflows_tarflow_denoised.png", nrow=8)
        torch.manual_seed(3)
        image_grid(tar.sample(n, denoise=False), out / "genflows_tarflow_raw.png", nrow=8)
        torch.manual_seed(3)
        image_grid(glow.sample(n), out / "genflows_glow.png", nrow=8)
        torch.manual_seed(3)
        image_grid(cnf.sample(n).clamp(0, 1), out / "genflows_cnf.png", nrow=8)

    # Jacobi / GS-Jacobi against the KV cache
    jacobi_table("Trained digits TarFlow", tar, 64, 5)
    jacobi_table("Trained digits TarFlow, one image", tar, 1, 21)
    torch.manual_seed(0)
    big = flows["TarFlow"](shape=(3, 8, 8) if args.smoke else (3, 32, 32), patch=4, channels=128, depth=4,
                           layers_per_block=2, heads=4)
    for b in blocks_of(big):  # leave the identity the blocks start as
        torch.nn.init.normal_(b.head.weight, std=0.02)
    jacobi_table("Random TarFlow on 3x32x32 (patch 4)", big, 8, 3)
    jacobi_table("Random TarFlow on 3x32x32 (patch 4), one image", big, 1, 3)

    # class-conditional TarFlow with label dropout, guidance
    torch.manual_seed(0)
    cond = flows["TarFlow"](**tar_kw, noise=args.noise, classes=10, label_dropout=0.1)
    steps, _ = train("class-conditional TarFlow", cond, lambda m, y, c: -m.log_prob(y, c).mean(), ds, args.budget,
                     5e-4, args.batch, labels=ds.context[0])
    cond.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        y = dequantize(ds.test, levels, gen)
        from exactflow.images import bits_per_dim

        b_cond = bits_per_dim(cond.log_prob(y, ds.context[2]), shape, levels).mean().item()
        b_null = bits_per_dim(cond.log_prob(y, torch.full_like(ds.context[2], 10)), shape, levels).mean().item()
        print(f"\nClass-conditional TarFlow ({steps} steps, label dropout 0.1): test bits/dim {b_cond:.3f} given the "
              f"label, {b_null:.3f} with the null label (unconditional)", flush=True)
        for w in (0.0, args.guidance):
            torch.manual_seed(4)
            x = cond.sample(10, label=list(range(10)), guidance=w)  # (10, 10 classes, ...)
            image_grid(x.transpose(0, 1).reshape(100, *shape), out / f"genflows_classes_w{w:g}.png", nrow=10)
    print("wrote", *sorted(str(q) for q in out.glob("genflows_*.png")))


if __name__ == "__main__":
    main()
