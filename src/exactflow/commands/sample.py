"""``exactflow sample``: draw from a saved flow into .npy, .csv or a .png picture."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ._shared import load_run

EPILOG = """\
examples:
  exactflow sample runs/moons -n 10000 -o samples.npy
  exactflow sample runs/table -n 500 -o samples.csv     # in the original units of the table
  exactflow sample runs/moons -n 5000 -o samples.png    # scatter plot (2-D) or image grid (images)
"""

FORMATS = (".npy", ".csv", ".png")


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="draw samples into .npy, .csv or .png", epilog=EPILOG,
                              description="Draw samples from a saved flow.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder or .safetensors checkpoint")
    p.add_argument("-n", "--num", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("-o", "--output", required=True, help="output file: .npy, .csv or .png")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from .. import plots

    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"output {str(out)!r}: expected one of {', '.join(FORMATS)}")
    if args.num < 1:
        raise ValueError(f"-n must be positive, got {args.num}")
    flow, _, _ = load_run(args.model, args.device)
    if flow.context_features:
        raise ValueError("this flow is conditional; sampling it from the command line is not supported")
    torch.manual_seed(args.seed)
    x = flow.sample(args.num).cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        np.save(out, x.numpy())
    elif suffix == ".csv":
        if x.dim() != 2:
            raise ValueError(f"samples of shape {tuple(x.shape[1:])} do not fit in a CSV table; use .npy")
        np.savetxt(out, x.numpy(), delimiter=",", fmt="%.7g")
    elif x.dim() == 4:
        plots.image_grid(x[:256], out)
    elif x.dim() == 2 and x.shape[1] == 2:
        plots.scatter(x, out)
    else:
        raise ValueError(f"a PNG needs 2-D points or images; these samples have shape {tuple(x.shape[1:])}")
    print(f"wrote {args.num} samples to {out}")
    return 0
