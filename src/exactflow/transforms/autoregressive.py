"""Masked autoregressive transforms (MAF, IAF): ``z_i = f(x_i; theta_i(x_<i, context))`` with a MADE
conditioner, so the Jacobian dz/dx is triangular in the autoregressive order and
log|det dz/dx| = sum_i log f'(x_i; theta_i).

The elementwise map ``f`` is a :class:`Univariate` kernel (affine here, rational-quadratic spline in
:mod:`exactflow.transforms.splines`); a kernel plus the generic :class:`MaskedAutoregressive` layer
is a complete transform. Data -> latent takes one network pass; latent -> data takes D passes (after
pass t the first t features in the order are exact).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..core import Bijection, Inverse
from ..nets import MADE
from ..registry import TRANSFORMS

__all__ = ["Univariate", "AffineUnivariate", "MaskedAutoregressive", "MaskedAffineAutoregressive", "IAF"]

#: from this many features and values on, the forward without autograd has the MADE lay the kernel's parameters
#: out parameter-major (each a ``(batch, D)`` slice with contiguous rows): elementwise ops on the interleaved
#: ``(..., 2)`` layout do not vectorise (MAF log_prob at d = 64, batch 4096: 8% faster; with autograd no gain)
PARAM_MAJOR_MIN_FEATURES = 16
PARAM_MAJOR_MIN_SIZE = 16384

#: the incremental sampler runs when D * batch reaches this (and D >= 2); below it D plain passes cost as little
INCREMENTAL_MIN_SIZE = 256


class Univariate:
    """A strictly increasing scalar map ``z = f(x; p)`` applied elementwise, with ``n_params`` parameters
    per element in the last dimension of ``p`` (shape ``(*x.shape, n_params)``). All-zero parameters
    give the identity. Kernels hold no tensors; conditioners produce ``p``."""

    n_params: int = 0
    #: True when the kernel works on its parameters as rows ``(n_params, N)`` (:meth:`forward_rows`), so a
    #: conditioner should lay them out that way instead of ``(..., n_params)`` (saves a transposed copy)
    param_rows: bool = False

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log f'(x))``, both shaped like ``x``."""
        raise NotImplementedError

    def forward_rows(self, x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` on a flat ``x`` of N values with the parameters as ``rows`` ``(n_params, N)``
        (kernels with :attr:`param_rows` set)."""
        raise NotImplementedError

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log (f^-1)'(z))``, both shaped like ``z``."""
        raise NotImplementedError

    def inverse_rows(self, z: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`inverse` on a flat ``z`` of N values with the parameters as ``rows`` ``(n_params, N)``."""
        return self.inverse(z, rows.t())


class _BoundedAffine(torch.autograd.Function):
    """``(z, -s)`` with ``z = x exp(-s) + t``, ``s = B tanh(r / B)``, ``p = (t, r)`` in the last dimension, as one
    autograd node. Backward by hand: ``dz/dt = 1``, ``dz/dx = exp(-s)``, and with ``u = sigmoid(2r / B)`` (so
    ``-s = B - 2Bu``) ``d(-s)/dr = -4u(1 - u)``, the gradient of ``p`` formed as one tensor (autograd's graph
    here has eight nodes and zero-fills a tensor the size of ``p`` per parameter). Under ``create_graph`` the
    backward recomputes ``u`` and ``exp(-s)`` from the inputs, so the gradient is differentiable again."""

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor, bound: float) -> tuple[Tensor, Tensor]:
        u = torch.mul(p[..., 1], 2 / bound).sigmoid_()
        neg_s = torch.mul(u, -2 * bound).add_(bound)
        e = torch.exp(neg_s)
        ctx.save_for_backward(x, p, u, e)
        ctx.bound = bound
        return torch.addcmul(p[..., 0], x, e), neg_s

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_neg_s: Tensor) -> tuple[Tensor, Tensor, None]:
        x, p, u, e = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the same formulas, differentiable in x and p
            u = torch.sigmoid(p[..., 1] * (2 / ctx.bound))
            e = torch.exp(ctx.bound - 2 * ctx.bound * u)
            grad_r = (grad_neg_s + grad_z * x * e) * (u * (1 - u)) * -4
        else:
            grad_r = torch.addcmul(grad_neg_s, grad_z, x * e)  # d/d(-s): z through x e^{-s}, and the log-det
            grad_r.mul_(torch.addcmul(u, u, u, value=-1)).mul_(-4)
        return grad_z * e, torch.stack((grad_z.expand_as(x), grad_r), -1), None


#: up to this many elements a fresh buffer is cheap (the allocator reuses it, no page faults): the no-grad affine
#: kernel then takes the form with fewer ops; above it the in-place form with fewer fresh buffers
SMALL = 32768

#: below this many elements the autograd graph of the affine kernel is cheaper than :class:`_BoundedAffine`
#: (per-call Python overhead of a custom autograd function); above it the fused backward wins
FUSED_AFFINE_MIN_SIZE = 16384


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _plain_autograd() -> bool:
    """True outside ``torch.func`` transforms and forward-mode AD: where :class:`_BoundedAffine`'s hand-written
    backward is all that is asked for (it has no vmap rule and no jvp); inside them the plain graph runs."""
    return (_functorch_active is not None and not _functorch_active()
            and getattr(torch.autograd.forward_ad, "_current_level", 0) < 0)


class AffineUnivariate(Univariate):
    """``z = x * exp(-s) + t`` with ``p = (t, s_raw)`` and ``s = B tanh(s_raw / B)``
    (``B = scale_bound``, ``None``: unbounded); log f'(x) = -s.

    The shift acts after the scale, in latent units: dz/dt = 1 whatever the scale, so the network's shift
    and scale outputs move z independently. With the shift first, ``(x - t) exp(-s)``, the shift's gradient
    carries the factor exp(-s) and its effective step size follows the learnt scale; in MAF on 8 Gaussians
    (docs/benchmarks.md, 10 seeds) that form ended 0.07 nats worse in test NLL."""

    n_params = 2

    def __init__(self, scale_bound: float | None = 3.0):
        if scale_bound is not None and scale_bound <= 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.scale_bound = scale_bound

    def _log_scale(self, raw: Tensor, sign: float) -> Tensor:
        """``sign * s``; ``B tanh(r / B) = 2B sigmoid(2r / B) - B`` (torch's sigmoid is much faster than tanh).
        Without autograd the steps run in place on one fresh tensor (at large batches every fresh buffer
        costs page faults)."""
        bound = self.scale_bound
        if bound is None:
            return raw if sign > 0 else -raw
        if raw.requires_grad or raw.numel() <= SMALL:  # sign (2Bu - B) = -sign B - (-sign 2B) u in one op
            return torch.rsub(torch.sigmoid(raw * (2 / bound)), -sign * bound, alpha=-sign * 2 * bound)
        return torch.mul(raw, 2 / bound).sigmoid_().sub_(0.5).mul_(2 * bound * sign)

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        if (self.scale_bound is not None and torch.is_grad_enabled() and x.numel() >= FUSED_AFFINE_MIN_SIZE
                and p.shape[:-1] == x.shape and not torch.compiler.is_compiling() and _plain_autograd()):
            return _BoundedAffine.apply(x, p, self.scale_bound)
        shift, raw = p.unbind(-1)  # one autograd node for both (two selects would zero-fill one tensor each)
        neg_s = self._log_scale(raw, -1.0)
        if (neg_s.requires_grad or x.requires_grad or neg_s.shape != x.shape or neg_s.dtype != x.dtype
                or x.numel() <= SMALL):
            return torch.addcmul(shift, x, torch.exp(neg_s)), neg_s
        return torch.exp(neg_s).mul_(x).add_(shift), neg_s

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = p.unbind(-1)
        s = self._log_scale(raw, 1.0)
        return (z - shift) * torch.exp(s), s

    def __repr__(self) -> str:
        return f"AffineUnivariate(scale_bound={self.scale_bound})"


class MaskedAutoregressive(Bijection):
    """``z_i = f(x_i; theta_i)``, ``theta = MADE(x, context)`` with ``theta_i`` a function of the features before
    ``i`` in :attr:`order` (and of the context); log|det dz/dx| = sum_i log f'(x_i; theta_i).

    ``forward`` (data -> latent, density) is one MADE pass; ``inverse`` (latent -> data, sampling) runs
    D passes ``x <- f^-1(z; MADE(x))`` from ``x = 0``. ``Inverse`` of this layer is an inverse
    autoregressive flow layer with the costs swapped. ``order``, ``residual`` and ``seed`` go to
    :class:`~exactflow.nets.MADE`; ``identity_init`` zeroes its output layer so the layer starts as the
    identity (all-zero kernel parameters), otherwise it keeps PyTorch's default initialisation.
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        univariate: Univariate | None = None,
        hidden: Sequence[int] = (64, 64),
        order: str | Tensor = "natural",
        residual: bool = False,
        activation: str = "relu",
        seed: int | None = None,
        identity_init: bool = True,
    ):
        super().__init__()
        self.univariate = univariate if univariate is not None else AffineUnivariate()
        self.features = features
        self.net = MADE(features, self.univariate.n_params, hidden, context, order, residual, activation,
                        zero_last=identity_init, seed=seed)

    @property
    def order(self) -> Tensor:
        """Feature indices in autoregressive order: the Jacobian is lower triangular after permuting by it."""
        return self.net.order

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.univariate.param_rows:  # kernel on (feature, batch)-ordered values: x and z transposed (small)
            n = x.shape[0]
            z, logd = self.univariate.forward_rows(x.t().reshape(-1), self.net(x, context, layout="rows"))
            return z.view(self.features, n).t().contiguous(), logd.view(self.features, n).sum(0)
        wide = (self.features >= PARAM_MAJOR_MIN_FEATURES and x.numel() >= PARAM_MAJOR_MIN_SIZE
                and not torch.is_grad_enabled())
        z, logd = self.univariate.forward(x, self.net(x, context, layout="params" if wide else "features"))
        return z, logd.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if (context is None) != (self.net.context_features == 0):
            raise ValueError(f"this layer takes a context of {self.net.context_features} features (0: none), "
                             f"got {'none' if context is None else tuple(context.shape)}")
        # the incremental sampler needs no gradients and a plain MADE; it pays off once D * batch is not tiny
        if (torch.is_grad_enabled() or self.net.residual or self.features < 2
                or self.features * z.shape[0] < INCREMENTAL_MIN_SIZE):
            return self._inverse_passes(z, context)
        return self._inverse_incremental(z, context)

    def _inverse_passes(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """D full MADE passes ``x <- f^-1(z; MADE(x))`` from ``x = 0`` (differentiable; any MADE)."""
        x = torch.zeros_like(z)
        if self.univariate.param_rows:  # the kernel on (feature, batch)-ordered rows, as in forward
            n, flat = z.shape[0], z.t().reshape(-1)
            for _ in range(self.features):
                xt, logd = self.univariate.inverse_rows(flat, self.net(x, context, layout="rows"))
                x = xt.view(self.features, n).t()
            return x.contiguous(), logd.view(self.features, n).sum(0)
        for _ in range(self.features):
            x, logd = self.univariate.inverse(z, self.net(x, context))
        return x, logd.sum(-1)

    def _sampler_plan(self) -> tuple[list[list[Tensor]], list[list[tuple[int, int, int]]], list[Tensor]]:
        """The MADE's weights laid out for :meth:`_inverse_incremental`, cached until a parameter changes.

        Every layer's units are sorted by degree and each weight matrix gets its bias as a leading column
        (the states carry a leading row of ones), the first layer's columns ordered (bias, context, features in
        degree order). Returns, per layer and step t, the weight block of the units of degree t over the
        inputs already final, the spans ``(first unit, last unit + 1, inputs used)`` and the output blocks."""
        net = self.net
        tracing = torch.compiler.is_compiling()
        if not tracing:
            sources = (*net.parameters(), *net.buffers())
            key = (net.generation(), *((t.data_ptr(), t._version, t.dtype, t.device) for t in sources))
            cached = self.__dict__.get("_plan")
            if cached is not None and cached[0] == key:
                return cached[2]
        d, ctx, params = self.features, net.context_features, net.params
        order = net.order
        columns = torch.cat([order, torch.arange(d, d + ctx, device=order.device)])
        degrees = net.hidden_degrees
        blocks, spans, prev, prev_ends = [], [], None, None
        for layer, g in zip(net.layers, degrees):
            o = torch.argsort(g, stable=True)
            ends = torch.searchsorted(g[o], torch.arange(d + 1, device=g.device), right=True).tolist()
            w = layer.masked_weight()[o]
            if prev is None:  # inputs (1, context, features in degree order): step t uses 1 + ctx + t of them
                w = torch.cat([w[:, columns[d:]], w[:, columns[:d]]], 1)
                used = [1 + ctx + t for t in range(d)]
            else:
                w = w[:, prev]
                used = [1 + prev_ends[t] for t in range(d)]
            w = torch.cat([layer.bias[o].unsqueeze(1), w], 1)
            span = [((ends[t - 1] if t else 0), ends[t], used[t]) for t in range(d)]
            blocks.append([w[lo:hi, :k] for lo, hi, k in span])
            spans.append(span)
            prev, prev_ends = o, ends
        rows = (order.unsqueeze(1) * params + torch.arange(params, device=order.device)).flatten()
        w_out = torch.cat([net.out.bias[rows].unsqueeze(1), net.out.masked_weight()[rows][:, prev]], 1)
        outputs = [w_out[t * params:(t + 1) * params, : 1 + prev_ends[t]] for t in range(d)]
        plan = (blocks, spans, outputs)
        if not tracing:  # the sources are kept aliased so their storage cannot be reused under the same key
            self._plan = (key, tuple(t.detach() for t in sources), plan)
        return plan

    @torch.no_grad()
    def _inverse_incremental(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The same inverse in about one MADE pass of arithmetic (no gradients; plain, non-residual MADE).

        A hidden unit of degree m depends only on the features of degree <= m. With the features and every
        layer's units sorted by degree, step t (finding the feature of degree t + 1) computes, per layer, only
        the block of units of degree t from the final units below (the first layer from the context and the
        features of degree <= t), then that feature's parameters from the final units of the last layer, and
        inverts that one feature. Every weight is used once in all. States are ``(1 + units, batch)`` with a
        row of ones that applies the biases inside the products, so each block is one product into a
        contiguous slab of rows (:meth:`_sampler_plan` holds the blocks).
        """
        net, d, n = self.net, self.features, z.shape[0]
        blocks, spans, outputs = self._sampler_plan()
        ctx = net.context_features
        inputs = z.new_empty(1 + ctx + d, n)  # rows: 1, context, then the features in degree order
        inputs[0] = 1
        if context is not None:
            inputs[1:1 + ctx] = context.t()
        states = [inputs]
        for span in spans:
            h = z.new_empty(1 + span[-1][1], n)
            h[0] = 1
            states.append(h)
        xs = inputs[1 + ctx:]
        zs = z.t()[net.order]  # (D, batch), row t: the feature of degree t + 1
        relu = type(net.act) is torch.nn.ReLU
        inverse = self.univariate.inverse_rows
        ladj = z.new_zeros(n)
        for t in range(d):  # the units of degree t are complete once the features of degree <= t are known
            for l in range(len(blocks)):
                lo, hi, k = spans[l][t]
                if hi > lo:
                    block = torch.mm(blocks[l][t], states[l][:k], out=states[l + 1][1 + lo:1 + hi])
                    if relu:
                        block.relu_()
                    else:
                        block.copy_(net.act(block))
            w = outputs[t]
            x, logd = inverse(zs[t], torch.mm(w, states[-1][: w.shape[1]]))
            xs[t] = x
            ladj += logd
        return xs[net.input_degrees - 1].t(), ladj

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_plan", None)
        return state

    def extra_repr(self) -> str:
        return f"features={self.features}, univariate={self.univariate!r}"


@TRANSFORMS.register("MaskedAffineAutoregressive", test_kwargs={"hidden": (16, 16)})
class MaskedAffineAutoregressive(MaskedAutoregressive):
    """MAF layer (Papamakarios et al. 2017): affine autoregressive; one-pass forward, D-pass inverse.

    ``z_i = x_i * exp(-s_i) + t_i``, ``(t_i, s_i)`` from a MADE on ``x_<i`` and the context;
    log|det dz/dx| = -sum_i s_i, with ``s = B tanh(s_raw / B)``, ``B = scale_bound``.

    The MADE keeps its random initialisation by default (``identity_init=False``): on the 2-D benchmarks in
    docs/benchmarks.md it reached clearly lower test NLL than starting every layer at the identity."""

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        order: str | Tensor = "natural",
        residual: bool = False,
        activation: str = "relu",
        scale_bound: float | None = 3.0,
        seed: int | None = None,
        identity_init: bool = False,
    ):
        super().__init__(features, context, AffineUnivariate(scale_bound), hidden, order, residual, activation, seed,
                         identity_init)


@TRANSFORMS.register("IAF", test_kwargs={"hidden": (16, 16)})
def IAF(features: int, context: int = 0, **kwargs) -> Inverse:
    """IAF layer (Kingma et al. 2016) = ``Inverse(MaskedAffineAutoregressive)``: one-pass sampling, D-pass density.

    Latent -> data (sampling, and ``sample_and_log_prob`` for variational posteriors) is one MADE pass;
    data -> latent takes D passes."""
    return Inverse(MaskedAffineAutoregressive(features, context, **kwargs))
