"""Name -> factory registries read by the generic tests, the CLI's ``--flow`` and the docs.

A factory builds a default instance from ``features=`` (vector data) or ``shape=`` (image
data, ``(C, H, W)``) and ``context=`` (number of context features, 0 = unconditional), plus
any keyword the underlying class accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Entry", "Registry"]


@dataclass(frozen=True)
class Entry:
    """A registered factory and what the generic checks need to know about it."""

    name: str
    factory: Callable[..., Any]
    input: str = "vector"  # "vector": factory takes features=; "image": shape=
    conditional: bool = True  # accepts context > 0
    domain: str = "real"  # where test inputs are drawn: "real" (Gaussian) or "unit" (inside (0, 1))
    tolerance: float = 1e-5  # float64 absolute tolerance for round trip and log-det checks
    test_kwargs: dict = field(default_factory=dict)  # small sizes for the generic tests
    slow: bool = False  # excluded from the quick generic run unless asked
    doc: str = ""

    def __call__(self, **kwargs: Any) -> Any:
        return self.factory(**kwargs)


class Registry(dict):
    """A dict ``name -> Entry``; entries are callable factories."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator: ``@registry.register("Name", input="vector", conditional=True)`` on a class or function."""

        def wrap(factory: Callable) -> Callable:
            key = name or factory.__name__
            if key in self:
                raise ValueError(f"{self.kind} registry already has an entry named {key!r}")
            summary = (factory.__doc__ or "").strip().split("\n\n")[0]
            self[key] = Entry(key, factory, doc=" ".join(summary.split()), **meta)
            return factory

        return wrap

    def build(self, name: str, **kwargs: Any) -> Any:
        """Instantiate ``name``; an unknown name lists what exists."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
        return self[name](**kwargs)


TRANSFORMS = Registry("transform")
FLOWS = Registry("flow")
DATASETS = Registry("data set")
