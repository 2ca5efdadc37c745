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
from torch.autograd.function import once_differentiable

from ..core import Bijection, Inverse
from ..nets import MADE
from ..registry import TRANSFORMS

__all__ = ["Univariate", "AffineUnivariate", "MaskedAutoregressive", "MaskedAffineAutoregressive", "IAF"]

#: the incremental sampler runs when D * batch reaches this (and D > 2); below it D plain passes cost less
INCREMENTAL_MIN_SIZE = 2048


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


class _BoundedAffine(torch.autograd.Function):
    """``(z, -s)`` with ``z = x exp(-s) + t``, ``s = B tanh(r / B)``, ``p = (t, r)`` in the last dimension, as one
    autograd node. Backward by hand: ``dz/dt = 1``, ``dz/dx = exp(-s)``, and with ``u = sigmoid(2r / B)`` (so
    ``-s = B - 2Bu``) ``d(-s)/dr = -4u(1 - u)``, the gradient of ``p`` formed as one tensor (autograd's graph
    here has eight nodes and zero-fills a tensor the size of ``p`` per parameter)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor, bound: float) -> tuple[Tensor, Tensor]:
        u = torch.mul(p[..., 1], 2 / bound).sigmoid_()
        neg_s = torch.mul(u, -2 * bound).add_(bound)
        e = torch.exp(neg_s)
        ctx.save_for_backward(x, u, e)
        return torch.addcmul(p[..., 0], x, e), neg_s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor, grad_neg_s: Tensor) -> tuple[Tensor, Tensor, None]:
        x, u, e = ctx.saved_tensors
        grad_r = torch.addcmul(grad_neg_s, grad_z, x * e)  # d/d(-s): z through x e^{-s}, and the log-det
        grad_r.mul_(torch.addcmul(u, u, u, value=-1)).mul_(-4)
        return grad_z * e, torch.stack((grad_z.expand_as(x), grad_r), -1), None


#: below this many elements the autograd graph of the affine kernel is cheaper than :class:`_BoundedAffine`
#: (per-call Python overhead of a custom autograd function); above it the fused backward wins
FUSED_AFFINE_MIN_SIZE = 16384


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
        if raw.requires_grad:
            return torch.add(torch.sigmoid(raw * (2 / bound)), -0.5).mul_(2 * bound * sign)
        return torch.mul(raw, 2 / bound).sigmoid_().sub_(0.5).mul_(2 * bound * sign)

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        if (self.scale_bound is not None and torch.is_grad_enabled() and x.numel() >= FUSED_AFFINE_MIN_SIZE
                and p.shape[:-1] == x.shape and not torch.compiler.is_compiling()):
            return _BoundedAffine.apply(x, p, self.scale_bound)
        neg_s = self._log_scale(p[..., 1], -1.0)
        if neg_s.requires_grad or x.requires_grad or neg_s.shape != x.shape or neg_s.dtype != x.dtype:
            return torch.addcmul(p[..., 0], x, torch.exp(neg_s)), neg_s
        return torch.exp(neg_s).mul_(x).add_(p[..., 0]), neg_s

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        s = self._log_scale(p[..., 1], 1.0)
        return (z - p[..., 0]) * torch.exp(s), s

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
            z, logd = self.univariate.forward_rows(x.t().reshape(-1), self.net(x, context, rows=True))
            return z.view(self.features, n).t().contiguous(), logd.view(self.features, n).sum(0)
        z, logd = self.univariate.forward(x, self.net(x, context))
        return z, logd.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # the incremental sampler needs no gradients and a plain MADE; it pays off once D * batch is not tiny
        if (torch.is_grad_enabled() or self.net.residual or self.features <= 2
                or self.features * z.shape[0] < INCREMENTAL_MIN_SIZE):
            return self._inverse_passes(z, context)
        return self._inverse_incremental(z, context)

    def _inverse_passes(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """D full MADE passes ``x <- f^-1(z; MADE(x))`` from ``x = 0`` (differentiable; any MADE)."""
        x = torch.zeros_like(z)
        for _ in range(self.features):
            x, logd = self.univariate.inverse(z, self.net(x, context))
        return x, logd.sum(-1)

    @torch.no_grad()
    def _inverse_incremental(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The same inverse in about one MADE pass of arithmetic (no gradients; plain, non-residual MADE).

        A hidden unit of degree m depends only on the features of degree <= m, so once the feature of degree
        t - 1 is known, the units of degree t - 1 are final and nothing else changes: step t adds that
        feature's column to the first layer (a rank-1 update), computes the units of degree t - 1 of each
        deeper layer from the final units below, then the parameters of the feature of degree t from the
        final units of the last layer, and inverts that one feature. Hidden units are sorted by degree, so
        each step touches contiguous blocks; states are kept as ``(units, batch)`` for contiguous rows.
        """
        net, d, n = self.net, self.features, z.shape[0]
        params = net.params
        degrees = net.hidden_degrees
        sort = [torch.argsort(g, stable=True) for g in degrees]
        # ends[l][m] = number of units of layer l with degree <= m (sorted, so units of degree m are a block)
        ends = [torch.searchsorted(g[o], torch.arange(d + 1, device=g.device), right=True).tolist()
                for g, o in zip(degrees, sort)]
        weights, biases, prev = [], [], None
        for layer, o in zip(net.layers, sort):
            w = layer.masked_weight()[o]
            weights.append(w if prev is None else w[:, prev].contiguous())
            biases.append(layer.bias[o].unsqueeze(1))
            prev = o
        w_in = weights[0][:, :d].t().contiguous()  # row j: first-layer weights of feature j
        w_out = net.out.masked_weight()[:, prev].contiguous()  # (D * params, units)
        b_out = net.out.bias.unsqueeze(1)
        act = net.act
        relu = type(act) is torch.nn.ReLU
        if context is None:
            pre = biases[0].expand(-1, n).contiguous()  # first-layer pre-activations at x = 0
        else:
            pre = torch.addmm(biases[0], weights[0][:, d:], context.to(z.dtype).t())
        hidden = [z.new_empty(w.shape[0], n) for w in weights]
        zt = z.t().contiguous()
        xt = torch.empty_like(zt)
        ladj = z.new_zeros(n)
        order = net.order.tolist()
        for t in range(d):  # find the feature of degree t + 1; units of degree t are complete
            if t:
                j, lo = order[t - 1], ends[0][t - 1]
                pre[lo:].addr_(w_in[j, lo:], xt[j])
            lo, hi = (ends[0][t - 1] if t else 0), ends[0][t]
            if hi > lo:
                hidden[0][lo:hi] = act(pre[lo:hi])
            for l in range(1, len(weights)):
                lo, hi = (ends[l][t - 1] if t else 0), ends[l][t]
                if hi > lo:
                    below = ends[l - 1][t]
                    block = torch.addmm(biases[l][lo:hi], weights[l][lo:hi, :below], hidden[l - 1][:below],
                                        out=hidden[l][lo:hi])
                    if relu:
                        block.relu_()
                    else:
                        block.copy_(act(block))
            i, known = order[t], ends[-1][t]
            rows = slice(i * params, (i + 1) * params)
            if known:
                theta = torch.addmm(b_out[rows], w_out[rows, :known], hidden[-1][:known])  # (params, batch)
            else:
                theta = b_out[rows].expand(params, n)
            xi, logd = self.univariate.inverse(zt[i].unsqueeze(1), theta.t().unsqueeze(1))
            xt[i] = xi[:, 0]
            ladj += logd[:, 0]
        return xt.t(), ladj

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
