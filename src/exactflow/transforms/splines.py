"""Rational-quadratic neural splines (Durkan et al. 2019): a monotone spline kernel on ``[-B, B]`` with
identity tails, used elementwise, in coupling layers and in autoregressive layers.

On ``[-B, B]`` the map has ``K`` bins with knots ``(x_k, y_k)`` and knot derivatives ``d_k`` (``d_0 = d_K = 1``
so the derivative is continuous at the tails). In bin ``k``, with ``w = x_{k+1} - x_k``, ``h = y_{k+1} - y_k``,
``s = h / w``, ``xi = (x - x_k) / w`` and ``t = xi (1 - xi)``::

    y = y_k + h (s xi^2 + d_k t) / (s + (d_k + d_{k+1} - 2 s) t)
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s t + d_k (1 - xi)^2) / (s + (d_k + d_{k+1} - 2 s) t)^2

Outside ``[-B, B]``, ``y = x`` and ``dy/dx = 1``. The inputs are clamped into ``[-B, B]`` before the
spline maths and the tails are selected afterwards, so inputs of any size (and all-out-of-range
batches) give finite values and finite gradients. The inverse solves ``a xi^2 + b xi + c = 0`` with the
discriminant clamped at zero, as ``xi = 2c / (-b - sqrt(b^2 - 4ac))`` where ``b >= 0`` and as the equal
``(-b + sqrt(b^2 - 4ac)) / 2a`` where ``b < 0``, so that neither form subtracts nearly equal numbers.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection
from ..nets import MLP, join_context
from ..registry import TRANSFORMS
from .autoregressive import MaskedAutoregressive, Univariate
from .coupling import Coupling

__all__ = ["RQSpline", "ElementwiseRQSpline", "RQSplineCoupling", "RQSplineAutoregressive"]


class RQSpline(Univariate):
    """Rational-quadratic spline kernel with ``bins`` bins on ``[-bound, bound]`` and identity tails.

    Parameters per element (``3 bins - 1``): unnormalised bin widths and heights (softmax, then at least
    ``min_width``/``min_height`` of the interval) and the interior knot derivatives
    (``min_derivative + softplus``). All-zero parameters give the identity.
    """

    param_rows = True

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3, min_height: float = 1e-3,
                 min_derivative: float = 1e-3):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if bound <= 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if not (0 <= min_width * bins < 1 and 0 <= min_height * bins < 1):
            raise ValueError(f"min_width and min_height times bins must lie in [0, 1), got {min_width}, {min_height}")
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}")
        self.bins, self.bound = bins, float(bound)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self.n_params = 3 * bins - 1
        # softplus(raw + shift) + min_derivative = 1 at raw = 0
        self._shift = math.log(math.expm1(1 - min_derivative))

    def __repr__(self) -> str:
        return f"RQSpline(bins={self.bins}, bound={self.bound})"

    def _columns(self, p: Tensor) -> Tensor:
        """``p`` as ``(3K - 1, N)``: one contiguous row per parameter, so every op below runs along rows
        of N elements (softmax along a short last dimension is very slow on CPU)."""
        if p.shape[-1] != self.n_params:
            raise ValueError(f"spline parameters have {p.shape[-1]} entries per element: expected {self.n_params}")
        return p.reshape(-1, self.n_params).t().contiguous()

    def _constants(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(2B m, 2B (1 - K m), -B + 2B j m for j = 1..K-1)``, ``m`` the minimum width (row 0) and height
        (row 1), as tensors on ``v``'s dtype and device, made once per dtype and device (as plain tensors even
        inside inference mode: autograd saves them in later training steps)."""
        key = (v.dtype, v.device)
        cached = self.__dict__.setdefault("_consts", {})
        if key not in cached:
            twice = 2 * self.bound
            with torch.inference_mode(False):
                mins = torch.tensor([[self.min_width], [self.min_height]], dtype=v.dtype, device=v.device)  # (2, 1)
                steps = torch.arange(1, self.bins, dtype=v.dtype, device=v.device).unsqueeze(1)  # (K - 1, 1)
                knots = (twice * mins).unsqueeze(1) * steps - self.bound  # (2, K - 1, 1)
                cached[key] = (twice * mins, twice * (1 - self.bins * mins), knots)
        return cached[key]

    def _bin(self, cols: Tensor, v: Tensor, kind: int) -> tuple[Tensor, ...]:
        """The bin holding ``v`` (``(N,)``, inside ``[-B, B]``) along the x knots (``kind`` 0) or the y knots (1),
        and that bin's ``(x_k, w, y_k, h, d_k, d_{k+1})``; a value on a knot goes to the bin it starts.

        Only the softmax over the bins and its running sum are formed for every bin; the knot positions,
        sizes and derivatives of the one bin in use are gathered and finished on ``(N,)`` vectors:
        ``x_k = -B + 2B (k m + (1 - K m) S_k)`` with ``S_k`` the softmax mass of bins ``< k`` and ``m`` the minimum size.
        """
        k, bound, n = self.bins, self.bound, v.shape[0]
        if k == 1:
            left = v.new_full((2, n), -bound)
            size = v.new_full((2, n), 2 * bound)
            d0 = d1 = v.new_ones(n)
            return left[0], size[0], left[1], size[1], d0, d1
        mins, scale, knot_base = self._constants(v)
        soft = torch.softmax(cols[: 2 * k].view(2, k, n), dim=1)
        mass = torch.cumsum(soft[:, : k - 1], dim=1)  # (2, K - 1, N): S_1 .. S_{K-1}
        a = 1 - k * (self.min_width, self.min_height)[kind]
        inner = torch.add(knot_base[kind], mass[kind], alpha=2 * bound * a)  # knots 1 .. K-1
        idx = (v >= inner).sum(0, keepdim=True)  # (1, N)
        prev = (idx - 1).clamp_min(0)
        first = idx == 0
        soft_k = torch.gather(soft, 1, idx.expand(2, 1, n)).squeeze(1)  # (2, N)
        mass_k = torch.gather(mass, 1, prev.expand(2, 1, n)).squeeze(1).masked_fill(first, 0.0)
        left = torch.addcmul(torch.mul(idx, mins).sub_(bound), scale, mass_k)  # x_k, y_k
        size = torch.addcmul(mins, scale, soft_k)  # w, h
        raw = torch.gather(cols[2 * k :], 0, torch.cat([prev, idx.clamp_max(k - 2)]))  # d_k, d_{k+1} before softplus
        d = F.softplus(raw + self._shift) + self.min_derivative
        d0 = d[0].masked_fill(first[0], 1.0)
        d1 = d[1].masked_fill(idx[0] == k - 1, 1.0)
        return left[0], size[0], left[1], size[1], d0, d1

    def knots(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Knot positions ``x_k``, values ``y_k`` and derivatives ``d_k``, each ``(*batch, K + 1)``."""
        k = self.bins
        if p.shape[-1] != self.n_params:
            raise ValueError(f"spline parameters have {p.shape[-1]} entries per element: expected {self.n_params}")
        w, h, d = p.split([k, k, k - 1], dim=-1)
        one = p.new_ones((*p.shape[:-1], 1))
        derivs = torch.cat([one, self.min_derivative + F.softplus(d + self._shift), one], dim=-1)
        return self._knots(w, self.min_width), self._knots(h, self.min_height), derivs

    def _knots(self, raw: Tensor, minimum: float) -> Tensor:
        sizes = minimum + (1 - minimum * self.bins) * torch.softmax(raw, dim=-1)
        inner = -self.bound + 2 * self.bound * torch.cumsum(sizes[..., :-1], dim=-1)
        ends = raw.new_full((*raw.shape[:-1], 1), self.bound)
        return torch.cat([-ends, inner, ends], dim=-1)

    @staticmethod
    def _in_bin(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(1 - xi, xi^2, t, den)`` at the position ``xi`` in the bin: ``t = xi (1 - xi)`` (not
        ``xi - xi^2``, which cancels near ``xi = 1``) and ``den = s + (d_k + d_{k+1} - 2 s) t``."""
        rest = torch.rsub(xi, 1)
        t = xi * rest
        return rest, xi.square(), t, torch.addcmul(s, torch.add(d0, d1).sub_(s, alpha=2), t)

    @staticmethod
    def _log_derivative(rest: Tensor, xi2: Tensor, t: Tensor, s: Tensor, d0: Tensor, d1: Tensor,
                        den: Tensor) -> Tensor:
        """log dy/dx = log(s^2 (d_{k+1} xi^2 + 2 s t + d_k (1 - xi)^2) / den^2), in one log (``rest = 1 - xi``)."""
        num = torch.addcmul(torch.addcmul(d1 * xi2, s, t, value=2), d0, rest.square())
        ratio = s / den
        return torch.log(num * ratio * ratio)

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        z, logd = self.forward_rows(x.reshape(-1), self._columns(p))
        return z.view_as(x), logd.view_as(x)

    def forward_rows(self, flat: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        xc = flat.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(rows, xc, 0)
        s = h / w
        xi = ((xc - x0) / w).clamp(0, 1)
        rest, xi2, t, den = self._in_bin(xi, s, d0, d1)
        y = torch.addcmul(y0, h, torch.addcmul(s * xi2, d0, t) / den)  # y_k + h (s xi^2 + d_k t) / den
        logd = self._log_derivative(rest, xi2, t, s, d0, d1, den)
        inside = flat.abs() <= self.bound
        return torch.where(inside, y, flat), torch.where(inside, logd, 0.0)

    def _quadratic(self, flat: Tensor, rows: Tensor):
        zc = flat.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(rows, zc, 1)
        s, dy = h / w, zc - y0
        slack = d0 + d1 - 2 * s
        return (h * (s - d0) + dy * slack, h * d0 - dy * slack, -s * dy), (x0, w, s, d0, d1)

    def quadratic(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients ``(a, b, c)`` of ``a xi^2 + b xi + c = 0`` whose root in ``[0, 1]`` inverts the
        spline at ``z`` clamped into ``[-B, B]`` (exposed for tests of the discriminant)."""
        return tuple(c.view_as(z) for c in self._quadratic(z.reshape(-1), self._columns(p))[0])

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        x, logd = self.inverse_rows(z.reshape(-1), self._columns(p))
        return x.view_as(z), logd.view_as(z)

    def inverse_rows(self, flat: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`inverse` on a flat ``z`` of N values with the parameters as ``rows`` ``(n_params, N)``."""
        (a, b, c), (x0, w, s, d0, d1) = self._quadratic(flat, rows)
        root = torch.sqrt((b.square() - 4 * a * c).clamp_min(torch.finfo(flat.dtype).tiny))
        # the root in [0, 1] is 2c / (-b - root) = (-b + root) / 2a: take the form without cancellation for
        # the sign of b (each denominator is made safe where its branch is not taken, for NaN-free grads)
        positive = b >= 0
        xi_plus = 2 * c / torch.where(positive, -b - root, -1.0)
        xi_minus = (root - b) / torch.where(positive, 1.0, 2 * a)
        xi = torch.where(positive, xi_plus, xi_minus).clamp(0, 1)
        rest, xi2, t, den = self._in_bin(xi, s, d0, d1)
        logd = -self._log_derivative(rest, xi2, t, s, d0, d1, den)
        inside = flat.abs() <= self.bound
        return torch.where(inside, torch.addcmul(x0, xi, w), flat), torch.where(inside, logd, 0.0)


@TRANSFORMS.register("ElementwiseRQSpline", test_kwargs={"bins": 4, "bound": 2.0})
class ElementwiseRQSpline(Bijection):
    """One rational-quadratic spline per feature: ``z_i = f(x_i; p_i)``, log|det dz/dx| = sum_i log f'(x_i; p_i).

    Unconditional: ``p`` is a parameter (zero: identity). With ``context=c`` it is predicted from the
    context by an MLP. Inputs outside ``[-bound, bound]`` pass through unchanged.
    """

    def __init__(self, features: int, context: int = 0, bins: int = 8, bound: float = 5.0,
                 hidden: Sequence[int] = (32,)):
        super().__init__()
        self.spline = RQSpline(bins, bound)
        self.features = features
        if context:
            self.net = MLP(context, features * self.spline.n_params, hidden)
        else:
            self.params = nn.Parameter(torch.zeros(features, self.spline.n_params))

    def _params(self, x: Tensor, context: Tensor | None) -> Tensor:
        if hasattr(self, "net"):
            return self.net(context).reshape(x.shape[0], self.features, self.spline.n_params)
        return self.params.expand(x.shape[0], -1, -1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, logd = self.spline.forward(x, self._params(x, context))
        return z, logd.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logd = self.spline.inverse(z, self._params(z, context))
        return x, logd.sum(-1)

    def extra_repr(self) -> str:
        return f"features={self.features}, spline={self.spline!r}"


@TRANSFORMS.register("RQSplineCoupling", test_kwargs={"bins": 4, "bound": 2.0, "hidden": (16,)})
class RQSplineCoupling(Coupling):
    """NSF coupling layer: rational-quadratic splines on one part, conditioned on the other.

    ``z_tr = f(x_tr; p)``, ``z_id = x_id`` with ``p = net(x_id, context)`` and ``f`` a rational-quadratic spline
    per transformed feature; log|det dz/dx| = sum log f'(x_tr; p)."""

    def __init__(self, features: int, context: int = 0, mask: str | Tensor = "half", flip: bool = False,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu", bins: int = 8, bound: float = 5.0):
        self.spline = RQSpline(bins, bound)  # read by params_per_feature inside Coupling.__init__
        super().__init__(features, context, mask, flip, hidden, activation)

    @property
    def params_per_feature(self) -> int:  # type: ignore[override]
        return self.spline.n_params

    @property
    def order(self) -> Tensor:
        """Features in an order where the Jacobian is lower triangular: the fixed part first."""
        return torch.cat([self.idx_id, self.idx_tr])

    def step(self, x_id: Tensor, x_tr: Tensor, context: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
        # the spline runs on (feature, batch)-ordered values: the network lays its parameters out as rows
        # (no transposed copy of them) and only x_tr and the result are transposed
        n, d = x_tr.shape
        rows = self.net.rows(x_id if context is None else join_context(x_id, context), d, self.spline.n_params)
        kernel = self.spline.inverse_rows if inverse else self.spline.forward_rows
        y, logd = kernel(x_tr.t().reshape(-1), rows)
        return y.view(d, n).t().contiguous(), logd.view(d, n).sum(0)

    def extra_repr(self) -> str:
        return f"spline={self.spline!r}"


@TRANSFORMS.register("RQSplineAutoregressive", test_kwargs={"bins": 4, "bound": 2.0, "hidden": (16, 16)})
class RQSplineAutoregressive(MaskedAutoregressive):
    """Autoregressive NSF layer: rational-quadratic splines conditioned by a MADE; D-pass inverse.

    ``z_i = f(x_i; theta_i(x_<i, context))`` with ``theta`` from a MADE; log|det dz/dx| = sum_i log f'(x_i; theta_i).
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        bound: float = 5.0,
        order: str | Tensor = "natural",
        residual: bool = False,
        activation: str = "relu",
        seed: int | None = None,
        identity_init: bool = True,
    ):
        super().__init__(features, context, RQSpline(bins, bound), hidden, order, residual, activation, seed,
                         identity_init)
