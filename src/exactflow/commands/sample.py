"""``exactflow sample``: draw from a saved flow into .npy, .csv or a .png picture."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._shared import load_run

if TYPE_CHECKING:
    from ..distributions import Flow

EPILOG = """\
examples:
  exactflow sample runs/moons -n 10000 -o samples.npy
  exactflow sample runs/table -n 500 -o samples.csv     # in the original units of the table
  exactflow sample runs/moons -n 5000 -o samples.png    # scatter plot (2-D) or image grid (images)
  exactflow sample runs/cond -n 100 --context 1.5,0.2 -o s.csv  # a conditional flow, one context row
  exactflow sample runs/cond -n 100 --context ctx.csv -o s.npy  # n samples per row of the file, row by row
  exactflow sample runs/glow -n 64 --temperature 0.7 -o s.png   # image flows: scaled base noise
  exactflow sample runs/tarflow -n 64 --label 3 --guidance 2 -o s.png  # class-conditional TarFlow, guided
  exactflow sample runs/tarflow -n 64 --no-denoise -o raw.png    # TarFlow trained with --noise: skip the score step
  exactflow sample runs/tarflow -n 64 --sampler jacobi --segments 2 -o s.png  # GS-Jacobi instead of the KV cache
"""

FORMATS = (".npy", ".csv", ".png")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="draw samples into .npy, .csv or .png", epilog=EPILOG,
                              description="Draw samples from a saved flow.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder or .safetensors checkpoint")
    p.add_argument("-n", "--num", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("-o", "--output", required=True, help="output file: .npy, .csv or .png")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--context", help="context of a conditional flow: comma-separated values (one row) or a "
                   ".csv/.npy file of rows; -n samples are drawn per row, grouped row by row")
    p.add_argument("--temperature", type=float, help="image flows: scale the base noise by this factor (e.g. 0.7)")
    p.add_argument("--label", type=int, help="class-conditional TarFlow (classes=K): the class index to draw")
    p.add_argument("--guidance", type=float, help="with --label: classifier-free guidance weight w (0: none)")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="TarFlow trained with noise: clean the samples by a score step (default: on when the model "
                   "was trained with --noise; --no-denoise to skip)")
    p.add_argument("--sampler", choices=("kv", "jacobi"), help="TarFlow: invert the blocks patch by patch with a "
                   "key/value cache (kv, the default) or by parallel Jacobi iteration (jacobi)")
    p.add_argument("--segments", type=int, help="with --sampler jacobi: Gauss-Seidel segments per block (default 1)")
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
    extra = {}
    if args.label is not None or args.guidance is not None:
        if "label" not in inspect.signature(flow.sample).parameters or args.label is None or args.context:
            raise ValueError("--label (with --guidance, optional) is for class-conditional TarFlow, without --context")
        extra.update(label=args.label, guidance=args.guidance or 0.0)
    if getattr(flow, "classes", 0) and args.label is None and args.context is None:
        raise ValueError(f"this TarFlow is class-conditional ({flow.classes} classes): pass --label K (0 .. "
                         f"{flow.classes - 1}), optionally with --guidance W")
    context = None if args.label is not None else _context(args.context, flow)
    recipe = {"denoise": args.denoise, "sampler": args.sampler, "segments": args.segments}
    for key, value in recipe.items():
        if value is None:
            continue
        if key not in inspect.signature(flow.sample).parameters:
            raise ValueError(f"--{'no-' if value is False else ''}{key} is for TarFlow; this is a {flow.spec['flow']}")
        extra[key] = value
    if args.segments is not None and args.sampler != "jacobi":
        raise ValueError("--segments goes with --sampler jacobi")
    if args.temperature is not None:
        if "temperature" not in inspect.signature(flow.sample).parameters:
            raise ValueError(f"--temperature is for image flows (Glow, RealNVPImage); this is a {flow.spec['flow']}")
        extra["temperature"] = args.temperature
    torch.manual_seed(args.seed)
    x = flow.sample(args.num, context, **extra).cpu()
    if context is not None:  # (n, rows, *event) -> rows blocks of n samples
        x = x.transpose(0, 1).reshape(-1, *x.shape[2:])
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
    print(f"wrote {len(x)} samples to {out}")
    return 0


def _context(text: str | None, flow: Flow) -> torch.Tensor | None:
    """The ``--context`` rows for ``flow``: values on the command line or a .csv/.npy file; checked against the
    flow's number of context features."""
    from ..data.tabular import read_table
    from ..objectives import reference

    want = flow.context_features
    if text is None:
        if want:
            raise ValueError(f"this flow is conditional on {want} context value(s): pass --context V1,V2,... "
                             "or --context FILE.csv")
        return None
    if not want:
        raise ValueError("--context given, but this flow is unconditional")
    if Path(text).suffix.lower() in (".csv", ".npy"):
        rows = read_table(text)
    else:
        try:
            rows = torch.tensor([[float(v) for v in text.split(",")]])
        except ValueError:
            raise ValueError(f"--context {text!r}: expected comma-separated numbers or a .csv/.npy file") from None
    if rows.shape[1] != want:
        raise ValueError(f"--context has {rows.shape[1]} value(s) per row; this flow takes {want}")
    ref = reference(flow)
    return rows.to(device=ref.device, dtype=ref.dtype)
