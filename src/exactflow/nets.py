"""Conditioner networks: plain MLPs (coupling layers) and masked MLPs (MADE, autoregressive layers)."""

from __future__ import annotations

import threading
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "MADE", "MaskedLinear", "linear", "made_degrees", "param_rows"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU, "gelu": nn.GELU}


#: scratch buffers are used from above SCRATCH_MIN elements (below, a fresh tensor costs no page faults and the
#: lookup would cost more than it saves) up to SCRATCH_MAX (16 MiB in float32; larger ones are allocated as
#: usual); a thread holds at most SCRATCH_TOTAL elements of them (128 MiB in float32) before starting over
SCRATCH_MIN, SCRATCH_MAX, SCRATCH_TOTAL = 1 << 15, 1 << 22, 1 << 25


class _Scratch(threading.local):
    """Per-thread scratch matrices on the CPU for values that never leave a computation without autograd (the
    hidden activations of a network). Each is keyed by its shape, dtype, inference mode and a slot naming its
    role, so consecutive layers alternate between two buffers and every network shares them. A fresh large
    tensor costs its page faults on every call: reusing them made an MLP about a third faster at batch 4096.
    Other devices have their own caching allocators (and streams), so they get no scratch buffers."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}
        self.held = 0  # elements in self.buffers

    def clear(self) -> None:
        """Release this thread's buffers."""
        self.buffers.clear()
        self.held = 0

    def get(self, rows: int, cols: int, like: Tensor, slot: object) -> Tensor | None:
        """A ``(rows, cols)`` CPU buffer of ``like``'s dtype for ``slot`` (its contents are garbage), or None for
        other devices and outside (:data:`SCRATCH_MIN`, :data:`SCRATCH_MAX`] elements."""
        size = rows * cols
        if not SCRATCH_MIN < size <= SCRATCH_MAX or like.device.type != "cpu":
            return None
        key = (rows, cols, like.dtype, torch.is_inference_mode_enabled(), slot)
        buf = self.buffers.get(key)
        if buf is None:
            if self.held + size > SCRATCH_TOTAL:  # many shapes in turn: start over rather than hold them all
                self.clear()
            buf = self.buffers[key] = torch.empty(rows, cols, dtype=like.dtype)
            self.held += size
        return buf


scratch = _Scratch()


def relu_layer(h: Tensor, weight_t: Tensor, bias: Tensor, slot: int) -> Tensor:
    """``relu(h W^T + b)`` without autograd into the scratch buffer of ``slot`` (alternate 0 and 1 between
    consecutive layers, so a layer never writes over its own input). Not for results that leave the pass."""
    out = scratch.get(h.shape[0], weight_t.shape[1], h, ("hidden", slot))
    return torch.mm(h, weight_t, out=out).add_(bias).relu_()


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x W^T + b``. Without autograd as a product and an in-place bias add: at small batches that is
    faster than ``addmm``, whose bias is first copied into the output."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dim() != 2 or bias is None:
        return F.linear(x, weight, bias)
    return torch.mm(x, weight.t()).add_(bias)


def _rows_order(t: Tensor, features: int, params: int) -> Tensor:
    """The rows of ``t`` (``features * params``, in (feature, parameter) order) in (parameter, feature) order."""
    return t.view(features, params, -1).transpose(0, 1).reshape(features * params, *t.shape[1:])


def param_rows(h: Tensor, weight: Tensor, bias: Tensor, features: int, params: int) -> Tensor:
    """A last linear layer whose ``features * params`` outputs are ordered (feature, parameter), computed
    parameter-major: returns ``(params, features * batch)``, row ``k`` holding parameter ``k`` of every
    (feature, batch) pair in that order, i.e. ``out.view(batch, features, params)`` rearranged as
    ``[k, f * batch + b]``. Elementwise kernels then read contiguous rows without a transposed copy of
    the (large) parameter tensor."""
    w, b = _rows_order(weight, features, params), _rows_order(bias, features, params)
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return torch.addmm(b.unsqueeze(1), w, h.t()).view(params, -1)
    return torch.mm(w, h.t()).add_(b.unsqueeze(1)).view(params, -1)


class MLP(nn.Sequential):
    """``in -> hidden... -> out`` with the given activation; ``zero_last=True`` zero-initialises the
    last layer so a transform built on it starts as the identity."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        zero_last: bool = True,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        last = nn.Linear(width, out_features)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)

    def _relu_layers(self) -> list[tuple[Tensor, Tensor]] | None:
        """``(weight, bias)`` of every Linear layer when the network is Linear, ReLU, ..., Linear with biases
        (the form the functional paths below run), else None. The check of the layer types is cached on them
        (a changed Sequential is checked again); the tensors are read afresh from the modules' dicts."""
        modules = tuple(self._modules.values())
        kinds = tuple(map(type, modules))
        cached = self.__dict__.get("_kinds")
        if cached is None or cached[0] != kinds:
            plain = (len(kinds) % 2 == 1 and all(k is nn.Linear for k in kinds[::2])
                     and all(k is nn.ReLU for k in kinds[1::2]))
            self.__dict__["_kinds"] = cached = (kinds, plain)
        if not cached[1]:
            return None
        layers = [_weight_bias(m) for m in modules[::2]]
        return None if any(b is None for _, b in layers) else layers

    def _hidden(self, x: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The hidden layers of a ReLU network (:meth:`_relu_layers`); without autograd through scratch buffers."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dim() != 2:
            for w, b in layers:
                x = torch.relu_(F.linear(x, w, b))
            return x
        for i, (w, b) in enumerate(layers):
            x = relu_layer(x, w.t(), b, i % 2)
        return x

    def forward(self, x: Tensor) -> Tensor:
        layers = self._relu_layers()
        if layers is None:  # any other network: module by module
            for m in self._modules.values():
                x = m(x)
            return x
        *body, (w, b) = layers
        return linear(self._hidden(x, body), w, b)

    def rows(self, x: Tensor, features: int, params: int) -> Tensor:
        """The output, read as ``(batch, features, params)``, laid out parameter-major as :func:`param_rows`."""
        layers = self._relu_layers()
        if layers is None:
            *body, last = self._modules.values()
            for m in body:
                x = m(x)
            return param_rows(x, last.weight, last.bias, features, params)
        *body, (w, b) = layers
        return param_rows(self._hidden(x, body), w, b, features, params)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_kinds", None)
        return state


def join_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate a ``(batch, c)`` context to flat conditioner input (no-op when None)."""
    if context is None:
        return x
    return torch.cat([x, context.to(x.dtype)], dim=-1)


class MaskedLinear(nn.Linear):
    """``y = (W * M) x + b`` for a fixed 0/1 ``mask`` M (a buffer, saved with the weights).

    The mask is applied on every use, so entries of W outside the mask may hold anything (noise,
    a loaded checkpoint): they never reach the output. With gradients on, ``W * M`` is formed in the
    graph. With gradients off (``torch.no_grad``/``inference_mode``) the masked weight is folded once
    and cached; the cache is rebuilt when the weight or mask storage, its version counter (bumped by
    every in-place update: optimiser steps, ``load_state_dict``, ``randomize_``), dtype or device
    changes. Writes through ``.data`` bypass the version counter: call :meth:`refresh` after them.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask has shape {tuple(mask.shape)}: expected ({out_features}, {in_features})")
        self.register_buffer("mask", mask.to(self.weight.dtype))
        self._folded: Tensor | None = None
        self._key: tuple = ()
        self._sources: tuple = ()
        self.generation = 0  # bumped by refresh(): the caches built on this layer (MADE, sampler) key on it

    def refresh(self) -> None:
        """Drop the cached masked weight, and those built on it (needed only after writes through ``weight.data``)."""
        self._folded, self._key, self._sources = None, (), ()
        self.generation += 1

    def masked_weight(self) -> Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # a compiled graph fuses the product itself
            return self.weight * self.mask
        w, m = self.weight, self.mask
        key = (w.data_ptr(), w._version, m.data_ptr(), m._version, w.dtype, w.device)
        if self._folded is None or key != self._key:
            # keep aliases of the sources so their storage cannot be freed and reused under our key; stored
            # transposed (W^T contiguous), the layout the product x W^T reads fastest
            folded = (w * m).detach().t().contiguous().t()
            self._folded, self._key, self._sources = folded, key, (w.detach(), m.detach())
        return self._folded

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.masked_weight(), self.bias)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_folded": None, "_key": (), "_sources": ()}


def made_degrees(features: int, order: str | Tensor = "natural", seed: int | None = None) -> Tensor:
    """Input degrees ``d_i in {1..D}`` of a MADE: feature ``i`` is the ``d_i``-th in autoregressive order.

    ``order``: ``"natural"`` (1, ..., D), ``"reversed"`` (D, ..., 1), ``"random"`` (a random
    permutation, from ``seed`` if given) or an explicit permutation of ``0..D-1`` listing the features
    in the order they are generated.
    """
    if isinstance(order, Tensor):
        perm = order.long().flatten()
        if sorted(perm.tolist()) != list(range(features)):
            raise ValueError(f"order must be a permutation of 0..{features - 1}, got {perm.tolist()}")
    elif order == "natural":
        perm = torch.arange(features)
    elif order == "reversed":
        perm = torch.arange(features - 1, -1, -1)
    elif order == "random":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        perm = torch.randperm(features, generator=gen)
    else:
        raise ValueError(f"unknown order {order!r}: use 'natural', 'reversed', 'random' or a permutation tensor")
    degrees = torch.empty(features, dtype=torch.long)
    degrees[perm] = torch.arange(1, features + 1)
    return degrees


def _weight_bias(m: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """A linear layer's weight and bias, read from the module's dict where they are plain (attribute access
    through ``nn.Module.__getattr__`` costs about a microsecond each); a parametrised one is computed as usual."""
    params = m._parameters
    weight, bias = params.get("weight"), params.get("bias")
    return (m.weight if weight is None else weight), (m.bias if bias is None and "bias" not in params else bias)


def _weight_bias_mask(m: MaskedLinear) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`_weight_bias` and the mask of a masked layer."""
    return (*_weight_bias(m), m._buffers["mask"])


#: the memory orders :meth:`MADE.forward` can give its output in
MADE_LAYOUTS = ("features", "params", "rows")


class MADE(nn.Module):
    """Masked MLP (Germain et al. 2015): ``(batch, D) [+ context (batch, c)] -> (batch, D, params)`` where
    output ``[:, i, :]`` depends only on the inputs that precede feature ``i`` in the order (and on the context).

    Degrees: input ``i`` has degree ``d_i`` (:func:`made_degrees`); hidden unit ``k`` of every layer has
    degree ``m_k = 1 + (k mod (D - 1))`` (0 when D = 1), or ``m_k = k mod D`` with a context, and sees the
    units of the layer below with degree ``<= m_k``; the outputs of feature ``i`` see hidden units with
    degree ``< d_i``. Context inputs have degree 0 and feed every unit of the first hidden layer, so
    every output, the first feature's included, depends on the context. ``residual=True`` makes each
    entry of ``hidden`` a residual block ``h + L2(act(L1(act(h))))`` on equal-degree units (all widths
    equal). ``zero_last=True`` starts the outputs at zero.
    """

    def __init__(
        self,
        features: int,
        params: int,
        hidden: Sequence[int] = (64, 64),
        context: int = 0,
        order: str | Tensor = "natural",
        residual: bool = False,
        activation: str = "relu",
        zero_last: bool = True,
        seed: int | None = None,
    ):
        super().__init__()
        if features < 1 or params < 1:
            raise ValueError(f"MADE needs features >= 1 and params >= 1, got {features} and {params}")
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer")
        if residual and len(set(hidden)) != 1:
            raise ValueError(f"residual MADE needs equal hidden widths, got {tuple(hidden)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
        self.features, self.params, self.context_features, self.residual = features, params, context, residual
        self.register_buffer("input_degrees", made_degrees(features, order, seed))
        self.act = ACTIVATIONS[activation]()

        d_in = torch.cat([self.input_degrees, torch.zeros(context, dtype=torch.long)])
        widths = [hidden[0]] * (1 + 2 * len(hidden)) if residual else list(hidden)
        degrees = [self._hidden_degrees(w) for w in widths]
        for i, deg in enumerate(degrees):
            self.register_buffer(f"hidden_degrees_{i}", deg)
        layers = []
        for deg_prev, deg in zip([d_in, *degrees[:-1]], degrees):
            layers.append(MaskedLinear(len(deg_prev), len(deg), deg[:, None] >= deg_prev[None, :]))
        d_out = self.input_degrees.repeat_interleave(params)
        self.out = MaskedLinear(len(degrees[-1]), features * params, d_out[:, None] > degrees[-1][None, :])
        if zero_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        if residual:
            for second in layers[2::2]:
                nn.init.zeros_(second.weight)
                nn.init.zeros_(second.bias)
        self.layers = nn.ModuleList(layers)

    def _inference_weights(self, layout: str) -> list[tuple[Tensor, Tensor]]:
        """``(W^T, b)`` per layer with the masks folded in and ``W^T`` contiguous, for the forward without
        autograd, cached until a weight, bias or mask changes (storage or version counter); the last layer's
        outputs in ``layout`` order (:meth:`forward`; ``"rows"``: ``(W, b)`` for ``W h^T + b``). One cache check
        per call, not one per layer."""
        modules = self._modules
        sources, key = [], [layout]
        for m in (*modules["layers"]._modules.values(), modules["out"]):  # dict reads: no Module.__getattr__
            tensors = _weight_bias_mask(m)
            sources += tensors
            key.append(m.generation)
            key += [(t.data_ptr(), t._version) for t in tensors]
        key = tuple(key)
        cached = self.__dict__.get("_inference")
        if cached is not None and cached[0] == key:
            return cached[2]
        with torch.no_grad():
            folded = [(w * m).t().contiguous() for w, m in zip(sources[::3], sources[2::3])]
            weights = [(w_t, b) for w_t, b in zip(folded, sources[1::3])]
            if layout != "features":
                w_t, b = weights[-1]
                w, b = _rows_order(w_t.t(), self.features, self.params), _rows_order(b, self.features, self.params)
                weights[-1] = (w.contiguous(), b.unsqueeze(1)) if layout == "rows" else (w.t().contiguous(), b)
        # the sources stay aliased in the cache so their storage cannot be reused under the same key
        self.__dict__["_inference"] = (key, [t.detach() for t in sources], weights)
        return weights

    def generation(self) -> int:
        """Sum of the layers' :attr:`MaskedLinear.generation`: it changes whenever one of them is refreshed."""
        return sum(m.generation for m in (*self.layers, self.out))

    def refresh(self) -> None:
        """Drop every cached masked weight (needed only after writes through ``.data``)."""
        for m in (*self.layers, self.out):
            m.refresh()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_inference", None)
        return state

    def _hidden_degrees(self, width: int) -> Tensor:
        if self.context_features:  # degree-0 units see the context only and feed the first feature
            return torch.arange(width) % self.features
        if self.features == 1:
            return torch.zeros(width, dtype=torch.long)
        return torch.arange(width) % (self.features - 1) + 1

    @property
    def order(self) -> Tensor:
        """Feature indices in autoregressive order (``order[0]`` depends on no other feature)."""
        return torch.argsort(self.input_degrees)

    @property
    def hidden_degrees(self) -> list[Tensor]:
        """Degrees of the output units of every hidden masked layer, in the order of :attr:`layers`
        (for ``residual=True``: the input layer, then the two layers of each block)."""
        return [getattr(self, f"hidden_degrees_{i}") for i in range(len(self.layers))]

    def forward(self, x: Tensor, context: Tensor | None = None, layout: str = "features") -> Tensor:
        """The parameters, ``(batch, D, params)``. ``layout`` is their order in memory: ``"features"``
        (contiguous), ``"params"`` (the same shape as a view of ``(batch, params, D)``, so each parameter is a
        ``(batch, D)`` slice with contiguous rows), or ``"rows"``: the same numbers as ``(params, D * batch)``
        (:func:`param_rows`)."""
        # layers applied functionally (masked weights folded once under no_grad, see MaskedLinear); no
        # per-call module slicing or sub-module __call__, ReLU in place on fresh linear outputs
        if layout not in MADE_LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {MADE_LAYOUTS}")
        relu = type(self._modules["act"]) is nn.ReLU
        n, d, k = x.shape[0], self.features, self.params
        if (relu and not self.residual and x.dim() == 2 and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            *body, (w_last, b_last) = self._inference_weights(layout)
            h = join_context(x, context)
            for i, (w_t, b) in enumerate(body):
                h = relu_layer(h, w_t, b, i % 2)
            if layout == "rows":
                return torch.mm(w_last, h.t()).add_(b_last).view(k, -1)
            out = torch.mm(h, w_last).add_(b_last)
            return out.view(n, d, k) if layout == "features" else out.view(n, k, d).transpose(1, 2)
        act = torch.relu_ if relu else self.act  # on fresh outputs only
        *hidden, (w_out, b_out) = self._masked_layers()
        h = linear(join_context(x, context), *hidden[0])
        if self.residual:
            for first, second in zip(hidden[1::2], hidden[2::2]):
                h = h + linear(act(linear(torch.relu(h) if relu else self.act(h), *first)), *second)
        else:
            for w, b in hidden[1:]:
                h = linear(act(h), w, b)
        if layout == "rows":
            return param_rows(act(h), w_out, b_out, d, k)
        if layout == "params":
            return linear(act(h), _rows_order(w_out, d, k), _rows_order(b_out, d, k)).view(n, k, d).transpose(1, 2)
        return linear(act(h), w_out, b_out).view(n, d, k)

    def _masked_layers(self) -> list[tuple[Tensor, Tensor]]:
        """``(W * M, b)`` of every layer, the output layer last: formed in the graph with autograd (or when
        compiling), else the layers' cached folds (:meth:`MaskedLinear.masked_weight`)."""
        modules = self._modules
        layers = (*modules["layers"]._modules.values(), modules["out"])
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return [(w * mask, b) for w, b, mask in map(_weight_bias_mask, layers)]
        return [(m.masked_weight(), m.bias) for m in layers]
