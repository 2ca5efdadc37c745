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
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import backend
from ..core import Bijection
from ..nets import MLP, join_context
from ..registry import TRANSFORMS
from .autoregressive import MaskedAutoregressive, Univariate
from .coupling import Coupling

__all__ = ["RQSpline", "ElementwiseRQSpline", "RQSplineCoupling", "RQSplineAutoregressive"]


def _check_bins(bins: int, bound: float, min_width: float, min_height: float) -> None:
    """The argument checks every spline kernel on ``[-bound, bound]`` with ``bins`` bins shares."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if not (0 <= min_width * bins < 1 and 0 <= min_height * bins < 1):
        raise ValueError(f"min_width and min_height times bins must lie in [0, 1), got {min_width}, {min_height}")


def _derivative_shift(min_derivative: float) -> float:
    """The shift with ``min_derivative + softplus(raw + shift) = 1`` at ``raw = 0``, ``min_derivative`` checked."""
    if not 0 < min_derivative < 1:
        raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}")
    return math.log(math.expm1(1 - min_derivative))


def _find(knots: Tensor, v: Tensor) -> Tensor:
    """Index ``(*v.shape, 1)`` of the bin of ``knots`` (``(*v.shape, K + 1)``) that holds ``v``; a value on a knot
    goes to the bin it starts, the right end to the last bin."""
    return torch.searchsorted(knots[..., 1:-1].contiguous(), v.unsqueeze(-1).contiguous(), right=True)


def _at(t: Tensor, idx: Tensor, shift: int = 0) -> Tensor:
    """``t`` at the bin index ``idx`` (plus ``shift``), the last dimension dropped."""
    return torch.gather(t, -1, idx + shift).squeeze(-1)


class RQSpline(Univariate):
    """Rational-quadratic spline kernel with ``bins`` bins on ``[-bound, bound]`` and identity tails.

    Parameters per element (``3 bins - 1``): unnormalised bin widths and heights (softmax, then at least
    ``min_width``/``min_height`` of the interval) and the interior knot derivatives
    (``min_derivative + softplus``). All-zero parameters give the identity.

    Args:
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).
        min_width: Smallest bin width, as a fraction of ``2 B``.
        min_height: Smallest bin height, as a fraction of ``2 B``.
        min_derivative: Smallest knot derivative.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
        https://arxiv.org/abs/1906.04032

    Examples:
        >>> spline = RQSpline(bins=4, bound=2.0)
        >>> x, p = torch.linspace(-3, 3, 5), torch.randn(5, spline.n_params)
        >>> z, logd = spline.forward(x, p)
        >>> torch.allclose(spline.inverse(z, p)[0], x, atol=1e-5)
        True
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3, min_height: float = 1e-3,
                 min_derivative: float = 1e-3) -> None:
        _check_bins(bins, bound, min_width, min_height)
        #: softplus(raw + shift) + min_derivative = 1 at raw = 0
        self.derivative_shift = _derivative_shift(min_derivative)
        self.bins, self.bound = bins, float(bound)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self.n_params = 3 * bins - 1

    def __repr__(self) -> str:
        return f"RQSpline(bins={self.bins}, bound={self.bound})"

    def knots(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Knot positions ``x_k``, values ``y_k`` and derivatives ``d_k``, each ``(*batch, K + 1)``."""
        k = self.bins
        if p.shape[-1] != self.n_params:
            raise ValueError(f"spline parameters have {p.shape[-1]} entries per element: expected {self.n_params}")
        w, h, d = p.split([k, k, k - 1], dim=-1)
        one = p.new_ones((*p.shape[:-1], 1))
        derivs = torch.cat([one, self.min_derivative + F.softplus(d + self.derivative_shift), one], dim=-1)
        return self._knots(w, self.min_width), self._knots(h, self.min_height), derivs

    def _knots(self, raw: Tensor, minimum: float) -> Tensor:
        sizes = minimum + (1 - minimum * self.bins) * torch.softmax(raw, dim=-1)
        inner = -self.bound + 2 * self.bound * torch.cumsum(sizes[..., :-1], dim=-1)
        ends = raw.new_full((*raw.shape[:-1], 1), self.bound)
        return torch.cat([-ends, inner, ends], dim=-1)

    def _bin(self, v: Tensor, p: Tensor, along_y: bool) -> tuple[Tensor, ...]:
        """``(x_k, w, y_k, h, d_k, d_{k+1})`` of the bin holding ``v`` (clamped into ``[-B, B]``) along the x
        knots (or the y knots); a value on a knot goes to the bin it starts."""
        xk, yk, dk = self.knots(p)
        idx = _find(yk if along_y else xk, v)
        x0, y0 = _at(xk, idx), _at(yk, idx)
        return x0, _at(xk, idx, 1) - x0, y0, _at(yk, idx, 1) - y0, _at(dk, idx), _at(dk, idx, 1)

    @staticmethod
    def _log_derivative(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        """log dy/dx = log(s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / den^2)."""
        t = xi * (1 - xi)  # not xi - xi^2, which cancels near xi = 1
        den = s + (d0 + d1 - 2 * s) * t
        return 2 * torch.log(s) + torch.log(d1 * xi**2 + 2 * s * t + d0 * (1 - xi) ** 2) - 2 * torch.log(den)

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        xc = x.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(xc, p, along_y=False)
        s = h / w
        xi = ((xc - x0) / w).clamp(0, 1)
        t = xi * (1 - xi)
        y = y0 + h * (s * xi**2 + d0 * t) / (s + (d0 + d1 - 2 * s) * t)
        inside = x.abs() <= self.bound
        return torch.where(inside, y, x), torch.where(inside, self._log_derivative(xi, s, d0, d1), 0.0)

    def quadratic(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients ``(a, b, c)`` of ``a xi^2 + b xi + c = 0`` whose root in ``[0, 1]`` inverts the
        spline at ``z`` clamped into ``[-B, B]``."""
        return self._quadratic(z.clamp(-self.bound, self.bound), p)[0]

    def _quadratic(self, zc: Tensor, p: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor],
                                                         tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
        x0, w, y0, h, d0, d1 = self._bin(zc, p, along_y=True)
        s, dy = h / w, zc - y0
        slack = d0 + d1 - 2 * s
        return (h * (s - d0) + dy * slack, h * d0 - dy * slack, -s * dy), (x0, w, s, d0, d1)

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        (a, b, c), (x0, w, s, d0, d1) = self._quadratic(z.clamp(-self.bound, self.bound), p)
        root = torch.sqrt((b**2 - 4 * a * c).clamp_min(torch.finfo(z.dtype).tiny))
        # the root in [0, 1] is 2c / (-b - root) = (-b + root) / 2a: the form without cancellation for the
        # sign of b (each denominator made safe where its branch is not taken, for NaN-free gradients)
        positive = b >= 0
        xi_plus = 2 * c / torch.where(positive, -b - root, -1.0)
        xi_minus = (root - b) / torch.where(positive, 1.0, 2 * a)
        xi = torch.where(positive, xi_plus, xi_minus).clamp(0, 1)
        inside = z.abs() <= self.bound
        return (torch.where(inside, x0 + xi * w, z),
                torch.where(inside, -self._log_derivative(xi, s, d0, d1), 0.0))


@TRANSFORMS.register("ElementwiseRQSpline", test_kwargs={"bins": 4, "bound": 2.0})
class ElementwiseRQSpline(Bijection):
    """One rational-quadratic spline per feature, learned (or predicted from a context).

    Data -> latent: ``z_i = f(x_i; p_i)``, ``log|det dz/dx| = sum_i log f'(x_i; p_i)`` with ``f`` the
    monotone rational-quadratic spline of the module doc; latent -> data inverts each spline in closed form
    (the root of a quadratic), with the negated log-det.

    Unconditional: ``p`` is a parameter (zero: identity). With ``context=c`` it is predicted from the
    context by an MLP. Inputs outside ``[-bound, bound]`` pass through unchanged.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional, the spline parameters are learned directly).
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).
        hidden: Hidden layer sizes of the MLP that predicts the spline parameters from the context.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
        https://arxiv.org/abs/1906.04032

    Examples:
        >>> layer = ElementwiseRQSpline(3, bins=4, bound=2.0)
        >>> _ = torch.nn.init.normal_(layer.params)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
        >>> x_back, inv_ladj = layer.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(ladj + inv_ladj, torch.zeros(5), atol=1e-5)
        (True, True)
    """

    def __init__(self, features: int, context: int = 0, bins: int = 8, bound: float = 5.0,
                 hidden: Sequence[int] = (32,)) -> None:
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


class SplineKernelCoupling(Coupling):
    """Coupling layer with any `Univariate` spline kernel on the transformed part, its parameters from an MLP on the
    fixed part (and the context); the base of the spline couplings (rational-quadratic, polynomial, circular).

    Data -> latent: ``z_tr = f(x_tr; p)``, ``z_id = x_id``, ``p = net(x_id, context)``,
    ``log|det dz/dx| = sum log f'(x_tr; p)``; latent -> data inverts ``f`` with the same ``p = net(z_id, context)``.
    """

    def __init__(self, kernel: Univariate, features: int, context: int = 0, mask: str | Tensor = "half",
                 flip: bool = False, hidden: Sequence[int] = (64, 64), activation: str = "relu") -> None:
        self.spline = kernel  # read by params_per_feature inside Coupling.__init__
        super().__init__(features, context, mask, flip, hidden, activation)

    @property
    def params_per_feature(self) -> int:  # type: ignore[override]
        return self.spline.n_params

    @property
    def order(self) -> Tensor:
        """Features in an order where the Jacobian is lower triangular: the fixed part first."""
        return torch.cat([self.idx_id, self.idx_tr])

    def _conditioner_input(self, x_id: Tensor) -> Tensor:
        """What the MLP reads of the fixed part (the context is appended to it): ``x_id`` itself."""
        return x_id

    def step(self, x_id: Tensor, x_tr: Tensor, context: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
        params = self.net(join_context(self._conditioner_input(x_id), context))
        params = params.view(*x_tr.shape, self.spline.n_params)
        y, logd = (self.spline.inverse if inverse else self.spline.forward)(x_tr, params)
        return y, logd.sum(-1)

    def extra_repr(self) -> str:
        return f"spline={self.spline!r}"


class _SplineCoupling(SplineKernelCoupling):
    """`SplineKernelCoupling` with the kernel ``kernel(bins, bound)``: the registered spline couplings."""

    kernel: Callable[[int, float], Univariate]

    def __init__(self, features: int, context: int = 0, mask: str | Tensor = "half", flip: bool = False,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu", bins: int = 8, bound: float = 5.0) -> None:
        super().__init__(self.kernel(bins, bound), features, context, mask, flip, hidden, activation)


class _SplineAutoregressive(MaskedAutoregressive):
    """`MaskedAutoregressive` with the kernel ``kernel(bins, bound)``: the registered autoregressive spline layers."""

    kernel: Callable[[int, float], Univariate]

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64), bins: int = 8,
                 bound: float = 5.0, order: str | Tensor = "natural", residual: bool = False,
                 activation: str = "relu", seed: int | None = None, identity_init: bool = True) -> None:
        super().__init__(features, context, self.kernel(bins, bound), hidden, order, residual, activation, seed,
                         identity_init)


@TRANSFORMS.register("RQSplineCoupling", test_kwargs={"bins": 4, "bound": 2.0, "hidden": (16,)})
class RQSplineCoupling(_SplineCoupling):
    """NSF coupling layer: rational-quadratic splines on one part, conditioned on the other.

    Data -> latent: ``z_tr = f(x_tr; p)``, ``z_id = x_id`` with ``p = net(x_id, context)`` and ``f`` a
    rational-quadratic spline per transformed feature; ``log|det dz/dx| = sum log f'(x_tr; p)``. Latent -> data
    inverts the splines in closed form, with the same ``p = net(z_id, context)``.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to the conditioner with ``x_id`` (0: unconditional).
        mask: Which features pass through unchanged: ``"half"``, ``"alternating"`` (= ``"checkerboard"``) or a
            boolean tensor of shape ``(D,)``, True where fixed.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden layer sizes of the MLP conditioner.
        activation: Activation of the MLP: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
        https://arxiv.org/abs/1906.04032

    Examples:
        >>> layer = RQSplineCoupling(4, context=2, hidden=(8,), bins=4, bound=2.0)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight)  # leave the identity it starts as
        >>> x, c = torch.randn(3, 4), torch.randn(3, 2)
        >>> z, ladj = layer(x, c)
        >>> torch.equal(z[:, :2], x[:, :2]), ladj.shape
        (True, torch.Size([3]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-5)
        True
    """

    kernel = RQSpline

    def step(self, x_id: Tensor, x_tr: Tensor, context: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
        fast = backend.run(self, "step", x_id, x_tr, context, inverse)
        return fast if fast is not None else super().step(x_id, x_tr, context, inverse)


@TRANSFORMS.register("RQSplineAutoregressive", test_kwargs={"bins": 4, "bound": 2.0, "hidden": (16, 16)})
class RQSplineAutoregressive(_SplineAutoregressive):
    """Autoregressive NSF layer: rational-quadratic splines conditioned by a MADE; D-pass inverse.

    Data -> latent (one MADE pass): ``z_i = f(x_i; theta_i(x_<i, context))`` with ``theta`` from a MADE;
    ``log|det dz/dx| = sum_i log f'(x_i; theta_i)``. Latent -> data inverts the splines feature by feature in
    D MADE passes.

    Args:
        features: Number of features ``D``.
        context: Number of context features fed to the MADE (0: unconditional).
        hidden: Hidden layer sizes of the MADE.
        bins: Number of spline bins ``K``.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the spline covers (identity outside).
        order: Autoregressive order of the MADE: ``"natural"``, ``"reversed"``, ``"random"`` or a permutation
            tensor listing the features in the order they are generated.
        residual: Make each entry of ``hidden`` a residual block of the MADE (all widths equal).
        activation: Activation of the MADE: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        seed: Seed of the ``"random"`` order.
        identity_init: Zero the MADE's output layer so the layer starts as the identity.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
        https://arxiv.org/abs/1906.04032

    Examples:
        >>> layer = RQSplineAutoregressive(3, hidden=(8, 8), bins=4, bound=2.0, identity_init=False)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    kernel = RQSpline
