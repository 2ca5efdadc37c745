"""``exactflow list``: what the registries hold (flows, transforms, data sets)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list registered flows, transforms and data sets",
                              description="List what the registries hold.")
    p.add_argument("what", nargs="?", choices=("flows", "transforms", "data"), help="only this registry")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from ..data import registry as data
    from ..flows import registry as flows
    from ..transforms import registry as transforms

    sections = {"flows": flows, "transforms": transforms, "data": data}
    for title, reg in sections.items():
        if args.what not in (None, title):
            continue
        print(f"{title}:")
        for name, entry in sorted(reg.items()):
            print(f"  {name:<20} {entry.doc}")
    return 0
