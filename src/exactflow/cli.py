"""The ``exactflow`` command line."""

from __future__ import annotations

import argparse
import sys

import torch


def _demo(args: argparse.Namespace) -> int:
    from .data import registry as data
    from .flows import registry

    torch.manual_seed(args.seed)
    ds = data.build("moons", seed=args.seed)
    train, test = ds.train, ds.test
    flow = registry.build(args.flow, features=2)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for step in range(args.steps):
        batch = train[torch.randint(len(train), (512,))]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step:5d}  train NLL {loss.item():.3f}")
    with torch.no_grad():
        print(f"test NLL {-flow.log_prob(test).mean().item():.3f} nats")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .flows import registry as flows
    from .transforms import registry as transforms

    for title, reg in (("flows", flows), ("transforms", transforms)):
        print(f"{title}:")
        for name, entry in sorted(reg.items()):
            print(f"  {name:<20} {entry.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exactflow", description="Normalizing flows with exact likelihoods.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit a flow to two moons and report the test NLL")
    demo.add_argument("--flow", default="RealNVP")
    demo.add_argument("--steps", type=int, default=1500)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    sub.add_parser("list", help="list registered flows and transforms").set_defaults(run=_list)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"exactflow: error: {err}", file=sys.stderr)
        return 2
