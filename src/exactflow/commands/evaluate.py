"""``exactflow eval``: the NLL of a saved flow on a split of its data set (nats; bits/dim for images)."""

from __future__ import annotations

import argparse
import json

from ._shared import add_batch_size_option, load_run, run_data

EPILOG = """\
examples:
  exactflow eval runs/moons                    # test split of the data set it was trained on
  exactflow eval runs/moons/model.safetensors --split valid
  exactflow eval runs/table --data other.csv --data-arg test=0.5 --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="test NLL of a saved flow (nats, bits/dim for images)", epilog=EPILOG,
                              description="Mean negative log-likelihood of a saved flow on a data split.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder or .safetensors checkpoint")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test", help="which split (default test)")
    p.add_argument("--data", help="evaluate on this data set name or .csv/.npy file instead of the recorded one")
    p.add_argument("--data-arg", dest="data_args", action="append", metavar="KEY=VALUE",
                   help="loader keyword for --data")
    add_batch_size_option(p, 4096, what="evaluation batch size")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from ..training import evaluate

    flow, _, record = load_run(args.model, args.device)
    ds = run_data(record, args.data, args.data_args)
    x = getattr(ds, args.split)
    levels = ds.levels if ds.kind == "image" else None
    context = None if ds.context is None else ds.context[("train", "valid", "test").index(args.split)]
    result = evaluate(flow, x, batch_size=args.batch_size, levels=levels, context=context)
    result["split"] = args.split
    if args.json:
        print(json.dumps(result))
    else:
        line = f"{args.split} NLL {result['nll']:.4f} nats"
        if "bits_per_dim" in result:
            line += f", {result['bits_per_dim']:.4f} bits/dim"
        print(f"{line} ({result['n']} points of {ds.name})")
    return 0
