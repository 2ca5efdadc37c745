"""TarFlow sampling with and without the key/value cache: wall time and agreement.

    .venv/bin/python benchmarks/tarflow_kv_cache.py [--reps 7] [--batch 16]

For each configuration, a randomised TarFlow (``blocks`` blocks) samples the same latent batch with the
cache (one patch of work per step) and without it (the whole prefix recomputed per step). The two are
timed round-robin in one process; the table gives medians, the speed-up and the largest difference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from exactflow.flows import registry
from exactflow.testing import randomize_
from exactflow.transforms.tarflow import TarFlowBlock

CONFIGS = [  # (shape, patch) -> number of patches
    ((1, 8, 8), 2),    # 16
    ((1, 8, 8), 1),    # 64
    ((3, 16, 16), 2),  # 64
    ((1, 16, 16), 1),  # 256
]


def sample(flow, z: torch.Tensor, use_cache: bool) -> torch.Tensor:
    """Latent -> data through every block (last block first), then the logit preprocessing."""
    layers = flow.transform.bijections
    with torch.no_grad():
        for b in reversed(layers):
            z = b.inverse(z, use_cache=use_cache)[0] if isinstance(b, TarFlowBlock) else b.inverse(z)[0]
    return z


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--channels", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, blocks {args.blocks}, "
          f"channels {args.channels}, 2 layers/block, 4 heads")
    print("| shape | patch | patches | cached (s) | no cache (s) | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for shape, patch in CONFIGS:
        flow = registry["TarFlow"](shape=shape, patch=patch, channels=args.channels, depth=args.blocks,
                                   layers_per_block=2, heads=4)
        randomize_(flow, 0.05).eval()
        z = torch.randn(args.batch, *shape)
        times = {True: [], False: []}
        out = {}
        for _ in range(args.reps):
            for use_cache in (True, False):
                t0 = time.perf_counter()
                out[use_cache] = sample(flow, z, use_cache)
                times[use_cache].append(time.perf_counter() - t0)
        tc, tn = statistics.median(times[True]), statistics.median(times[False])
        tokens = flow.transform.bijections[1].tokens
        diff = (out[True] - out[False]).abs().max().item()
        print(f"| {shape} | {patch} | {tokens} | {tc:.3f} | {tn:.3f} | {tn / tc:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
