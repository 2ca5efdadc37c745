"""Piecewise-polynomial monotone splines beside the rational-quadratic one: linear and quadratic (Müller et al.
2019) and cubic (Durkan et al. 2019), each on ``[-B, B]`` with identity tails, in coupling and autoregressive
layers.

Every kernel maps ``[-B, B]`` onto itself with ``K`` bins; outside it ``y = x`` and ``dy/dx = 1``. As in
`exactflow.transforms.splines`, inputs are clamped into ``[-B, B]`` for the spline maths and the tails are
selected afterwards, so inputs of any size give finite values and gradients. With ``u = (x + B) / 2B`` and
``v = (y + B) / 2B`` the unit-interval coordinates, ``dy/dx = dv/du``.

* **Linear** (Müller et al., piecewise-linear coupling): ``K`` bins of equal width ``1/K`` and learned masses
  ``Q_k`` (softmax): ``v = C_k + Q_k (K u - k)`` in bin ``k``, ``C_k = sum_{j<k} Q_j``, ``dv/du = K Q_k``. Its
  derivative jumps at the knots (the map is continuous, not differentiable there); the inverse is direct,
  ``u = (k + (v - C_k) / Q_k) / K``.
* **Quadratic** (Müller et al., piecewise-quadratic coupling): learned bin widths ``W_k`` (softmax) and ``K + 1``
  positive vertex values ``V_k`` normalised so that the piecewise-linear density through them integrates to one,
  ``sum_k W_k (V_k + V_{k+1}) / 2 = 1``. In bin ``k``, with ``a = (u - X_k) / W_k``::

      v = C_k + W_k (V_k a + (V_{k+1} - V_k) a^2 / 2),     dv/du = V_k + (V_{k+1} - V_k) a,

  continuous derivative inside ``[-B, B]``. The inverse solves ``A a^2 + b a - r = 0`` (``A = W_k (V_{k+1} - V_k) / 2``,
  ``b = W_k V_k > 0``, ``r = v - C_k >= 0``) as ``a = 2 r / (b + sqrt(b^2 + 4 A r))``, the form without
  cancellation that also holds for ``A = 0``.
* **Cubic** (Durkan et al., cubic-spline flows): a monotone cubic Hermite spline through knots ``(x_k, y_k)``
  (softmax widths and heights) with the interior knot derivatives of Steffen (1990),
  ``d_k = min(2 s_{k-1}, 2 s_k, p_k)``, ``p_k = (s_{k-1} w_k + s_k w_{k-1}) / (w_{k-1} + w_k)``, ``s_k = h_k / w_k``,
  and learned end derivatives ``d_0 in (0, 3 s_0)``, ``d_K in (0, 3 s_{K-1})``; every bin's derivatives then lie
  in ``(0, 3 s_k)^2``, inside the Fritsch-Carlson monotonicity region. In bin ``k`` with ``xi = (x - x_k) / w_k``::

      y = y_k + w_k xi (d_k + xi (3 s - 2 d_k - d_{k+1} + xi (d_k + d_{k+1} - 2 s))),
      dy/dx = d_k + 2 (3 s - 2 d_k - d_{k+1}) xi + 3 (d_k + d_{k+1} - 2 s) xi^2.

  The inverse finds the root ``xi`` in ``[0, 1]`` of the increasing cubic by bisection to a bracket of width
  ``2^-n`` (``n = m / 2 + 2`` halvings for a dtype whose epsilon is ``2^-m``: 28 in float64, 14 in float32), then
  two Newton steps kept inside the bracket: each squares the error times ``|p'' / 2 p'|``, so the root is exact to
  rounding wherever ``|p'' / p'| <~ 2^(m/2)`` and never further than ``2^-n`` from it. A last Newton step with
  autograd on leaves the value to rounding and gives exact first-order gradients (implicit function
  theorem). The layers built on it report ``exact_inverse = False``.

All-zero parameters give the identity for every kernel.

References:
    T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
    https://arxiv.org/abs/1808.03856

    C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Cubic-Spline Flows (2019). https://arxiv.org/abs/1906.02145

    M. Steffen. A simple method for monotonic interpolation in one dimension. Astronomy and Astrophysics 239
    (1990), 443-450.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import TRANSFORMS
from .autoregressive import Univariate
from .splines import (
    SplineKernelCoupling,
    _at,
    _check_bins,
    _derivative_shift,
    _find,
    _SplineAutoregressive,
    _SplineCoupling,
)

__all__ = ["LinearSpline", "QuadraticSpline", "CubicSpline", "SplineKernelCoupling", "LinearSplineCoupling",
           "QuadraticSplineCoupling", "CubicSplineCoupling", "LinearSplineAutoregressive",
           "QuadraticSplineAutoregressive", "CubicSplineAutoregressive"]


def _cumulative(sizes: Tensor) -> Tensor:
    """Knots ``0, s_0, s_0 + s_1, ..., 1`` of sizes summing to one (the last knot set to exactly 1)."""
    zero = sizes.new_zeros((*sizes.shape[:-1], 1))
    return torch.cat([zero, torch.cumsum(sizes[..., :-1], dim=-1), zero + 1], dim=-1)


class _BinnedSpline(Univariate):
    """Shared checks and the unit-interval coordinates of the kernels below."""

    def __init__(self, bins: int, bound: float, min_width: float, min_height: float) -> None:
        _check_bins(bins, bound, min_width, min_height)
        self.bins, self.bound = bins, float(bound)
        self.min_width, self.min_height = min_width, min_height

    def _check(self, p: Tensor) -> None:
        if p.shape[-1] != self.n_params:
            raise ValueError(f"{type(self).__name__} parameters have {p.shape[-1]} entries per element: expected "
                             f"{self.n_params}")

    def _sizes(self, raw: Tensor, minimum: float) -> Tensor:
        """Bin sizes on the unit interval: ``minimum + (1 - K minimum) softmax(raw)``."""
        return minimum + (1 - minimum * self.bins) * torch.softmax(raw, dim=-1)

    def _unit(self, x: Tensor) -> Tensor:
        """``(x + B) / 2B`` for ``x`` clamped into ``[-B, B]``."""
        return (x.clamp(-self.bound, self.bound) + self.bound) / (2 * self.bound)

    def _tails(self, x: Tensor, u: Tensor, logd: Tensor) -> tuple[Tensor, Tensor]:
        """``-B + 2B u`` inside ``[-B, B]`` and the identity outside, with the log-derivative 0 there."""
        inside = x.abs() <= self.bound
        return torch.where(inside, u * (2 * self.bound) - self.bound, x), torch.where(inside, logd, 0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.bins}, bound={self.bound})"


class LinearSpline(_BinnedSpline):
    """Piecewise-linear monotone spline (Müller et al. 2019) with ``bins`` equal-width bins on ``[-bound, bound]``
    and identity tails; see the module doc for the maths.

    Parameters per element: ``K`` unnormalised bin masses (softmax, then at least ``min_height`` each). The
    derivative ``K Q_k`` is constant in each bin and jumps at the knots.

    Args:
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).
        min_height: Smallest bin mass, as a fraction of ``2 B``.

    References:
        T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
        https://arxiv.org/abs/1808.03856

    Examples:
        >>> spline = LinearSpline(bins=4, bound=2.0)
        >>> x, p = torch.linspace(-3, 3, 7), torch.randn(7, spline.n_params)
        >>> z, logd = spline.forward(x, p)
        >>> torch.allclose(spline.inverse(z, p)[0], x, atol=1e-5)
        True
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_height: float = 1e-3) -> None:
        super().__init__(bins, bound, 0.0, min_height)
        self.n_params = bins

    def _masses(self, p: Tensor) -> tuple[Tensor, Tensor]:
        self._check(p)
        q = self._sizes(p, self.min_height)
        return q, _cumulative(q)

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        q, c = self._masses(p)
        scaled = self._unit(x) * self.bins
        idx = scaled.detach().floor().clamp(0, self.bins - 1).long().unsqueeze(-1)
        qk = _at(q, idx)
        v = _at(c, idx) + qk * (scaled - idx.squeeze(-1))
        return self._tails(x, v, torch.log(qk * self.bins))

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        q, c = self._masses(p)
        v = self._unit(z)
        idx = _find(c, v)
        qk = _at(q, idx)
        alpha = ((v - _at(c, idx)) / qk).clamp(0, 1)
        return self._tails(z, (idx.squeeze(-1) + alpha) / self.bins, -torch.log(qk * self.bins))


class QuadraticSpline(_BinnedSpline):
    """Piecewise-quadratic monotone spline (Müller et al. 2019) with ``bins`` bins on ``[-bound, bound]`` and
    identity tails; see the module doc for the maths and the stable inverse.

    Parameters per element (``2 K + 1``): unnormalised bin widths (softmax, then at least ``min_width``) and the
    ``K + 1`` vertex values, made positive by ``min_derivative + softplus`` (where the paper takes ``exp``,
    which overflows in float32 for large network outputs) and then normalised.

    Args:
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).
        min_width: Smallest bin width, as a fraction of ``2 B``.
        min_derivative: Smallest vertex value before the normalisation.

    References:
        T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
        https://arxiv.org/abs/1808.03856

    Examples:
        >>> spline = QuadraticSpline(bins=4, bound=2.0)
        >>> x, p = torch.linspace(-3, 3, 7), torch.randn(7, spline.n_params)
        >>> z, logd = spline.forward(x, p)
        >>> torch.allclose(spline.inverse(z, p)[0], x, atol=1e-5)
        True
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3,
                 min_derivative: float = 1e-3) -> None:
        super().__init__(bins, bound, min_width, 0.0)
        #: min_derivative + softplus(raw + shift) = 1 at raw = 0
        self.derivative_shift = _derivative_shift(min_derivative)
        self.min_derivative = min_derivative
        self.n_params = 2 * bins + 1

    def _bin(self, v: Tensor, p: Tensor, along_y: bool) -> tuple[Tensor, ...]:
        """``(X_k, W_k, C_k, V_k, V_{k+1})`` of the bin holding ``v`` (unit coordinates) along ``u`` (or ``v``)."""
        self._check(p)
        raw_w, raw_v = p.split([self.bins, self.bins + 1], dim=-1)
        w = self._sizes(raw_w, self.min_width)
        heights = self.min_derivative + F.softplus(raw_v + self.derivative_shift)
        masses = w * (heights[..., :-1] + heights[..., 1:]) / 2
        heights = heights / masses.sum(-1, keepdim=True)
        xk, cdf = _cumulative(w), _cumulative(masses / masses.sum(-1, keepdim=True))
        idx = _find(cdf if along_y else xk, v)
        return _at(xk, idx), _at(w, idx), _at(cdf, idx), _at(heights, idx), _at(heights, idx, 1)

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        u = self._unit(x)
        x0, w, c0, v0, v1 = self._bin(u, p, along_y=False)
        a = ((u - x0) / w).clamp(0, 1)
        v = c0 + w * a * (v0 + (v1 - v0) * a / 2)
        return self._tails(x, v, torch.log(v0 + (v1 - v0) * a))

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        v = self._unit(z)
        x0, w, c0, v0, v1 = self._bin(v, p, along_y=True)
        r = (v - c0).clamp_min(0)
        b = w * v0
        root = torch.sqrt((b**2 + 2 * w * (v1 - v0) * r).clamp_min(0))  # b^2 + 4 A r, A = w (v1 - v0) / 2
        a = (2 * r / (b + root)).clamp(0, 1)
        return self._tails(z, x0 + a * w, -torch.log(v0 + (v1 - v0) * a))


class CubicSpline(_BinnedSpline):
    """Monotone cubic spline (Durkan et al. 2019) with ``bins`` bins on ``[-bound, bound]`` and identity tails:
    Steffen's interior derivatives and learned end derivatives; inverse by bisection and Newton steps (see
    the module doc).

    Parameters per element (``2 K + 2``): unnormalised bin widths and heights (softmax, then at least
    ``min_width``/``min_height``) and the two end derivatives, ``d = 3 s sigmoid(raw + logit(1/3))`` (1 at
    ``raw = 0`` for equal bins).

    Args:
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).
        min_width: Smallest bin width, as a fraction of ``2 B``.
        min_height: Smallest bin height, as a fraction of ``2 B``.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Cubic-Spline Flows (2019).
        https://arxiv.org/abs/1906.02145

    Examples:
        >>> spline = CubicSpline(bins=4, bound=2.0)
        >>> x, p = torch.linspace(-3, 3, 7), torch.randn(7, spline.n_params)
        >>> z, logd = spline.forward(x, p)
        >>> torch.allclose(spline.inverse(z, p)[0], x, atol=1e-5)
        True
    """

    end_shift = math.log(0.5)  # logit(1/3): 3 sigmoid(end_shift) = 1

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3, min_height: float = 1e-3) -> None:
        super().__init__(bins, bound, min_width, min_height)
        self.n_params = 2 * bins + 2

    def _bin(self, v: Tensor, p: Tensor, along_y: bool) -> tuple[Tensor, ...]:
        """``(x_k, w, y_k, h, d_k, d_{k+1})`` on the unit interval of the bin holding ``v`` along ``u`` (or ``v``)."""
        self._check(p)
        raw_w, raw_h, raw_d = p.split([self.bins, self.bins, 2], dim=-1)
        w, h = self._sizes(raw_w, self.min_width), self._sizes(raw_h, self.min_height)
        s = h / w
        ends = 3 * torch.sigmoid(raw_d + self.end_shift) * torch.stack([s[..., 0], s[..., -1]], dim=-1)
        mean = (s[..., :-1] * w[..., 1:] + s[..., 1:] * w[..., :-1]) / (w[..., :-1] + w[..., 1:])
        inner = torch.minimum(torch.minimum(2 * s[..., :-1], 2 * s[..., 1:]), mean)
        d = torch.cat([ends[..., :1], inner, ends[..., 1:]], dim=-1)
        xk, yk = _cumulative(w), _cumulative(h)
        idx = _find(yk if along_y else xk, v)
        return _at(xk, idx), _at(w, idx), _at(yk, idx), _at(h, idx), _at(d, idx), _at(d, idx, 1)

    @staticmethod
    def _coefficients(w: Tensor, h: Tensor, d0: Tensor, d1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, b, c)`` of ``y - y_k = w xi (c + xi (b + xi a))`` in bin coordinates."""
        s = h / w
        return d0 + d1 - 2 * s, 3 * s - 2 * d0 - d1, d0

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        u = self._unit(x)
        x0, w, y0, h, d0, d1 = self._bin(u, p, along_y=False)
        a, b, c = self._coefficients(w, h, d0, d1)
        xi = ((u - x0) / w).clamp(0, 1)
        v = y0 + w * xi * (c + xi * (b + xi * a))
        return self._tails(x, v, torch.log(c + xi * (2 * b + 3 * xi * a)))

    @staticmethod
    @torch.no_grad()
    def _root(a: Tensor, b: Tensor, c: Tensor, target: Tensor) -> Tensor:
        """The root in ``[0, 1]`` of ``xi (c + xi (b + xi a)) = target`` (increasing there): bisection to a bracket
        of width ``2^-n``, ``n = m / 2 + 2`` for a dtype of epsilon ``2^-m``, then two Newton steps kept inside it
        (see the module doc)."""
        def cubic(t: Tensor) -> Tensor:
            return t * (c + t * (b + t * a))

        bits = -math.log2(torch.finfo(target.dtype).eps)
        lo, width = torch.zeros_like(target), 1.0
        for _ in range(math.ceil(bits / 2) + 2):  # every bracket starts as [0, 1]: its width is a number
            width /= 2
            mid = lo + width
            lo = torch.where(cubic(mid) < target, mid, lo)
        hi, xi = lo + width, lo + width / 2
        for _ in range(2):
            xi = (xi - (cubic(xi) - target) / (c + xi * (2 * b + 3 * xi * a))).clamp(lo, hi)
        return xi

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        v = self._unit(z)
        x0, w, y0, h, d0, d1 = self._bin(v, p, along_y=True)
        a, b, c = self._coefficients(w, h, d0, d1)
        target = (v - y0) / w  # the cubic's value at the root, in bin coordinates
        root = self._root(a.detach(), b.detach(), c.detach(), target.detach())
        # one Newton step from the root: its value stays the root (to rounding), its gradient is the implicit one
        xi = root - (root * (c + root * (b + root * a)) - target) / (c + root * (2 * b + 3 * root * a))
        slope = c + xi * (2 * b + 3 * xi * a)
        return self._tails(z, x0 + xi * w, -torch.log(slope))


_SMALL_COUPLING = {"bins": 4, "bound": 2.0, "hidden": (16,)}
_SMALL_MADE = {"bins": 4, "bound": 2.0, "hidden": (16, 16)}


@TRANSFORMS.register("LinearSplineCoupling", test_kwargs=_SMALL_COUPLING)
class LinearSplineCoupling(_SplineCoupling):
    """Piecewise-linear coupling layer (Müller et al. 2019): a `LinearSpline` per transformed feature.

    Data -> latent ``z_tr = f(x_tr; net(x_id, context))``, ``log|det dz/dx| = sum log f'(x_tr)``; the inverse
    is direct. The derivative of ``f`` jumps at its knots (random inputs almost surely avoid them).

    Takes the arguments of `RQSplineCoupling`, with a `LinearSpline` in place of the rational-quadratic spline.

    References:
        T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
        https://arxiv.org/abs/1808.03856

    Examples:
        >>> layer = LinearSplineCoupling(4, hidden=(8,), bins=4, bound=2.0)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight)  # leave the identity it starts as
        >>> x = torch.randn(3, 4)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = LinearSpline


@TRANSFORMS.register("QuadraticSplineCoupling", test_kwargs=_SMALL_COUPLING)
class QuadraticSplineCoupling(_SplineCoupling):
    """Piecewise-quadratic coupling layer (Müller et al. 2019): a `QuadraticSpline` per transformed feature.

    Data -> latent ``z_tr = f(x_tr; net(x_id, context))``, ``log|det dz/dx| = sum log f'(x_tr)``; the inverse
    solves a quadratic in closed form.

    Takes the arguments of `RQSplineCoupling`, with a `QuadraticSpline` in place of the rational-quadratic spline.

    References:
        T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
        https://arxiv.org/abs/1808.03856

    Examples:
        >>> layer = QuadraticSplineCoupling(4, hidden=(8,), bins=4, bound=2.0)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight)  # leave the identity it starts as
        >>> x = torch.randn(3, 4)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = QuadraticSpline


@TRANSFORMS.register("CubicSplineCoupling", test_kwargs=_SMALL_COUPLING)
class CubicSplineCoupling(_SplineCoupling):
    """Cubic-spline coupling layer (Durkan et al. 2019): a monotone `CubicSpline` per transformed feature.

    Data -> latent ``z_tr = f(x_tr; net(x_id, context))``, ``log|det dz/dx| = sum log f'(x_tr)``; the inverse
    finds the cubic's root by bisection and Newton steps (accurate to rounding; ``exact_inverse = False``).

    Takes the arguments of `RQSplineCoupling`, with a `CubicSpline` in place of the rational-quadratic spline.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Cubic-Spline Flows (2019).
        https://arxiv.org/abs/1906.02145

    Examples:
        >>> layer = CubicSplineCoupling(4, hidden=(8,), bins=4, bound=2.0)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight)  # leave the identity it starts as
        >>> x = torch.randn(3, 4)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = CubicSpline
    exact_inverse = False


@TRANSFORMS.register("LinearSplineAutoregressive", test_kwargs=_SMALL_MADE)
class LinearSplineAutoregressive(_SplineAutoregressive):
    """Autoregressive piecewise-linear layer: ``z_i = f(x_i; theta_i(x_<i, context))`` with a `LinearSpline` and
    a MADE; ``log|det dz/dx| = sum_i log f'(x_i)``. One MADE pass forward, D passes for the inverse.

    Takes the arguments of `RQSplineAutoregressive`, with a `LinearSpline` in place of the rational-quadratic spline.

    References:
        T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
        https://arxiv.org/abs/1808.03856

    Examples:
        >>> layer = LinearSplineAutoregressive(3, hidden=(8, 8), bins=4, bound=2.0, identity_init=False)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = LinearSpline


@TRANSFORMS.register("QuadraticSplineAutoregressive", test_kwargs=_SMALL_MADE)
class QuadraticSplineAutoregressive(_SplineAutoregressive):
    """Autoregressive piecewise-quadratic layer: ``z_i = f(x_i; theta_i(x_<i, context))`` with a `QuadraticSpline`
    and a MADE; ``log|det dz/dx| = sum_i log f'(x_i)``. One MADE pass forward, D passes for the inverse.

    Takes the arguments of `RQSplineAutoregressive`, with a `QuadraticSpline` in place of the rational-quadratic spline.

    References:
        T. Müller, B. McWilliams, F. Rousselle, M. Gross, J. Novák. Neural Importance Sampling (2019).
        https://arxiv.org/abs/1808.03856

    Examples:
        >>> layer = QuadraticSplineAutoregressive(3, hidden=(8, 8), bins=4, bound=2.0, identity_init=False)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = QuadraticSpline


@TRANSFORMS.register("CubicSplineAutoregressive", test_kwargs=_SMALL_MADE)
class CubicSplineAutoregressive(_SplineAutoregressive):
    """Autoregressive cubic-spline layer: ``z_i = f(x_i; theta_i(x_<i, context))`` with a monotone `CubicSpline`
    and a MADE; ``log|det dz/dx| = sum_i log f'(x_i)``. One MADE pass forward; the inverse takes D passes, each
    inverting the cubics by bisection and Newton steps (``exact_inverse = False``).

    Takes the arguments of `RQSplineAutoregressive`, with a `CubicSpline` in place of the rational-quadratic spline.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Cubic-Spline Flows (2019).
        https://arxiv.org/abs/1906.02145

    Examples:
        >>> layer = CubicSplineAutoregressive(3, hidden=(8, 8), bins=4, bound=2.0, identity_init=False)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = CubicSpline
    exact_inverse = False
