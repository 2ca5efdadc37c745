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

Every preset takes another registered base through `build` (``build("RealNVP", features=2, base="GaussianMixture")``
or ``base=GaussianMixture(2)``), or afterwards through `set_base`; the preset's spec records the base, so the flow is
saved and rebuilt with it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import bases as _bases  # noqa: F401  (registers the learned bases in BASES)
from ..core import Compose, Inverse
from ..distributions import CircularUniform, ConditionalDiagNormal, DiagNormal, Flow, StandardNormal
from ..nets import ContextEmbedding
from ..registry import BASES, TRANSFORMS, from_json, to_json
from ..registry import FLOWS as registry
from ..transforms.coupling import CouplingChain
from .auto import auto
from .autoregressive import BNAF, IAF, MAF, NSF, NSFAutoregressive
from .circular import CircularNSF, CircularNSFAutoregressive
from .continuous import CNF
from .coupling import NICE, RealNVP
from .glow import Glow, ImageFlow, RealNVPImage
from .neural import NAF, SOS, UNAF
from .planar import Planar, Radial
from .residual import ResidualFlow
from .sylvester import Sylvester
from .tarflow import TarFlow, TarFlow1d

__all__ = ["registry", "build", "auto", "prepend", "set_base", "describe", "rebuild", "BNAF", "CircularNSF",
           "CircularNSFAutoregressive", "CNF", "Glow", "IAF", "MAF", "NAF", "NICE", "NSF", "NSFAutoregressive",
           "Planar", "Radial", "RealNVP", "ResidualFlow", "SOS", "Sylvester", "RealNVPImage", "TarFlow", "TarFlow1d",
           "UNAF"]

BASES.register(conditional=False)(StandardNormal)
BASES.register(conditional=False)(DiagNormal)
BASES.register(conditional=False)(CircularUniform)
BASES.register(test_kwargs={"context": 2, "hidden": (8,)})(ConditionalDiagNormal)

# Modules that hold other modules, described by what they hold now (not by how they were built):
# a flow's transform may have been replaced since, e.g. by `prepend`.
USER_MODULE = "user_module"  # how a saved flow marks an embedding network of the user's
CONTAINERS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (Compose, CouplingChain, Inverse, Flow, ImageFlow)}


def build(name: str, base: str | nn.Module | None = None, **kwargs: Any) -> Flow:
    """The registered flow ``name`` built with ``kwargs`` (the same as calling the preset); it records ``flow.spec``.

    ``name="auto"`` builds the measured default (`exactflow.flows.auto.auto`): a concrete preset whose spec
    also carries the training recipe `exactflow.fit` then uses. ``base`` replaces the preset's base (see
    `set_base`): a name in `exactflow.registry.BASES` or a base module."""
    flow = auto(**kwargs) if name == "auto" else registry.build(name, **kwargs)
    return flow if base is None else set_base(flow, base)


def set_base(flow: Flow, base: str | nn.Module, **kwargs: Any) -> Flow:
    """Replace ``flow.base`` by ``base`` and return the flow (changed in place); a preset's spec records it.

    ``base`` is a name in `exactflow.registry.BASES`, built as ``BASES[base](flow.event_shape, **kwargs)`` (plus
    ``context=flow.context_features`` for a conditional base), or a base module (registered, for checkpoints), which
    is moved to the flow's dtype and device. Its event shape, and a conditional base's number of context features,
    must match the flow's.

    Examples:
        >>> flow = build("RealNVP", features=2, depth=2, base="GaussianMixture")
        >>> type(flow.base).__name__, flow.log_prob(torch.randn(3, 2)).shape
        ('GaussianMixture', torch.Size([3]))
    """
    if not isinstance(flow, Flow):
        raise ValueError(f"set_base expects an exactflow Flow, got {type(flow).__name__}")
    if isinstance(base, str):
        if base not in BASES:
            raise ValueError(f"unknown base distribution {base!r}; available: {', '.join(sorted(BASES))}")
        if BASES[base].conditional:
            if not flow.context_features:
                raise ValueError(f"base {base!r} is conditional but the flow is unconditional (context=0)")
            kwargs = {"context": flow.context_features, **kwargs}
        base = BASES.build(base, flow.event_shape, **kwargs)
    elif kwargs:
        raise ValueError("set_base: keyword arguments go with a base given by name, not with a module")
    if not isinstance(base, nn.Module) or not callable(getattr(base, "log_prob", None)) \
            or not callable(getattr(base, "rsample", None)):
        raise ValueError(f"base must be a registered base's name or a module with log_prob and rsample, got {base!r}")
    if tuple(getattr(base, "event_shape", ())) != tuple(flow.event_shape):
        raise ValueError(f"base {type(base).__name__} has event shape {getattr(base, 'event_shape', None)}, "
                         f"but the flow's is {tuple(flow.event_shape)}")
    base_context = getattr(base, "context_features", 0) or 0
    if base_context not in (0, flow.context_features):
        raise ValueError(f"base {type(base).__name__} takes {base_context} context features, "
                         f"but the flow has context={flow.context_features}")
    ref = flow._ref()
    if ref is not None and ref.is_floating_point():
        base = base.to(device=ref.device, dtype=ref.dtype)
    flow.base = base
    spec = getattr(flow, "spec", None)
    if spec is not None:
        spec["base"] = type(base).__name__  # describe() writes the base as it is now
    return flow


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
        kwargs = dict(spec["kwargs"])
        if kwargs.get("embedding") is not None:
            kwargs["embedding"] = _describe_embedding(module)
        out = {"flow": spec["flow"], "kwargs": to_json(kwargs), "preprocess": to_json(spec["preprocess"])}
        if "base" in spec:  # replaced by set_base
            out["base"] = describe(module.base, f"{where}.base")
        if "auto" in spec:  # built with "auto": the recipe travels with the flow
            out["auto"] = to_json(spec["auto"])
        return out
    if CONTAINERS.get(kind) is type(module):
        if isinstance(module, Flow):
            parts = [describe(module.transform, f"{where}.transform"), describe(module.base, f"{where}.base")]
            kwargs = {"context": module.context_features}
            if module.embedding is not None:
                kwargs["embedding"] = _describe_embedding(module)
            if module.standardizes_context:
                kwargs["standardize_context"] = True
            return {"node": kind, "args": parts, "kwargs": kwargs}
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


def _describe_embedding(flow: Flow) -> list[int] | dict:
    """A flow's context embedding network as JSON: the widths of a `ContextEmbedding`; for a network of the user's,
    only its class name, ``{"user_module": name}`` (its weights are in the state dict; give it again at load)."""
    net = flow.embedding
    if isinstance(net, ContextEmbedding):
        return list(net.widths)
    return {USER_MODULE: type(net).__name__}


def _with_embedding(kwargs: dict, embedding: nn.Module | None, used: list[bool]) -> dict:
    """``kwargs`` with a saved user embedding's placeholder replaced by ``embedding`` (a ``ValueError`` if none)."""
    saved = kwargs.get("embedding")
    if not (isinstance(saved, dict) and set(saved) == {USER_MODULE}):
        return kwargs
    if embedding is None:
        raise ValueError(f"the flow was saved with an embedding network of your own ({saved[USER_MODULE]}); its "
                         "weights are in the checkpoint but its code is not: build it again and pass it, "
                         f"exactflow.load(path, embedding={saved[USER_MODULE]}(...))")
    used.append(True)
    return {**kwargs, "embedding": embedding}


def rebuild(spec: dict, embedding: nn.Module | None = None) -> nn.Module:
    """The module a `describe` description (or an older checkpoint's preset spec) makes, freshly initialised.

    ``embedding``: the context embedding network of your own that the described flow was built with (it is
    described by its class name only); a ``ValueError`` if it is needed and missing, or given and not needed."""
    if not isinstance(spec, dict):
        raise ValueError(f"invalid flow spec {spec!r}: expected a JSON object")
    used: list[bool] = []
    module = _rebuild(spec, embedding, used)
    if embedding is not None and not used:
        raise ValueError(f"an embedding network ({type(embedding).__name__}) was given, but the saved flow has none "
                         "of your own (it was built without one, or with layer widths the checkpoint rebuilds)")
    return module


def _rebuild(spec: dict, embedding: nn.Module | None, used: list[bool]) -> nn.Module:
    def part(p: dict) -> nn.Module:
        if not isinstance(p, dict):
            raise ValueError(f"invalid flow spec {p!r}: expected a JSON object")
        return _rebuild(p, embedding, used)

    try:
        if "flow" in spec:
            flow = build(spec["flow"], **_with_embedding(from_json(spec["kwargs"]), embedding, used))
            for step in spec.get("preprocess", []):
                prepend(flow, step["transform"], **from_json(step["kwargs"]))
            if "base" in spec:
                set_base(flow, rebuild(spec["base"]))
            if "auto" in spec:
                flow.spec["auto"] = from_json(spec["auto"])
            return flow
        kwargs = from_json(spec.get("kwargs", {}), part)
        if spec.get("node") in CONTAINERS:  # parts described directly
            if spec["node"] in ("Flow", "ImageFlow"):
                kwargs = _with_embedding(kwargs, embedding, used)
            return CONTAINERS[spec["node"]](*[part(p) for p in spec["args"]], **kwargs)
        args = from_json(spec.get("args", []), part)
        if "transform" in spec:
            return TRANSFORMS.build(spec["transform"], *args, **kwargs)
        if "base" in spec:
            return BASES.build(spec["base"], *args, **kwargs)
    except (KeyError, TypeError) as err:
        raise ValueError(f"invalid flow spec {spec!r}: {err}") from None
    raise ValueError(f"invalid flow spec {spec!r}: expected one of the keys 'flow', 'transform', 'base' or 'node' "
                     f"(one of {', '.join(CONTAINERS)})")
