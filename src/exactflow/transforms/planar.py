"""Planar and radial flows (Rezende & Mohamed, 2015), unconditional or amortised.

Both are defined in the generative direction f: latent -> data, so here ``inverse`` is the closed
form and ``forward`` (data -> latent) solves for the latent point: the planar flow by 1-D
bisection plus one Newton step, the radial flow by the root of a quadratic (closed form).

With ``context = c > 0`` the raw parameters are affine in the context (amortised inference, as
in the paper's VAE): ``theta(c) = theta_0 + A c``, one linear map per layer; the invertibility
reparameterisations are applied to ``theta(c)`` row by row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS
from ..utils import bisect

__all__ = ["Planar", "Radial"]


def _hypernet(context: int, outputs: int) -> nn.Linear | None:
    """The map ``c -> A c`` added to the raw parameters (None when unconditional); starts small."""
    if not context:
        return None
    net = nn.Linear(context, outputs)
    with torch.no_grad():
        net.weight.mul_(0.1)
        net.bias.zero_()
    return net


def _raw(module: nn.Module, base: list[Tensor], context: Tensor | None) -> list[Tensor]:
    """Raw parameters: ``base`` (unbatched) when unconditional, else ``base + A c`` with a batch dim."""
    net = module.hyper
    if net is None:
        return base
    if context is None:
        raise ValueError(f"{type(module).__name__} was built with context={net.in_features} and needs a context")
    sizes = [t.numel() for t in base]
    delta = net(context.to(base[0].dtype)).split(sizes, dim=-1)
    return [t + d.reshape(-1, *t.shape) for t, d in zip(base, delta, strict=False)]


def _effective_u(u: Tensor, w: Tensor) -> Tensor:
    """``u' = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = softplus(a) - 1``, so that ``w.u' >= -1``."""
    wu = (w * u).sum(-1, keepdim=True)
    return u + (F.softplus(wu) - 1 - wu) * w / ((w * w).sum(-1, keepdim=True) + 1e-12)


@TRANSFORMS.register("Planar", conditional=True)
class Planar(Bijection):
    """Planar flow layer: a contraction or expansion along one hyperplane; closed form in the sampling direction.

    Latent -> data (``inverse``, closed form)::

        x = f(z) = z + u' tanh(w.z + b),      log|det df/dz| = log|1 + (1 - tanh^2(w.z + b)) w.u'|.

    Data -> latent (``forward``) returns ``z = f^-1(x)`` and ``log|det dz/dx| = -log|det df/dz|`` at that ``z``.
    Invertibility needs ``w.u' >= -1``: the effective ``u' = u + (m(w.u) - w.u) w / |w|^2`` with
    ``m(a) = -1 + softplus(a)`` guarantees it. The data -> latent direction is not closed form: with
    ``a = w.z``, ``w.x = a + (w.u') tanh(a + b)`` is strictly increasing in ``a``; ``a`` is bracketed
    in ``[w.x - |w.u'|, w.x + |w.u'|]``, narrowed by 40 bisection steps in float64 (to 2^-39 |w.u'|)
    and polished by one Newton step that carries gradients (implicit function theorem).
    With ``context > 0``, ``(u, w, b) = (u_0, w_0, b_0) + A c``.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional); the raw ``(u, w, b)`` are then affine in it.

    References:
        D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows (2015).
        https://arxiv.org/abs/1505.05770

    Examples:
        >>> layer = Planar(3, context=2)
        >>> z, c = torch.randn(4, 3), torch.randn(4, 2)
        >>> x, ladj = layer.inverse(z, c)  # sampling direction: closed form
        >>> x.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> z_back, fwd_ladj = layer(x, c)  # density direction: bisection and a Newton step
        >>> torch.allclose(z_back, z, atol=1e-5), torch.allclose(ladj + fwd_ladj, torch.zeros(4), atol=1e-5)
        (True, True)
    """

    analytic_forward = False

    def __init__(self, features: int, context: int = 0) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(features) * 0.1)
        self.w = nn.Parameter(torch.randn(features) * 0.1)
        self.b = nn.Parameter(torch.zeros(()))
        self.hyper = _hypernet(context, 2 * features + 1)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Effective ``u'``, ``w`` (``(D,)``, or ``(batch, D)`` with context) and ``b`` (``()`` or ``(batch,)``)."""
        u, w, b = _raw(self, [self.u, self.w, self.b], context)
        return _effective_u(u, w), w, b

    def effective_u(self, context: Tensor | None = None) -> Tensor:
        """The invertibility-constrained ``u'`` (one row per context row when conditional)."""
        return self._params(context)[0]

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, w, b = self._params(context)
        h = torch.tanh((z * w).sum(-1) + b)
        x = z + h.unsqueeze(-1) * u
        return x, torch.log1p((1 - h.square()) * (w * u).sum(-1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, w, b = self._params(context)
        c, wx = (w * u).sum(-1), (x * w).sum(-1)

        def g(a: Tensor) -> Tensor:
            return a + c * torch.tanh(a + b)

        with torch.no_grad():
            c64, wx64, b64 = c.double(), wx.double(), b.double()
            a = bisect(lambda a: a + c64 * torch.tanh(a + b64), wx64, wx64 - c64.abs(), wx64 + c64.abs(), iters=40)
            a = a.to(x.dtype)
        h = torch.tanh(a + b)
        a = a - (g(a) - wx) / (1 + c * (1 - h.square()))  # Newton step: exact value, implicit gradient
        h = torch.tanh(a + b)
        z = x - h.unsqueeze(-1) * u
        return z, -torch.log1p((1 - h.square()) * c)


@TRANSFORMS.register("Radial", conditional=True)
class Radial(Bijection):
    """Radial flow layer: a contraction or expansion around a reference point; closed form both ways.

    Latent -> data (``inverse``)::

        x = f(z) = z + beta (z - z0) / (alpha + r),      r = |z - z0|,
        log|det df/dz| = (D - 1) log(1 + beta/(alpha + r)) + log(1 + alpha beta/(alpha + r)^2),

    with ``alpha = softplus(.) > 0`` and ``beta = -alpha + softplus(.) > -alpha`` for invertibility.
    Data -> latent (``forward``) returns ``z = f^-1(x)`` and ``log|det dz/dx| = -log|det df/dz|``.

    The data -> latent direction is exact: with ``y = x - z0``, ``r`` solves
    ``r^2 + (alpha + beta - |y|) r - alpha |y| = 0`` (the positive root), and
    ``z - z0 = y (alpha + r)/(alpha + r + beta)``.
    With ``context > 0``, the raw ``(z0, alpha, beta)`` are ``(z0_0, alpha_0, beta_0) + A c``.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional); the raw ``(z0, alpha, beta)`` are then affine
            in it.

    References:
        D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows (2015).
        https://arxiv.org/abs/1505.05770

    Examples:
        >>> layer = Radial(3)
        >>> with torch.no_grad():
        ...     _ = layer.beta_raw.fill_(1.0)
        >>> x = torch.randn(4, 3)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> x_back, inv_ladj = layer.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(ladj + inv_ladj, torch.zeros(4), atol=1e-5)
        (True, True)
    """

    def __init__(self, features: int, context: int = 0) -> None:
        super().__init__()
        self.features = features
        self.z0 = nn.Parameter(torch.randn(features) * 0.1)
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))
        self.hyper = _hypernet(context, features + 2)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``z0`` (``(D,)`` or ``(batch, D)``), ``alpha`` and ``beta`` (``()`` or ``(batch,)``)."""
        z0, a_raw, b_raw = _raw(self, [self.z0, self.alpha_raw, self.beta_raw], context)
        alpha = F.softplus(a_raw)
        return z0, alpha, F.softplus(b_raw) - alpha

    def _ladj(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        return (self.features - 1) * torch.log1p(beta / (alpha + r)) + torch.log1p(alpha * beta / (alpha + r).square())

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._params(context)
        diff = z - z0
        r = diff.norm(dim=-1)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * diff
        return x, self._ladj(r, alpha, beta)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._params(context)
        y = x - z0
        s = y.norm(dim=-1)
        q = alpha + beta - s
        root = torch.sqrt(q.square() + 4 * alpha * s)
        # the positive root of r^2 + q r - alpha s = 0, in the form that avoids cancellation
        r = torch.where(q > 0, 2 * alpha * s / (root + q), (root - q) / 2)
        z = z0 + y * ((alpha + r) / (alpha + r + beta)).unsqueeze(-1)
        return z, -self._ladj(r, alpha, beta)
