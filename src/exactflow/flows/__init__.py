"""Ready-made flows, and the one construction path of every flow.

Each module registers its presets in `registry` (name -> factory taking ``features=`` or ``shape=``,
``context=`` and the shared vocabulary ``depth=`` (number of layers, steps or blocks), ``hidden=`` (hidden
sizes, a sequence), ``bins=``, ``bound=``). The presets are importable objects too, and every way of calling one
gives the same flow and records ``flow.spec``::

    from exactflow.flows import MAF, registry
    MAF(features=2)                    # == registry["MAF"](features=2) == exactflow.build("MAF", features=2)

A flow composed by hand from registered parts, ``Flow(Compose(AffineCoupling(4), Permutation(4)), StandardNormal(4))``,
is described by `describe` as a tree of registry names and constructor arguments (JSON only), and
`rebuild` makes any description again; checkpoints store that tree.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core import Compose, Inverse
from ..distributions import ConditionalDiagNormal, DiagNormal, Flow, StandardNormal
from ..registry import BASES, TRANSFORMS, from_json, to_json
from ..registry import FLOWS as registry
from ..transforms.coupling import CouplingChain
from .auto import auto
from .autoregressive import BNAF, IAF, MAF, NSF, NSFAutoregressive
from .continuous import CNF
from .coupling import NICE, RealNVP
from .glow import Glow, ImageFlow, RealNVPImage
from .planar import Planar, Radial
from .sylvester import Sylvester
from .tarflow import TarFlow, TarFlow1d

__all__ = ["registry", "build", "auto", "prepend", "describe", "rebuild", "BNAF", "CNF", "Glow", "IAF", "MAF", "NICE",
           "NSF", "NSFAutoregressive", "Planar", "Radial", "RealNVP", "Sylvester", "RealNVPImage", "TarFlow",
           "TarFlow1d"]

for _base in (StandardNormal, DiagNormal, ConditionalDiagNormal):
    BASES.register()(_base)

# Modules that hold other modules, described by what they hold now (not by how they were built):
# a flow's transform may have been replaced since, e.g. by `prepend`.
CONTAINERS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (Compose, CouplingChain, Inverse, Flow, ImageFlow)}


def build(name: str, **kwargs: Any) -> Flow:
    """The registered flow ``name`` built with ``kwargs`` (the same as calling the preset); it records ``flow.spec``.

    ``name="auto"`` builds the measured default (`exactflow.flows.auto.auto`): a concrete preset whose spec
    also carries the training recipe `exactflow.fit` then uses."""
    if name == "auto":
        return auto(**kwargs)
    return registry.build(name, **kwargs)


def prepend(flow: Flow, name: str, bijection: nn.Module | None = None, **kwargs: Any) -> Flow:
    """Put the registered transform ``name`` (or the given ``bijection``, built as ``name(**kwargs)``)
    first in the data -> latent direction, ``T' = T o B``, and record it in a preset's ``flow.spec``."""
    b = bijection if bijection is not None else TRANSFORMS.build(name, **kwargs)
    t = flow.transform
    flow.transform = Compose(b, *t.bijections) if type(t) is Compose else Compose(b, t)
    spec = getattr(flow, "spec", None)
    if spec is not None:
        spec["preprocess"].append({"transform": name, "kwargs": dict(kwargs)})
    return flow


def describe(module: nn.Module, where: str = "flow") -> dict:
    """``module`` as JSON: a preset's spec, a registered transform's or base's name and arguments, or a container
    (``Compose``, ``CouplingChain``, ``Inverse``, ``Flow``, ``ImageFlow``) with the descriptions of its parts.

    A ``ValueError`` names the first part (by its path ``where``) that is not registered."""
    kind = type(module).__name__
    spec = getattr(module, "spec", None)
    if isinstance(module, Flow) and spec is not None:
        out = {"flow": spec["flow"], "kwargs": to_json(spec["kwargs"]), "preprocess": to_json(spec["preprocess"])}
        if "auto" in spec:  # built with "auto": the recipe travels with the flow
            out["auto"] = to_json(spec["auto"])
        return out
    if CONTAINERS.get(kind) is type(module):
        if isinstance(module, Flow):
            parts = [describe(module.transform, f"{where}.transform"), describe(module.base, f"{where}.base")]
            return {"node": kind, "args": parts, "kwargs": {"context": module.context_features}}
        if isinstance(module, Inverse):
            return {"node": kind, "args": [describe(module.bijection, f"{where}.bijection")]}
        return {"node": kind, "args": [describe(b, f"{where}.bijections.{i}") for i, b in enumerate(module.bijections)]}
    if isinstance(spec, dict) and ("transform" in spec or "base" in spec):
        key = "transform" if "transform" in spec else "base"

        def inner(m: nn.Module) -> dict:
            return describe(m, f"{where}({spec[key]} argument)")

        return {key: spec[key], "args": to_json(spec["args"], inner), "kwargs": to_json(spec["kwargs"], inner)}
    raise ValueError(f"cannot describe {where} ({kind}): it is not a registered transform, base or preset, so it "
                     "cannot be rebuilt without pickle; register its class with "
                     "@exactflow.transforms.registry.register(...) or compose the flow from registered transforms")


def rebuild(spec: dict) -> nn.Module:
    """The module a `describe` description (or an older checkpoint's preset spec) makes, freshly initialised."""
    if not isinstance(spec, dict):
        raise ValueError(f"invalid flow spec {spec!r}: expected a JSON object")
    try:
        if "flow" in spec:
            flow = build(spec["flow"], **from_json(spec["kwargs"]))
            for step in spec.get("preprocess", []):
                prepend(flow, step["transform"], **from_json(step["kwargs"]))
            if "auto" in spec:
                flow.spec["auto"] = from_json(spec["auto"])
            return flow
        kwargs = from_json(spec.get("kwargs", {}), rebuild)
        if spec.get("node") in CONTAINERS:  # parts described directly
            return CONTAINERS[spec["node"]](*[rebuild(part) for part in spec["args"]], **kwargs)
        args = from_json(spec.get("args", []), rebuild)
        if "transform" in spec:
            return TRANSFORMS.build(spec["transform"], *args, **kwargs)
        if "base" in spec:
            return BASES.build(spec["base"], *args, **kwargs)
    except (KeyError, TypeError) as err:
        raise ValueError(f"invalid flow spec {spec!r}: {err}") from None
    raise ValueError(f"invalid flow spec {spec!r}: expected one of the keys 'flow', 'transform', 'base' or 'node' "
                     f"(one of {', '.join(CONTAINERS)})")
