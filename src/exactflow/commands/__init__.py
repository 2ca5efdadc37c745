"""Subcommands of the ``exactflow`` command line, one module each, found automatically.

To add a command, add a module to this package (no other file changes) defining

    def register(subparsers: argparse._SubParsersAction) -> None:
        p = subparsers.add_parser("name", help="one line for the overview",
                                  description="...", epilog="examples: ...")
        p.add_argument(...)
        p.set_defaults(run=main)        # main(args: argparse.Namespace) -> int (exit status)

If the parser has a ``--config`` option (dest ``config``), every other option can also be set in
that TOML or YAML file (keys are the option names, ``-`` or ``_``); flags on the command line win.
A command reports bad input by raising ``ValueError`` / ``FileNotFoundError`` with a one-line
message: ``exactflow.cli.main`` prints it as ``exactflow: error: ...`` with exit status 2, never a
traceback. Modules whose name starts with ``_`` hold shared helpers and are not commands.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["discover"]


def discover() -> list[ModuleType]:
    """Every command module of this package (names not starting with ``_``), sorted by name."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
