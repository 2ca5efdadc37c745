"""Helpers shared by the subcommands: data sets from names or files, ``KEY=VALUE`` options, saved runs, and the
options every subcommand spells the same way (``--depth``, ``--hidden``, ``--batch-size``, ``--no-plots``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Dataset
from ..data import registry as datasets
from ..registry import Entry
from ..validation import check_device

if TYPE_CHECKING:
    from ..distributions import Flow

FILE_SUFFIXES = (".csv", ".npy")


def add_threads_option(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """The shared ``--threads N`` option (torch's intra-op threads; ``default`` None: torch's choice)."""
    shown = "torch's choice" if default is None else default
    p.add_argument("--threads", type=int, default=default, help=f"CPU threads for torch (default: {shown}; "
                   "1 is fastest for small networks and on a busy machine)")


def sizes(text: str) -> list[int]:
    """Layer sizes from ``"64,64"`` (or one size, ``"64"``), for `Sizes`."""
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 64,64 or 64 64, got {text!r}") from None


class Sizes(argparse.Action):
    """``--hidden 64,64`` and ``--hidden 64 64`` alike: the values' sizes, in one flat list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [size for value in values for size in value])


def add_hidden_option(p: argparse.ArgumentParser, default: list[int] | None = None,
                      what: str = "the flow's networks") -> None:
    """The shared ``--hidden`` option: hidden layer sizes, ``64,64`` or ``64 64``."""
    shown = "the flow's own" if default is None else ",".join(map(str, default))
    p.add_argument("--hidden", type=sizes, nargs="+", action=Sizes, default=default, metavar="SIZES",
                   help=f"hidden layer sizes of {what}, e.g. 64,64 or 64 64 (default: {shown})")


def add_depth_option(p: argparse.ArgumentParser, default: int | None = None, dest: str = "depth",
                     what: str = "the flow") -> None:
    """The shared ``--depth`` option (number of layers, steps or blocks; ``--layers`` and ``--transforms`` are
    accepted for it)."""
    shown = "the flow's own" if default is None else default
    p.add_argument("--depth", "--layers", "--transforms", dest=dest, type=int, default=default,
                   help=f"depth of {what}: number of layers, steps or blocks (default: {shown})")


def add_batch_size_option(p: argparse.ArgumentParser, default: int, dest: str = "batch_size",
                          what: str = "batch size") -> None:
    """The shared ``--batch-size`` option (``--batch`` is accepted for it)."""
    p.add_argument("--batch-size", "--batch", dest=dest, type=int, default=default,
                   help=f"{what} (default %(default)s)")


def apply_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` if given; a non-positive count is a one-line error."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)


def assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``; values are read as JSON when they parse (numbers, lists, true), else strings."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must look like KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def data_record(data: str, kwargs: dict[str, Any]) -> dict:
    """How to rebuild a data set: a registry name, or a .csv/.npy path (loaded by the ``tabular`` loader)."""
    if Path(data).suffix.lower() in FILE_SUFFIXES:
        return {"name": "tabular", "kwargs": {**kwargs, "path": str(Path(data).resolve())}}
    if data not in datasets:
        raise ValueError(f"unknown data set {data!r}: give a .csv/.npy file or one of {', '.join(sorted(datasets))}")
    return {"name": data, "kwargs": kwargs}


def build_data(record: dict) -> Dataset:
    """The data set a `data_record` describes; a tabular file must still have the recorded SHA-256."""
    try:
        ds = datasets.build(record["name"], **record["kwargs"])
    except TypeError as err:
        raise ValueError(f"data set {record['name']!r}: {err}") from None
    saved = record.get("info", {}).get("sha256")
    if saved is not None and ds.info.get("sha256") != saved:
        raise ValueError(f"data file {record['kwargs'].get('path')} changed since the model was trained "
                         "(SHA-256 differs)")
    return ds


def describe(ds: Dataset, record: dict) -> dict:
    """The record plus what the data set says about itself (kind, shape, levels, splits)."""
    return {**record, "kind": ds.kind, "shape": list(ds.shape), "levels": ds.levels, "info": ds.info}


def flow_kwargs(entry: Entry, ds: Dataset, extra: dict[str, Any]) -> dict[str, Any]:
    """Sizes for the registry ``entry``: ``features=`` or ``shape=`` from the data, plus ``extra`` options
    checked against the factory's signature (deprecated names of its options pass, to warn when it is built)."""
    import inspect

    if entry.input == "image" and ds.kind != "image":
        raise ValueError(f"flow {entry.name!r} is for images but data set {ds.name!r} holds vectors "
                         f"of shape {ds.shape}")
    if entry.input != "image" and ds.kind == "image":
        raise ValueError(f"flow {entry.name!r} is for vectors but data set {ds.name!r} holds images {ds.shape}; "
                         "pick an image flow (exactflow list)")
    size = {"shape": list(ds.shape)} if entry.input == "image" else {"features": ds.shape[0]}
    params = inspect.signature(entry.factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [n for n in params if n not in ("features", "shape", "context")]
        unknown = [k for k in extra if (k not in params and k not in entry.renamed) or k in ("features", "shape")]
        if unknown:
            raise ValueError(f"flow {entry.name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options: {', '.join(allowed) or 'none'}")
    return {**size, **extra}


def device(name: str | None) -> torch.device:
    """The ``--device`` option: ``auto`` (or None) is cuda when available, else cpu; others are checked."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)


def load_run(path: str | Path, device_name: str | None = "cpu") -> tuple[Flow, dict, dict | None]:
    """``(flow, header, data record)`` of a saved run folder or checkpoint file."""
    from .. import checkpoint

    header = checkpoint.info(path)
    flow = checkpoint.load(path, device=device(device_name))
    return flow, header, header["info"].get("data")


def run_data(record: dict | None, override: str | None, data_args: list[str] | None = None) -> Dataset:
    """The data set of a saved run (or ``override``, a name or file, instead)."""
    if override is not None:
        return build_data(data_record(override, assignments(data_args, "--data-arg")))
    if record is None:
        raise ValueError("this checkpoint records no data set; pass --data NAME_OR_FILE")
    return build_data(record)
