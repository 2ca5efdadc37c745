"""``exactflow check``: run exactflow's numerical verification on a saved flow."""

from __future__ import annotations

import argparse

import torch

from ._shared import load_run, run_data

EPILOG = """\
examples:
  exactflow check runs/moons             # on 16 test points of the recorded data set
  exactflow check runs/moons -n 64 --atol 1e-5
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="verify a saved flow numerically (round trips, log-det vs autograd)",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Run exactflow.testing.check_flow on a saved flow in float64: round trips "
                                          "both ways, log|det| against the autograd Jacobian, batch independence, "
                                          "sampling shapes, gradients. Exit status 1 if a check fails.")
    p.add_argument("model", help="run folder or .safetensors checkpoint")
    p.add_argument("-n", "--num", type=int, default=16, help="number of points to check on (default 16)")
    p.add_argument("--atol", type=float, help="float64 tolerance (default: the flow's registered tolerance)")
    p.add_argument("--data", help="check on points of this data set name or file instead of the recorded one")
    p.add_argument("--data-arg", dest="data_args", action="append", metavar="KEY=VALUE",
                   help="loader keyword for --data")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from ..flows import registry as flows
    from ..images import dequantize
    from ..testing import check_flow

    if args.num < 1:
        raise ValueError(f"-n must be a positive number of points, got {args.num}")
    flow, header, record = load_run(args.model)
    name = header["spec"].get("flow", "Flow")  # a preset, or a flow composed by hand
    if record is not None or args.data is not None:
        ds = run_data(record, args.data, args.data_args)
        x = ds.test[: args.num]
        if ds.kind == "image":
            x = dequantize(x, ds.levels, generator=torch.Generator().manual_seed(0))
    else:
        x = flow.sample(args.num)
    atol = args.atol if args.atol is not None else flows[name].tolerance if name in flows else 1e-5
    try:
        check_flow(flow.double(), x.double(), atol=atol, name=name)
    except AssertionError as err:
        print(f"FAILED: {err}")
        return 1
    print(f"ok: {name} passed every check on {x.shape[0]} points in float64 (atol {atol:g})")
    return 0
