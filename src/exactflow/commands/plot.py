"""``exactflow plot``: the pictures of a saved run (2-D: density, samples, morph grid and GIF, curves)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import load_run, run_data

EPILOG = """\
examples:
  exactflow plot runs/moons                   # rewrite the pictures into the run folder
  exactflow plot runs/moons --out pictures/   # somewhere else
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="pictures of a saved run", epilog=EPILOG,
                              description="Draw the pictures of a saved run: for 2-D data the learned density "
                                          "beside the data, samples beside the data, the layer-by-layer morph "
                                          "(PNG grid and GIF) and the training curves; for images a sample grid.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder or .safetensors checkpoint")
    p.add_argument("--out", help="folder for the pictures (default: the run folder)")
    p.add_argument("--data", help="draw this data set name or .csv/.npy file instead of the recorded one")
    p.add_argument("--data-arg", dest="data_args", action="append", metavar="KEY=VALUE",
                   help="loader keyword for --data")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from .. import checkpoint, plots

    flow, header, record = load_run(args.model)
    path = checkpoint.resolve(args.model)
    out = Path(args.out) if args.out else path.parent
    history = header["info"].get("history") or header["info"].get("training_state", {}).get("history")
    if flow.event_shape == (2,):
        ds = run_data(record, args.data, args.data_args)
        written = plots.plot_2d(flow, ds.test, out, history if history and history["step"] else None)
    elif len(flow.event_shape) == 3:
        written = [plots.image_grid(flow.sample(64), out / "samples.png")]
        if history and history["step"]:
            written.append(plots.curves(history, out / "curves.png"))
    elif history and history["step"]:
        written = [plots.curves(history, out / "curves.png")]
    else:
        raise ValueError(f"nothing to draw for a flow on shape {flow.event_shape} without a training history")
    for p in written:
        print(p)
    return 0
