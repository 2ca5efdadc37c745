"""Planar and radial flows (Rezende & Mohamed, 2015).

Both are defined in the generative direction f: latent -> data, so here ``inverse`` is the closed
form and ``forward`` (data -> latent) solves for the latent point: the planar flow by 1-D
bisection plus one Newton step, the radial flow by the root of a quadratic (closed form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS
from ..utils import bisect

__all__ = ["Planar", "Radial"]


@TRANSFORMS.register("Planar", conditional=False)
class Planar(Bijection):
    """``x = f(z) = z + u' tanh(w.z + b)`` (latent -> data), log|det df/dz| = log|1 + (1 - tanh^2(w.z + b)) w.u'|.

    Invertibility needs ``w.u' >= -1``: the effective ``u' = u + (m(w.u) - w.u) w / |w|^2`` with
    ``m(a) = -1 + softplus(a)`` guarantees it. The data -> latent direction is not closed form: with
    ``a = w.z``, ``w.x = a + (w.u') tanh(a + b)`` is strictly increasing in ``a``; ``a`` is bracketed
    in ``[w.x - |w.u'|, w.x + |w.u'|]``, found by bisection in float64 and polished by one Newton
    step that carries gradients (implicit function theorem).
    """

    analytic_forward = False

    def __init__(self, features: int, context: int = 0):
        super().__init__()
        self.u = nn.Parameter(torch.randn(features) * 0.1)
        self.w = nn.Parameter(torch.randn(features) * 0.1)
        self.b = nn.Parameter(torch.zeros(()))

    def effective_u(self) -> Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w + 1e-12)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = self.effective_u()
        h = torch.tanh(z @ self.w + self.b)
        x = z + h.unsqueeze(-1) * u
        return x, torch.log1p((1 - h.square()) * (self.w @ u))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = self.effective_u()
        c, wx = self.w @ u, x @ self.w

        def g(a: Tensor) -> Tensor:
            return a + c * torch.tanh(a + self.b)

        with torch.no_grad():
            c64, wx64, b64 = c.double(), wx.double(), self.b.double()
            a = bisect(lambda a: a + c64 * torch.tanh(a + b64), wx64, wx64 - c64.abs(), wx64 + c64.abs())
            a = a.to(x.dtype)
        h = torch.tanh(a + self.b)
        a = a - (g(a) - wx) / (1 + c * (1 - h.square()))  # Newton step: exact value, implicit gradient
        h = torch.tanh(a + self.b)
        z = x - h.unsqueeze(-1) * u
        return z, -torch.log1p((1 - h.square()) * c)


@TRANSFORMS.register("Radial", conditional=False)
class Radial(Bijection):
    """``x = f(z) = z + beta (z - z0) / (alpha + r)``, ``r = |z - z0|`` (latent -> data), with
    ``alpha = softplus(.) > 0`` and ``beta = -alpha + softplus(.) > -alpha`` for invertibility;
    log|det df/dz| = (D - 1) log(1 + beta/(alpha + r)) + log(1 + alpha beta/(alpha + r)^2).

    The data -> latent direction is exact: with ``y = x - z0``, ``r`` solves
    ``r^2 + (alpha + beta - |y|) r - alpha |y| = 0`` (the positive root), and ``z - z0 = y (alpha + r)/(alpha + r + beta)``.
    """

    def __init__(self, features: int, context: int = 0):
        super().__init__()
        self.features = features
        self.z0 = nn.Parameter(torch.randn(features) * 0.1)
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    def _alpha_beta(self) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.alpha_raw)
        return alpha, F.softplus(self.beta_raw) - alpha

    def _ladj(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        return (self.features - 1) * torch.log1p(beta / (alpha + r)) + torch.log1p(alpha * beta / (alpha + r).square())

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self._alpha_beta()
        diff = z - self.z0
        r = diff.norm(dim=-1)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * diff
        return x, self._ladj(r, alpha, beta)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self._alpha_beta()
        y = x - self.z0
        s = y.norm(dim=-1)
        q = alpha + beta - s
        root = torch.sqrt(q.square() + 4 * alpha * s)
        # the positive root of r^2 + q r - alpha s = 0, in the form that avoids cancellation
        r = torch.where(q > 0, 2 * alpha * s / (root + q), (root - q) / 2)
        z = self.z0 + y * ((alpha + r) / (alpha + r + beta)).unsqueeze(-1)
        return z, -self._ladj(r, alpha, beta)
