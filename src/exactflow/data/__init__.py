"""Data sets: a registry ``name -> loader`` whose loaders return a `Dataset`.

Each module of this package registers its loaders in `registry` (toy 2-D shapes,
tabular files, images); importing the package imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from torch import Tensor

from ..registry import DATASETS as registry

__all__ = ["Dataset", "registry"]


@dataclass
class Dataset:
    """Fixed train/valid/test splits of one data set.

    ``kind`` is ``"vector"`` (``shape == (features,)``) or ``"image"`` (``shape == (C, H, W)``);
    ``levels`` is the number of discrete values per pixel for quantised images (None otherwise);
    ``info`` records how the data were made (generator, seed, file, split sizes);
    ``context``: for conditional data, the context rows of the train, valid and test splits (None otherwise).
    """

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    kind: str = "vector"
    levels: int | None = None
    info: dict = field(default_factory=dict)
    context: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
