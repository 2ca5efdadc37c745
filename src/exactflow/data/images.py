"""Image data sets as integer pixel levels: scikit-learn's 8x8 digits, MNIST-format IDX files, ``.npy`` arrays.

Every loader returns a `Dataset` with ``kind="image"``, float tensors of
integer levels ``0..levels-1`` of shape ``(N, C, H, W)``, and ``levels`` set; dequantise with
`exactflow.images.dequantize` before fitting a density. Nothing is downloaded: the IDX and
``.npy`` loaders read files you point to.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..registry import DATASETS

if TYPE_CHECKING:
    from . import Dataset

__all__ = ["digits", "idx_images", "npy_images", "read_idx"]

# IDX type byte -> numpy big-endian dtype (LeCun's MNIST format)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped, ``.gz``): magic ``0 0 type ndim``, ``ndim`` big-endian int32
    sizes, then the values row-major."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file not found: {path}")
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {dims} ({expected} bytes of data) but the file has "
                         f"{len(raw) - header}")
    return np.frombuffer(raw[header:], dtype=dtype).reshape(dims)


def _as_images(array: np.ndarray, source: str, channels_last: bool) -> Tensor:
    """``(N, H, W)`` -> ``(N, 1, H, W)``; ``(N, C, H, W)`` as is (``(N, H, W, C)`` with ``channels_last``)."""
    if array.ndim == 3 and not channels_last:
        array = array[:, None]
    elif array.ndim == 4 and channels_last:
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4:
        raise ValueError(f"{source}: expected images of shape (N, H, W) or (N, C, H, W)"
                         f"{' / (N, H, W, C)' if channels_last else ''}, got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))


def _levels(x: Tensor, levels: int | None, dtype: np.dtype, source: str) -> int:
    """Check that pixels are integers in ``0..levels-1``; default levels: 256 for uint8, else max + 1."""
    if not torch.isfinite(x).all() or (x != torch.round(x)).any() or (x < 0).any():
        raise ValueError(f"{source}: pixel values must be non-negative integer levels (quantise float images first)")
    top = int(x.max()) if x.numel() else 0
    if levels is None:
        levels = 256 if dtype == np.uint8 else top + 1
    if top >= levels:
        raise ValueError(f"{source}: pixel value {top} does not fit levels={levels} (values must be 0..levels-1)")
    return levels


def _split(name: str, x: Tensor, test: Tensor | None, valid: float, test_fraction: float, seed: int,
           levels: int, info: dict) -> Dataset:
    """A fixed shuffled split (``seed``): ``valid`` of the data for validation, and ``test_fraction`` for
    test unless a separate test set is given."""
    from . import Dataset

    if not (0 <= valid < 1 and 0 <= test_fraction < 1 and valid + test_fraction < 1):
        raise ValueError(f"valid={valid} and test={test_fraction} must be fractions in [0, 1) summing to less than 1")
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = 0 if test is not None else round(test_fraction * n)
    n_valid = round(valid * n)
    if n - n_test - n_valid < 1:
        raise ValueError(f"{name}: {n} images are too few to split")
    te, va, tr = order[:n_test], order[n_test : n_test + n_valid], order[n_test + n_valid :]
    test = x[te] if test is None else test
    sizes = [len(tr), len(va), test.shape[0]]
    return Dataset(name, x[tr], x[va], test, kind="image", levels=levels,
                   info={**info, "seed": seed, "sizes": sizes})


@DATASETS.register("digits")
def digits(valid: float = 0.1, test: float = 0.2, seed: int = 0, labels: bool = False) -> Dataset:
    """scikit-learn's 8x8 digits: (N, 1, 8, 8), 17 levels, fixed 1258 / 180 / 359 split by default.

    1797 images in all, pixel values 0..16; ``valid`` and ``test`` are fractions, ``seed`` fixes the shuffle.
    ``labels=True`` adds each image's digit ``0..9`` as a one-column context (for a class-conditional flow, such as
    ``TarFlow(..., classes=10)``); the images and their split are the same either way."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn: pip install 'exactflow[data]'") from err
    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32)).unsqueeze(1)
    ds = _split("digits", x, None, valid, test, seed, 17, {"source": "sklearn.datasets.load_digits"})
    if labels:
        y = torch.from_numpy(raw.target.astype(np.float32))[:, None]
        parts = _split("digits", y[:, :, None, None], None, valid, test, seed, 10, {})  # the same permutation
        ds.context = tuple(part[:, :, 0, 0] for part in (parts.train, parts.valid, parts.test))
        ds.info["labels"] = True
    return ds


def _read_npy(path: str | Path) -> np.ndarray:
    if not Path(path).is_file():
        raise ValueError(f".npy file not found: {path}")
    return np.load(path, allow_pickle=False)


def _from_files(read: Callable[[str | Path], np.ndarray], path: str, test_path: str | None, valid: float,
                test: float, levels: int | None, seed: int, channels_last: bool, name: str) -> Dataset:
    array = read(path)
    x = _as_images(array, str(path), channels_last)
    levels = _levels(x, levels, array.dtype, str(path))
    x_test = None
    if test_path is not None:
        test_array = read(test_path)
        x_test = _as_images(test_array, str(test_path), channels_last)
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"test images have shape {tuple(x_test.shape[1:])} but training images "
                             f"{tuple(x.shape[1:])}")
        _levels(x_test, levels, test_array.dtype, str(test_path))
    info = {"source": str(path), "test_source": None if test_path is None else str(test_path)}
    return _split(name, x, x_test, valid, test, seed, levels, info)


@DATASETS.register("idx_images")
def idx_images(path: str, test_path: str | None = None, valid: float = 0.1, test: float = 0.1,
               levels: int | None = None, seed: int = 0, channels_last: bool = False) -> Dataset:
    """Images from an MNIST-format IDX file you point to (path=..., ``.gz`` allowed).

    ``test_path`` gives a separate test file (e.g. MNIST's t10k), otherwise ``test`` of ``path`` is held out."""
    return _from_files(read_idx, path, test_path, valid, test, levels, seed, channels_last, Path(path).name)


@DATASETS.register("npy_images")
def npy_images(path: str, test_path: str | None = None, valid: float = 0.1, test: float = 0.1,
               levels: int | None = None, seed: int = 0, channels_last: bool = False) -> Dataset:
    """Images from a .npy array of integer levels you point to (path=...).

    Shape (N, H, W) or (N, C, H, W) (or (N, H, W, C) with ``channels_last``); ``test_path`` gives a
    separate test array, otherwise ``test`` of ``path`` is held out."""
    return _from_files(_read_npy, path, test_path, valid, test, levels, seed, channels_last, Path(path).stem)
