"""Sample grids of a class-conditional TarFlow run, one row per class, without and with classifier-free guidance.

    OMP_NUM_THREADS=1 .venv/bin/python -m exactflow train digits --flow TarFlow --noise 0.05 \\
        --data-arg labels=true --flow-arg classes=10 --flow-arg channels=32 --flow-arg layers_per_block=1 \\
        --depth 4 --batch-size 64 --steps 2000 --out runs/tarflow_classes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tarflow_classes.py runs/tarflow_classes --guidance 0 1 3 --out docs

Writes ``tarflow_classes_w{w}.png`` (``K`` rows of ``--per-class`` samples, the same latents for every ``w``) and
prints the run's test bits/dim given the label and with the null label (the unconditional density).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from exactflow import checkpoint
from exactflow.commands._shared import load_run, run_data
from exactflow.images import bits_per_dim, dequantize
from exactflow.plots import image_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder of a class-conditional TarFlow")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--out", default="docs")
    args = p.parse_args()
    torch.set_num_threads(1)
    flow, _, record = load_run(args.run)
    k = flow.classes
    ds = run_data(record, None)
    with torch.no_grad():
        y = dequantize(ds.test, ds.levels, torch.Generator().manual_seed(0))
        given = bits_per_dim(flow.log_prob(y, ds.context[2]), ds.shape, ds.levels).mean().item()
        null = bits_per_dim(flow.log_prob(y, torch.full_like(ds.context[2], k)), ds.shape, ds.levels).mean().item()
    steps = checkpoint.info(Path(args.run) / "model.safetensors")["info"]["history"]["step"][-1]
    print(f"{args.run}: {steps} steps; test bits/dim {given:.3f} given the label, {null:.3f} with the null label")
    for w in args.guidance:
        torch.manual_seed(0)
        x = flow.sample(args.per_class, label=list(range(k)), guidance=w)  # (per class, K, *event)
        path = image_grid(x.transpose(0, 1).reshape(-1, *ds.shape), Path(args.out) / f"tarflow_classes_w{w:g}.png",
                          nrow=args.per_class)
        print(f"guidance {w:g}: {path}")


if __name__ == "__main__":
    main()
