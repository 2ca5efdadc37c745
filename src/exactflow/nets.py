"""Conditioner networks: plain MLPs (coupling layers) and masked MLPs (MADE, autoregressive layers).

These are the reference definitions; `exactflow.backend` evaluates the same networks faster where it can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend

__all__ = ["MLP", "MADE", "ContextEmbedding", "MaskedLinear", "context_embedding", "made_degrees"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """``in -> hidden... -> out`` with the given activation; ``zero_last=True`` zero-initialises the
    last layer so a transform built on it starts as the identity.

    Example:
        >>> net = MLP(3, 4, hidden=(8,))
        >>> net(torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        zero_last: bool = True,
    ) -> None:
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

    def forward(self, x: Tensor) -> Tensor:
        fast = backend.run(self, "forward", x)
        return super().forward(x) if fast is None else fast


class ContextEmbedding(MLP):
    """The library's context embedding network: an MLP ``c -> widths[0] -> ... -> widths[-1]`` (ReLU between
    layers, the last layer linear and randomly initialised), so a conditional flow's transforms see
    ``widths[-1]`` learned features of the context instead of the raw ``c``. Built from its widths, it is
    saved and rebuilt from them (see `context_embedding`).

    Example:
        >>> net = ContextEmbedding(3, [32, 8])
        >>> net(torch.randn(5, 3)).shape, net.out_features
        (torch.Size([5, 8]), 8)
    """

    def __init__(self, context: int, widths: Sequence[int], activation: str = "relu") -> None:
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths \
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ValueError(f"embedding widths must be a non-empty sequence of positive layer widths such as "
                             f"[64, 16] (the last is the embedded size), got {widths!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
        super().__init__(context, widths[-1], widths[:-1], activation, zero_last=False)
        self.widths = [int(w) for w in widths]
        self.out_features = self.widths[-1]


def context_embedding(context: int, embedding: Sequence[int] | nn.Module | None) -> tuple[nn.Module | None, int]:
    """The embedding network a conditional flow applies to its context, and the number of features it puts out.

    ``embedding``: ``None`` (no network: the transforms see the ``context`` features as they are), a sequence of
    layer widths (a `ContextEmbedding` is built; its last width is the output size) or any ``nn.Module`` mapping a
    ``(batch, context)`` tensor to ``(batch, features)``, trained jointly with the flow (its output size is found by
    running it once, in eval mode and without gradients, on a zero context of two rows).

    Raises:
        ValueError: If an embedding is given to an unconditional flow (``context`` 0), the widths are not positive
            integers, or a module does not map ``(2, context)`` to a 2-D ``(2, features)`` tensor.
    """
    if embedding is None:
        return None, context
    if not context:
        raise ValueError("an embedding network needs a conditional flow (context > 0); this one has context=0")
    if isinstance(embedding, ContextEmbedding) or not isinstance(embedding, nn.Module):
        net = embedding if isinstance(embedding, ContextEmbedding) else ContextEmbedding(context, embedding)
        if net.widths and net[0].in_features != context:
            raise ValueError(f"the embedding network takes {net[0].in_features} context features, the flow {context}")
        return net, net.out_features
    ref = next((t for t in (*embedding.parameters(), *embedding.buffers()) if t.is_floating_point()), None)
    probe = torch.zeros(2, context, dtype=torch.get_default_dtype() if ref is None else ref.dtype,
                        device=None if ref is None else ref.device)
    was_training = embedding.training
    try:
        with torch.no_grad():
            out = embedding.eval()(probe)
    except Exception as err:  # any failure of user code on a well-formed context: say which call failed
        raise ValueError(f"the embedding network {type(embedding).__name__} failed on a context of shape "
                         f"(2, {context}): {type(err).__name__}: {err}") from err
    finally:
        embedding.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the embedding network {type(embedding).__name__} must map a context of shape (batch, "
                         f"{context}) to (batch, features); on (2, {context}) it gave {got}")
    return embedding, int(out.shape[1])


def join_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate a ``(batch, c)`` context to flat conditioner input (no-op when None)."""
    if context is None:
        return x
    return torch.cat([x, context.to(x.dtype)], dim=-1)


class MaskedLinear(nn.Linear):
    """``y = (W * M) x + b`` for a fixed 0/1 ``mask`` M (a buffer, saved with the weights).

    The mask is applied on every use, so entries of W outside the mask may hold anything (noise,
    a loaded checkpoint): they never reach the output.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask has shape {tuple(mask.shape)}: expected ({out_features}, {in_features})")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


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


class MADE(nn.Module):
    """Masked MLP (Germain et al. 2015): ``(batch, D) [+ context (batch, c)] -> (batch, D, params)`` where
    output ``[:, i, :]`` depends only on the inputs that precede feature ``i`` in the order (and on the context).

    Degrees: input ``i`` has degree ``d_i`` (`made_degrees`); hidden unit ``k`` of every layer has
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
    ) -> None:
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
        for deg_prev, deg in zip([d_in, *degrees[:-1]], degrees, strict=False):
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
        """Degrees of the output units of every hidden masked layer, in the order of `layers`
        (for ``residual=True``: the input layer, then the two layers of each block)."""
        return [getattr(self, f"hidden_degrees_{i}") for i in range(len(self.layers))]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The parameters ``(batch, D, params)``: entry ``[:, i, :]`` depends on the features before ``i``."""
        fast = backend.run(self, "forward", x, context)
        if fast is not None:
            return fast
        h = self.layers[0](join_context(x, context))
        if self.residual:
            for first, second in zip(self.layers[1::2], self.layers[2::2], strict=False):
                h = h + second(self.act(first(self.act(h))))
        else:
            for layer in self.layers[1:]:
                h = layer(self.act(h))
        return self.out(self.act(h)).view(*x.shape[:-1], self.features, self.params)
