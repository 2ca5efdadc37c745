"""Coupling layers on vectors (NICE, RealNVP): one part of x passes through unchanged and conditions
an elementwise map of the other part, so the Jacobian is triangular and log|det| is a sum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import Bijection, Compose, layer_context, total_ladj
from ..nets import MLP, join_context
from ..registry import TRANSFORMS
from .elementwise import bounded_log_scale

__all__ = ["Coupling", "CouplingChain", "AdditiveCoupling", "AffineCoupling", "coupling_mask"]


def coupling_mask(features: int, mask: str | Tensor = "half", flip: bool = False) -> Tensor:
    """Boolean mask, True where x passes through unchanged (and conditions the rest).

    ``"half"``: the first ceil(D/2) features; ``"alternating"`` (= ``"checkerboard"`` on vectors): even
    indices; or an explicit boolean tensor. ``flip`` swaps the two parts.
    """
    if isinstance(mask, Tensor):
        m = mask.bool().clone()
        if m.shape != (features,):
            raise ValueError(f"mask has shape {tuple(m.shape)}: expected ({features},)")
    elif mask == "half":
        m = torch.arange(features) < (features + 1) // 2
    elif mask in ("alternating", "checkerboard"):
        m = torch.arange(features) % 2 == 0
    else:
        raise ValueError(f"unknown mask {mask!r}: use 'half', 'alternating', 'checkerboard' or a bool tensor")
    m = ~m if flip else m
    if m.all() or not m.any():
        raise ValueError(f"mask must leave some of the {features} features fixed and transform the others")
    return m


class Coupling(Bijection):
    """Shared mechanics: split by mask, run the conditioner on ``(x_id, context)``, apply an elementwise
    map with ``params_per_feature`` parameters to ``x_tr``, merge back. Subclasses give ``_map``/``_unmap``
    (or their own `step`).

    Args:
        features: Number of features ``D``.
        context: Number of context features given to the conditioner with ``x_id`` (0: unconditional).
        mask: Which features pass through unchanged: ``"half"``, ``"alternating"`` (= ``"checkerboard"``) or a
            boolean tensor of shape ``(D,)``, True where fixed.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden layer sizes of the MLP conditioner.
        activation: Activation of the MLP: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
    """

    params_per_feature = 1

    def __init__(self, features: int, context: int = 0, mask: str | Tensor = "half", flip: bool = False,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu") -> None:
        super().__init__()
        m = coupling_mask(features, mask, flip)
        self.register_buffer("idx_id", torch.nonzero(m).flatten())
        self.register_buffer("idx_tr", torch.nonzero(~m).flatten())
        self.register_buffer("merge", torch.argsort(torch.cat([self.idx_id, self.idx_tr])))
        n_id, n_tr = int(m.sum()), int((~m).sum())
        # a fixed part that is one contiguous block (the "half" masks) is split by slicing, not gathering:
        # x = [x[:, :cut], x[:, cut:]] with the fixed block first or last
        if m[:n_id].all():
            self.fixed_first, self.cut = True, n_id
        elif m[n_tr:].all():
            self.fixed_first, self.cut = False, n_tr
        else:
            self.fixed_first, self.cut = None, 0
        self.net = MLP(n_id + context, self.params_per_feature * n_tr, hidden, activation)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.fixed_first is None:
            return x[:, self.idx_id], x[:, self.idx_tr]
        a, b = x[:, : self.cut], x[:, self.cut :]
        return (a, b) if self.fixed_first else (b, a)

    def _merge(self, x_id: Tensor, y_tr: Tensor) -> Tensor:
        if self.fixed_first is None:
            return torch.cat([x_id, y_tr], -1)[:, self.merge]
        return torch.cat([x_id, y_tr] if self.fixed_first else [y_tr, x_id], -1)

    def step(self, x_id: Tensor, x_tr: Tensor, context: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """The coupling on its two parts: the new transformed part and the log-det (``inverse`` for latent -> data)."""
        params = self.net(x_id if context is None else join_context(x_id, context))
        return self._unmap(x_tr, params) if inverse else self._map(x_tr, params)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_id, x_tr = self._parts(x)
        z_tr, ladj = self.step(x_id, x_tr, context)
        return self._merge(x_id, z_tr), ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_id, z_tr = self._parts(z)
        x_tr, ladj = self.step(z_id, z_tr, context, inverse=True)
        return self._merge(z_id, x_tr), ladj

    def _map(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _unmap(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class CouplingChain(Compose):
    """`Compose` for coupling layers: between consecutive couplings that cut x at the
    same column (alternating "half" masks), x stays in its two blocks, so each layer costs its network
    and its elementwise map, with no slicing or concatenation. Same layers, parameters and results as
    ``Compose``; layers are run through `Coupling.step` (per-layer forward hooks are not called)."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(x, context, list(self.bijections), inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._run(z, context, list(reversed(self.bijections)), inverse=True)

    def _run(self, x: Tensor, context: Tensor | None, layers: list, inverse: bool) -> tuple[Tensor, Tensor]:
        ladjs = []
        a = b = None  # x == cat([a, b]) cut at column `cut` while split
        cut = 0
        for layer in layers:
            if isinstance(layer, Coupling) and layer.fixed_first is not None:
                if a is None or cut != layer.cut:
                    if a is not None:
                        x = torch.cat([a, b], -1)
                    cut = layer.cut
                    a, b = x[:, :cut], x[:, cut:]
                if layer.fixed_first:
                    b, ladj = layer.step(a, b, context, inverse)
                else:
                    a, ladj = layer.step(b, a, context, inverse)
            else:
                if a is not None:
                    x, a, b = torch.cat([a, b], -1), None, None
                ctx = layer_context(layer, context)
                x, ladj = layer.inverse(x, ctx) if inverse else layer(x, ctx)
            ladjs.append(ladj)
        if a is not None:
            x = torch.cat([a, b], -1)
        return x, total_ladj(ladjs, x)


@TRANSFORMS.register("AdditiveCoupling")
class AdditiveCoupling(Coupling):
    """Additive coupling layer (NICE): shift one part of x by a function of the other; volume preserving.

    Data -> latent: ``z_id = x_id``, ``z_tr = x_tr + t(x_id, context)`` with ``t`` an MLP; latent -> data:
    ``x_tr = z_tr - t(z_id, context)``. The Jacobian is unit triangular: ``log|det dz/dx| = 0``.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to the conditioner with ``x_id`` (0: unconditional).
        mask: Which features pass through unchanged: ``"half"`` (the first ``ceil(D/2)``), ``"alternating"``
            (= ``"checkerboard"``, the even indices) or a boolean tensor of shape ``(D,)``, True where fixed.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden layer sizes of the MLP conditioner.
        activation: Activation of the MLP: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.

    References:
        L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation (2014).
        https://arxiv.org/abs/1410.8516

    Examples:
        >>> layer = AdditiveCoupling(4, context=2, hidden=(8,))
        >>> x, c = torch.randn(3, 4), torch.randn(3, 2)
        >>> z, ladj = layer(x, c)
        >>> torch.equal(z[:, :2], x[:, :2]), ladj  # the first half passes unchanged
        (True, tensor([0., 0., 0.]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-5)
        True
    """

    def _map(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params, x.new_zeros(x.shape[0])

    def _unmap(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z - params, z.new_zeros(z.shape[0])


@TRANSFORMS.register("AffineCoupling")
class AffineCoupling(Coupling):
    """Affine coupling layer (RealNVP): scale and shift one part of x by functions of the other.

    Data -> latent (``forward``)::

        z_id = x_id,    z_tr = (x_tr - t) * exp(-s),    (t, s_raw) = net(x_id, context),
        log|det dz/dx| = -sum(s).

    The latent -> data map is ``x_tr = z_tr * exp(s) + t`` (log|det| = +sum(s)).

    The log-scale is bounded smoothly, ``s = B tanh(s_raw / B)`` with ``B = scale_bound`` (default 3),
    which keeps exp(s) in (e^-B, e^B) and avoids the overflow of an unbounded exp; ``None`` removes it.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to the conditioner with ``x_id`` (0: unconditional).
        mask: Which features pass through unchanged: ``"half"`` (the first ``ceil(D/2)``), ``"alternating"``
            (= ``"checkerboard"``, the even indices) or a boolean tensor of shape ``(D,)``, True where fixed.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden layer sizes of the MLP conditioner.
        activation: Activation of the MLP: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        scale_bound: Bound ``B`` of the log-scale; ``None``: unbounded.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = AffineCoupling(4, context=2, mask="alternating", hidden=(8,))
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight, std=0.5)  # leave the identity it starts as
        >>> x, c = torch.randn(3, 4), torch.randn(3, 2)
        >>> z, ladj = layer(x, c)
        >>> torch.equal(z[:, ::2], x[:, ::2]), ladj.shape  # the even features pass unchanged
        (True, torch.Size([3]))
        >>> x_back, inv_ladj = layer.inverse(z, c)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(ladj + inv_ladj, torch.zeros(3), atol=1e-5)
        (True, True)
    """

    params_per_feature = 2

    def __init__(self, features: int, context: int = 0, mask: str | Tensor = "half", flip: bool = False,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu", scale_bound: float | None = 3.0) -> None:
        super().__init__(features, context, mask, flip, hidden, activation)
        self.scale_bound = scale_bound

    def _map(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.chunk(2, dim=-1)
        s = bounded_log_scale(raw, self.scale_bound)
        return (x - shift) / torch.exp(s), -s.sum(-1)

    def _unmap(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.chunk(2, dim=-1)
        s = bounded_log_scale(raw, self.scale_bound)
        return torch.addcmul(shift, z, torch.exp(s)), s.sum(-1)
