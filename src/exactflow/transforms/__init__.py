"""All transforms. Every module in this package registers its bijections in `registry`
with a decorator; importing the package imports every family, so adding a transform touches
its family module only."""

import importlib
import pkgutil

from ..core import Bijection, Compose, Inverse
from ..registry import TRANSFORMS as registry

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Bijection", "Compose", "Inverse", "registry"]
