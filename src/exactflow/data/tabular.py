"""Tabular data from a local ``.csv`` or ``.npy`` file, split into train/valid/test by a seeded permutation.

The split is recorded in ``Dataset.info`` (file, its SHA-256, seed, fractions, sizes, and the column
names of a CSV header), so the same file and seed always give the same rows in each split. Columns named by
``context_cols`` become the data set's context (a conditional flow models the other columns given them).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..registry import DATASETS

if TYPE_CHECKING:
    from . import Dataset

__all__ = ["context_indices", "csv_header", "read_table", "tabular"]


def csv_header(path: str | Path) -> list[str] | None:
    """The column names of a ``.csv`` file's first line, or None when that line holds numbers (no header)."""
    with open(path) as f:
        first = f.readline()
    if not first.strip():
        return None
    try:
        [float(v) for v in first.strip().split(",")]
    except ValueError:
        return [name.strip() for name in first.strip().split(",")]
    return None


def read_table(path: str | Path) -> Tensor:
    """Rows of a ``.npy`` array or a comma-separated ``.csv`` file (an optional header line is skipped) as float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".csv":
        skip = 0 if csv_header(path) is None else 1
        try:
            with warnings.catch_warnings():  # an empty table is reported below, as an error
                warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
                array = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{path}: not a numeric CSV table ({err})") from None
    else:
        raise ValueError(f"data file {str(path)!r}: expected a .csv or .npy file")
    if array.size == 0:
        what = "only a header line" if suffix == ".csv" and skip else "no rows"
        raise ValueError(f"{path}: the table holds no data ({what})")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric table (rows, features), got {array.dtype} of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: contains {int((~np.isfinite(array)).sum())} NaN/inf entries")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def context_indices(spec: str | int | Sequence[int | str], width: int, columns: list[str] | None,
                    path: str | Path) -> list[int]:
    """The column indices named by ``spec``: indices (negative ones count from the end) or header names, as a list
    or a comma-separated string such as ``"0,2"`` or ``"age,height"``."""
    items = [v.strip() for v in spec.split(",") if v.strip()] if isinstance(spec, str) else \
        [spec] if isinstance(spec, int) else list(spec)
    out = []
    for item in items:
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            if columns is None or item not in columns:
                have = f"its header names: {', '.join(columns)}" if columns else "it has no header line"
                raise ValueError(f"{path}: no context column named {item!r} ({have})")
            out.append(columns.index(item))
            continue
        i = int(item)
        if not -width <= i < width:
            raise ValueError(f"{path}: context column {i} is out of range for a table of {width} columns")
        out.append(i % width)
    if not out or len(set(out)) != len(out) or len(out) >= width:
        raise ValueError(f"{path}: context columns {spec!r} must name distinct columns and leave at least one "
                         f"column to model ({width} in the table)")
    return out


@DATASETS.register("tabular")
def tabular(path: str, valid: float = 0.1, test: float = 0.1, seed: int = 0,
            context_cols: str | int | Sequence[int | str] | None = None) -> Dataset:
    """Rows of a .csv/.npy file (path=...), split train/valid/test by a seeded permutation; ``context_cols``
    (indices or header names) are split off as the context of a conditional flow."""
    from . import Dataset

    if not (0 <= valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"split fractions valid={valid}, test={test} must be in [0, 1) with valid + test < 1")
    x = read_table(path)
    n = x.shape[0]
    n_valid, n_test = round(valid * n), max(1, round(test * n))
    n_train = n - n_valid - n_test
    if n_train < 2:
        raise ValueError(f"{path}: {n} rows are too few for a split with valid={valid}, test={test}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [n_train, n_valid, n_test]
    info = {"file": str(Path(path).resolve()), "sha256": _sha256(Path(path)), "seed": seed,
            "fractions": [1 - valid - test, valid, test], "sizes": sizes}
    columns = csv_header(path) if Path(path).suffix.lower() == ".csv" else None
    if columns is not None and len(columns) != x.shape[1]:
        columns = None
    context = None
    if context_cols is not None:
        cols = context_indices(context_cols, x.shape[1], columns, path)
        keep = [i for i in range(x.shape[1]) if i not in cols]
        context = tuple(torch.split(x[order][:, cols], sizes))
        info["context_columns"] = [columns[i] for i in cols] if columns is not None else cols
        x = x[:, keep]
        columns = None if columns is None else [columns[i] for i in keep]
    if columns is not None:
        info["columns"] = columns
    parts = torch.split(x[order], sizes)
    return Dataset(Path(path).stem, *parts, info=info, context=context)
