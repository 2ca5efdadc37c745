"""The ``exactflow`` command line: ``exactflow COMMAND ...`` or ``python -m exactflow COMMAND ...``.

Subcommands live in `exactflow.commands`, one module each, found automatically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .commands._shared import Sizes

EXAMPLES = """\
examples:
  exactflow demo                                   # two moons, checkpoint and pictures in runs/demo
  exactflow list                                   # flows, transforms and data sets
  exactflow train moons --flow RealNVP --steps 2000 --out runs/moons
  exactflow train data.csv --flow NICE --hidden 128,128 --steps 5000   # standardised inside the model
  exactflow train --config run.toml                # every option can be set in TOML or YAML
  exactflow train moons --out runs/moons --resume  # continue an interrupted run
  exactflow eval runs/moons                        # test NLL in nats (bits/dim for images)
  exactflow sample runs/moons -n 1000 -o samples.npy
  exactflow plot runs/moons                        # density, samples, curves, layer-by-layer morph
  exactflow check runs/moons                       # numerical verification of the saved model
  torchrun --nproc_per_node=2 -m exactflow train moons --out runs/ddp   # DistributedDataParallel
"""


def build_parser() -> argparse.ArgumentParser:
    from .commands import discover

    parser = argparse.ArgumentParser(
        prog="exactflow", description="Normalizing flows with exact, verified log-likelihoods.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in discover():
        module.register(sub)
    return parser


def load_config(path: str | Path) -> dict:
    """Options from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file: a flat table of option names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML ({err})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError("YAML config files need pyyaml: pip install 'exactflow[cli]'") from None
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    else:
        raise ValueError(f"config file {str(path)!r}: expected .toml, .yaml or .yml")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of options, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _apply_config(parser: argparse.ArgumentParser, argv: list[str] | None,
                  args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse with the config file's values as defaults, so command-line flags still win."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    config = load_config(args.config)
    actions = [a for a in sub._actions if a.dest not in ("help", "config")]
    known = {a.dest: a for a in actions}
    spellings = {o.lstrip("-").replace("-", "_"): a for a in actions for o in a.option_strings}  # aliases too
    unknown = sorted(set(config) - set(known) - set(spellings))
    if unknown:
        raise ValueError(f"{args.config}: unknown option(s) {', '.join(unknown)} for '{args.command}'; "
                         f"known: {', '.join(sorted(known))}")
    for key, value in config.items():
        action = known.get(key) or spellings[key]
        try:
            value = _config_value(action, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"{args.config}: option {key} = {value!r}: {err}") from None
        if isinstance(action, Sizes):  # one list of sizes however the file wrote them (64 or "64,64" each)
            value = [size for sizes in value for size in sizes]
        sub.set_defaults(**{action.dest: value})
    return parser.parse_args(argv)


def _config_value(action: argparse.Action, value: Any) -> Any:
    """A config file's ``value`` for ``action``, converted and checked as argparse would check it on the command
    line (type, choices); a ``ValueError`` says what was expected."""
    if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
        if isinstance(value, dict):
            value = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items()]
        elif not isinstance(value, list):
            value = [value]
        return [_config_scalar(action, v) for v in value]
    return _config_scalar(action, value)


def _config_scalar(action: argparse.Action, value: Any) -> Any:
    """One value of a config file for ``action`` (a flag, an ``int``/``float``/text-parsing option, or free text)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if action.type in (int, float):
        what = "an integer" if action.type is int else "a number"
        allowed = (int, str) if action.type is int else (int, float, str)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError(f"expected {what}")
        try:
            value = action.type(value)
        except ValueError:
            raise ValueError(f"expected {what}") from None
    elif action.type is not None:  # a parser of text such as "64,64": give it a list as that text
        value = action.type(",".join(map(str, value)) if isinstance(value, list) else str(value))
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    return value


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Warnings as one line, ``exactflow: warning: ...``, without the source line of the code that raised them."""
    print(f"exactflow: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if getattr(args, "config", None):
                args = _apply_config(parser, argv, args)
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("exactflow: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, OSError, RuntimeError) as err:
        if os.environ.get("EXACTFLOW_TRACEBACK"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"exactflow: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug, not bad input: still one line, with a way to see the traceback
        if os.environ.get("EXACTFLOW_TRACEBACK"):
            raise
        print(f"exactflow: internal error: {type(err).__name__}: {err} (EXACTFLOW_TRACEBACK=1 shows the traceback)",
              file=sys.stderr)
        return 3
