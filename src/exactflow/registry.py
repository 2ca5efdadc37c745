"""Name -> factory registries read by the generic tests, the CLI's ``--flow``, the docs and checkpoints.

A factory builds a default instance from ``features=`` (vector data) or ``shape=`` (image
data, ``(C, H, W)``) and ``context=`` (number of context features, 0 = unconditional), plus
any keyword the underlying class accepts.

Registering records how every object was built. ``@TRANSFORMS.register("Name")`` on a class wraps its
``__init__`` (on a function, the function) so that each instance carries

- ``obj.spec = {"transform": "Name", "args": [...], "kwargs": {...}}``: the registry name and the arguments
  given (positional ones by name, except a ``*args`` list), from which `exactflow.flows.rebuild` makes it again;
- ``obj.context_features``: the ``context=`` it was built with, which
  `check_context` enforces on every call.

A preset registered in `FLOWS` records ``flow.spec = {"flow": "Name", "kwargs": {...}, "preprocess": []}``
likewise, however it is called (``MAF(...)``, ``FLOWS["MAF"](...)`` or ``exactflow.build("MAF", ...)``).
The recorded values are the caller's own objects; `to_json` turns them into JSON when a checkpoint is written.

Keywords renamed between releases stay accepted for one release: ``register(..., renamed={"old": "new"})``
translates them with a ``DeprecationWarning``, so user code and the specs of older checkpoints still build.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Entry", "Registry", "TRANSFORMS", "FLOWS", "DATASETS", "BASES", "from_json", "to_json"]


@dataclass(frozen=True)
class Entry:
    """A registered factory and what the generic checks need to know about it."""

    name: str
    factory: Callable[..., Any]
    input: str = "vector"  # "vector": factory takes features=; "image": shape=
    conditional: bool = True  # accepts context > 0
    domain: str = "real"  # where test inputs are drawn: "real" (Gaussian), "unit" (inside (0, 1)) or "circle"
    #                       (angles, uniform in (-pi, pi))
    tolerance: float = 1e-5  # float64 absolute tolerance for round trip and log-det checks
    test_kwargs: dict = field(default_factory=dict)  # small sizes for the generic tests
    slow: bool = False  # excluded from the quick generic run unless asked
    estimator: bool = False  # in training mode the log-det may be an unbiased estimate, not the exact value
    doc: str = ""
    renamed: dict[str, str] = field(default_factory=dict)  # deprecated keyword -> its new name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.factory(*args, **kwargs)


class Registry(dict):
    """A dict ``name -> Entry``; entries are callable factories that record how they were called."""

    def __init__(self, kind: str, key: str = "name", bijections: bool = False, presets: bool = False) -> None:
        super().__init__()
        self.kind = kind  # for messages: "transform", "flow", ...
        self.key = key  # the key naming the entry in a recorded spec: {key: name, ...}
        self.bijections = bijections  # entries build bijections: record context_features for check_context
        self.presets = presets  # entries build whole flows: record {key: name, "kwargs", "preprocess"} specs

    def register(self, name: str | None = None, renamed: dict[str, str] | None = None, **meta: Any) -> Callable:
        """Decorator: ``@registry.register("Name", input="vector", conditional=True)`` on a class or function.

        ``renamed`` maps keywords of an earlier release to their new names (accepted with a ``DeprecationWarning``).
        A class is returned with its ``__init__`` wrapped, a function wrapped (see the module doc)."""

        def wrap(factory: Callable) -> Callable:
            key = name or factory.__name__
            if key in self:
                raise ValueError(f"{self.kind} registry already has an entry named {key!r}")
            summary = (factory.__doc__ or "").strip().split("\n\n")[0]
            recorded = self._recording(key, factory, dict(renamed or {}), meta.get("conditional", True))
            self[key] = Entry(key, recorded, doc=" ".join(summary.split()), renamed=dict(renamed or {}), **meta)
            return recorded

        return wrap

    def _recording(self, key: str, factory: Callable, renamed: dict[str, str], conditional: bool) -> Callable:
        """``factory`` made to record its spec on what it builds (for a class: on the instance, in ``__init__``)."""
        is_class = isinstance(factory, type)
        signature = inspect.signature(factory.__init__ if is_class else factory)
        skip = next(iter(signature.parameters)) if is_class else None  # __init__'s self

        def arguments(args: tuple, kwargs: dict) -> tuple[dict[str, Any], Any]:
            """The arguments given (by name) and the ``context`` in effect; refuses a context if unconditional."""
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:
                raise TypeError(f"{key}(): {err}") from None
            given = dict(bound.arguments)
            bound.apply_defaults()
            context = bound.arguments.get("context", 0)
            if not conditional and context:
                raise ValueError(f"{key} is unconditional: context must be 0, got {context!r}")
            return given, context

        def stamp(obj: Any, given: dict[str, Any], context: Any, spec: bool = True) -> None:
            if isinstance(obj, nn.Module):
                if self.bijections:
                    obj.context_features = context
                if spec:
                    obj.spec = self._spec(key, signature, {k: v for k, v in given.items() if k != skip})

        if is_class:
            init = factory.__init__

            @functools.wraps(init)
            def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
                kwargs = _translate(key, kwargs, renamed)
                given, context = arguments((obj, *args), kwargs)
                init(obj, *args, **kwargs)
                # a subclass's instance records the subclass's spec (if registered), not its parent's
                stamp(obj, given, context, spec=type(obj) is factory)

            factory.__init__ = __init__
            return factory

        @functools.wraps(factory)
        def build(*args: Any, **kwargs: Any) -> Any:
            kwargs = _translate(key, kwargs, renamed)
            given, context = arguments(args, kwargs)
            obj = factory(*args, **kwargs)
            stamp(obj, given, context)
            return obj

        return build

    def _spec(self, key: str, signature: inspect.Signature, given: dict[str, Any]) -> dict:
        """``{self.key: name, "args": [...], "kwargs": {...}}`` from the bound arguments."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for pname, value in given.items():
            kind = signature.parameters[pname].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[pname] = value
        if self.presets:
            return {self.key: key, "kwargs": kwargs, "preprocess": []}
        return {self.key: key, "args": args, "kwargs": kwargs}

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Instantiate ``name``; an unknown name lists what exists."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
        return self[name](*args, **kwargs)


def _translate(name: str, kwargs: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """``kwargs`` with deprecated keywords replaced by their new names, warning once per call."""
    old = [k for k in kwargs if k in renamed]
    if not old:
        return kwargs
    kwargs = dict(kwargs)
    for k in old:
        new = renamed[k]
        if new in kwargs:
            raise TypeError(f"{name}() got both {k}= (deprecated) and {new}=")
        warnings.warn(f"{name}({k}=...) is deprecated and will be removed in the next release: use {new}=",
                      DeprecationWarning, stacklevel=3)
        kwargs[new] = kwargs.pop(k)
    return kwargs


def to_json(value: Any, describe: Callable[[nn.Module], dict] | None = None) -> Any:
    """A recorded argument as JSON: numbers, strings, booleans, None, lists (from tuples too) and string-keyed dicts
    as they are; a tensor as ``{"tensor": nested list, "dtype": "float32"}``; a module (such as a bijection
    passed to a constructor) as ``{"module": describe(module)}``. Anything else is a ``ValueError``."""
    if isinstance(value, (tuple, list)):
        return [to_json(v, describe) for v in value]
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            raise ValueError(f"cannot record the dict {value!r} in a checkpoint: its keys must be strings")
        return {k: to_json(v, describe) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, nn.Module) and describe is not None:
        return {"module": describe(value)}
    raise ValueError(f"cannot record {value!r} ({type(value).__name__}) in a checkpoint: only numbers, strings, "
                     "booleans, lists, dicts, tensors and registered modules can be rebuilt without pickle")


def from_json(value: Any, construct: Callable[[dict], nn.Module] | None = None) -> Any:
    """The inverse of `to_json` (``construct`` rebuilds ``{"module": ...}`` values)."""
    if isinstance(value, list):
        return [from_json(v, construct) for v in value]
    if isinstance(value, dict):
        if set(value) == {"tensor", "dtype"}:
            dtype = getattr(torch, str(value["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown tensor dtype {value['dtype']!r}")
            return torch.tensor(value["tensor"], dtype=dtype)
        if set(value) == {"module"} and construct is not None:
            return construct(value["module"])
        return {k: from_json(v, construct) for k, v in value.items()}
    return value


TRANSFORMS = Registry("transform", "transform", bijections=True)
FLOWS = Registry("flow", "flow", presets=True)
BASES = Registry("base distribution", "base")
DATASETS = Registry("data set")
