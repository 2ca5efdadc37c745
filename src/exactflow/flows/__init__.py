"""Ready-made flows. Each module registers its presets in :data:`registry` (name -> factory taking
``features=`` or ``shape=`` and ``context=``); importing the package imports them all."""

import importlib
import pkgutil

from ..registry import FLOWS as registry

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["registry"]
