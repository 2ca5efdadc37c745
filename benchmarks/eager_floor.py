"""How fast can an eager training step at batch 64 be? exactflow's MAF and RealNVP against the same
arithmetic written as one flat loop of torch calls over exactflow's own parameters (no modules, no checks,
no Python layers in between), and against the fastest peer, interleaved in one process.

The flat loop is the floor for eager PyTorch with these operations: what remains is the cost of the torch
calls and of the autograd graph, which every library pays. Its ratio to the best peer bounds what any eager
implementation of the same maths can show in the speed table.

    python benchmarks/eager_floor.py [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import peers  # noqa: E402

LOG_SQRT_2PI = 0.9189385332046727
PEER = {"maf": "nflows", "realnvp": "normflows"}  # the fastest peer on these rows in docs/benchmarks.md


def flat_maf(flow, features: int):
    """exactflow's MAF (affine kernel z = x exp(-s) + t, s = 3 tanh(r / 3)) as one loop of torch calls."""
    layers = [[(m.weight, m.bias, m.mask) for m in (*t.net.layers, t.net.out)] for t in flow.transform.bijections]

    def log_prob(x):
        ladj = []
        for layer in layers:
            h = x
            for w, b, mask in layer[:-1]:
                h = F.linear(h, w * mask, b).relu_()
            w, b, mask = layer[-1]
            shift, raw = F.linear(h, w * mask, b).view(len(x), features, 2).unbind(-1)
            neg_s = torch.rsub(torch.sigmoid(raw * (2 / 3)), 3.0, alpha=6.0)
            x = torch.addcmul(shift, x, torch.exp(neg_s))
            ladj.append(neg_s.sum(-1))
        return -0.5 * x.square().sum(-1) - features * LOG_SQRT_2PI + torch.stack(ladj).sum(0)

    return log_prob


def flat_realnvp(flow, features: int):
    """exactflow's RealNVP (z_tr = (x_tr - t) exp(-s), halves alternating) as one loop of torch calls."""
    layers = [([(m.weight, m.bias) for m in t.net if isinstance(m, torch.nn.Linear)], t.cut, t.fixed_first)
              for t in flow.transform.bijections]

    def log_prob(x):
        cut = layers[0][1]
        a, b = x[:, :cut], x[:, cut:]
        ladj = []
        for linears, _, fixed_first in layers:
            h = a if fixed_first else b
            for w, bias in linears[:-1]:
                h = F.linear(h, w, bias).relu_()
            shift, raw = F.linear(h, *linears[-1]).chunk(2, -1)
            neg_s = torch.rsub(torch.sigmoid(raw * (2 / 3)), 3.0, alpha=6.0)
            y = ((b if fixed_first else a) - shift) * torch.exp(neg_s)
            a, b = (a, y) if fixed_first else (y, b)
            ladj.append(neg_s.sum(-1))
        z = torch.cat([a, b], -1)
        return -0.5 * z.square().sum(-1) - features * LOG_SQRT_2PI + torch.stack(ladj).sum(0)

    return log_prob


def train_step(module: torch.nn.Module, log_prob: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    """One training step of ``module`` on the batch ``x``: zero the gradients, backpropagate the NLL."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        (-log_prob(x).mean()).backward()

    return step


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.dim)
    results = {}
    for flow, flat in (("maf", flat_maf), ("realnvp", flat_realnvp)):
        ours = peers.build("exactflow", flow, args.dim)
        candidates = {
            "exactflow": (ours.module, ours.log_prob),
            "flat loop": (ours.module, flat(ours.module, args.dim)),
        }
        torch.testing.assert_close(candidates["flat loop"][1](x), ours.log_prob(x), rtol=1e-4, atol=1e-4)
        if peers.available(PEER[flow]):
            peer = peers.build(PEER[flow], flow, args.dim)
            candidates[PEER[flow]] = (peer.module, peer.log_prob)
        times = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, (module, log_prob) in candidates.items():
                step = train_step(module, log_prob, x)
                for _ in range(3):
                    step()
                start, n = time.perf_counter(), 0
                while time.perf_counter() - start < 0.05:
                    step()
                    n += 1
                times[name].append((time.perf_counter() - start) / n * 1e3)
        medians = {name: statistics.median(t) for name, t in times.items()}
        results[flow] = medians
        line = ", ".join(f"{name} {ms:.3f} ms" for name, ms in medians.items())
        if PEER[flow] in medians:
            best = medians[PEER[flow]]
            line += f" | best peer / exactflow {best / medians['exactflow']:.2f}x, best peer / flat loop " \
                    f"{best / medians['flat loop']:.2f}x"
        print(f"{flow} train step, d={args.dim}, batch {args.batch}: {line}")
    return results


if __name__ == "__main__":
    main()
