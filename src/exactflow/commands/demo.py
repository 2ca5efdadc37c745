"""``exactflow demo``: train the default flow on two moons and write everything a run writes."""

from __future__ import annotations

import argparse

from .train import add_training_options, print_summary, train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train a flow on two moons (about a minute) and draw it",
                              description="Train the default flow (--flow auto: the preset and training recipe "
                                          "chosen by measurement) on two moons, write the checkpoint, "
                                          "pictures and the interactive explorer (explorer.html) to runs/demo, and "
                                          "print their paths and the test NLL.")
    add_training_options(p, steps=1500, threads=1)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo, replaced if present)")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    args.data, args.data_args, args.resume, args.overwrite, args.config = "moons", args.data_args, False, True, None
    summary = train(args)
    if summary["status"] == "diverged":
        raise ValueError(summary["message"])
    print_summary(summary)
    if args.plots:
        from .explore import write

        try:
            print(f"  explorer    {write(summary['out'])}")
        except ImportError as err:  # plotly is in the "plot" extra; the run itself is complete
            print(f"  explorer    not written: {err}")
    return 0
