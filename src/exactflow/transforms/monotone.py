"""Monotone neural transformers in masked autoregressive layers: NAF's deep sigmoidal flow, the unconstrained
monotonic neural network (UNAF) and the sum-of-squares polynomial flow (SOS).

Each layer is a `MaskedAutoregressive` with a strictly increasing, onto-R univariate kernel ``f``: data ->
latent is ``z_i = f(x_i; theta_i)`` with ``theta = MADE(x, context)`` (``theta_i`` depends on ``x_<i`` and the
context), so dz/dx is triangular in the MADE's order and ``log|det dz/dx| = sum_i log f'(x_i; theta_i)``, with
``log f'`` in closed form for all three kernels.

None of the kernels has a closed-form inverse. `MonotoneUnivariate.inverse` solves ``f(x) = z`` by bisection
on a bracket ``[lo, hi]`` that each kernel derives from a lower bound on its slope (see each kernel), so the
root is always inside it: after ``iters`` halvings ``|x - x*| <= (hi - lo) 2^-iters`` (with the default 60,
about 1e-18 of the bracket's width, i.e. the floating-point resolution of x for any bracket narrower than
about 1e2 |x| in float64). Gradients are those of the implicit function theorem: the bisection runs without
autograd and one Newton step from the root, ``x = x* + (z - f(x*)) / f'(x*)`` with ``f'`` held constant,
carries ``dx/dz = 1/f'`` and ``dx/dtheta = -(df/dtheta)/f'`` (its value is kept at the root). The layer's
inverse takes D MADE passes as for MAF, pass ``t`` solving the ``t``-th feature of the autoregressive order.
`exactflow.backend` has no route for these layers (``backend.run`` gives None for them; a plain ReLU MADE
inside still takes the MADE's own fast path, the one every MADE takes).

References:
    C.-W. Huang, D. Krueger, A. Lacoste, A. Courville. Neural Autoregressive Flows (ICML 2018).
    https://arxiv.org/abs/1804.00779

    A. Wehenkel, G. Louppe. Unconstrained Monotonic Neural Networks (NeurIPS 2019).
    https://arxiv.org/abs/1908.05164

    P. Jaini, K. A. Selby, Y. Yu. Sum-of-Squares Polynomial Flow (ICML 2019). https://arxiv.org/abs/1905.02325
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import TRANSFORMS
from ..utils import bisect
from .autoregressive import MaskedAutoregressive, Univariate

__all__ = ["MonotoneUnivariate", "DSF", "UMNN", "SOSPolynomial", "MonotoneAutoregressive", "NAFAutoregressive",
           "UNAFAutoregressive", "SOSAutoregressive"]

#: raw + this through softplus gives 1 at raw = 0 (softplus^-1(1) = log(e - 1))
_SOFTPLUS_ONE = math.log(math.expm1(1.0))


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_iters(iters: int) -> None:
    _check_positive_int("iters (bisection steps of the inverse)", iters)


class MonotoneUnivariate(Univariate):
    """A strictly increasing map of R onto R without a closed-form inverse, inverted by bisection.

    A kernel turns the conditioner's parameters ``p`` (shape ``(*x.shape, n_params)``) into coefficients
    (`coefficients`, computed once per call), evaluates ``(f(x), log f'(x))`` from them (`evaluate`) and gives
    a bracket ``lo <= f^-1(z) <= hi`` (`bracket`). ``inverse`` bisects ``iters`` times inside the bracket:
    ``|x - f^-1(z)| <= (hi - lo) 2^-iters``, then attaches the implicit-function gradients by one Newton step
    whose value is kept at the root.
    """

    iters: int = 60

    def coefficients(self, p: Tensor) -> tuple[Tensor, ...]:
        """The kernel's coefficients from the raw parameters (differentiable)."""
        raise NotImplementedError

    def evaluate(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """``(f(x), log f'(x))`` from the coefficients, both shaped like ``x``."""
        raise NotImplementedError

    def value(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> Tensor:
        """``f(x)`` alone (what the bisection evaluates); kernels may skip the log-slope."""
        return self.evaluate(x, coeffs)[0]

    def bracket(self, z: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` with ``f(lo) <= z <= f(hi)``, guaranteed by the kernel's construction."""
        raise NotImplementedError

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return self.evaluate(x, self.coefficients(p))

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        coeffs = self.coefficients(p)
        with torch.no_grad():
            frozen = tuple(c.detach() for c in coeffs)
            target = z.detach()
            lo, hi = self.bracket(target, frozen)
            root = bisect(lambda u: self.value(u, frozen), target, lo, hi, self.iters)
        y, logd = self.evaluate(root, coeffs)
        step = (z - y) / logd.detach().exp()  # one Newton step: the implicit-function gradients
        x = root + (step - step.detach())  # value: the bisection root
        return x, -self.evaluate(x, coeffs)[1]


class DSF(MonotoneUnivariate):
    """Deep sigmoidal flow transformer of NAF (Huang et al. 2018), one layer of ``K`` sigmoids.

    Data -> latent::

        z = logit( sum_j w_j sigmoid(a_j x + b_j) ),   a_j = softplus(raw_a_j + log(e - 1)) > 0,
        w = softmax(raw_w),   b_j = raw_b_j,

    strictly increasing and onto R (the sum runs over (0, 1)). With ``u_j = a_j x + b_j`` and
    ``S = sum_j w_j sigmoid(u_j)``, everything is evaluated in log space, so |x| in the thousands stays finite::

        log S     = logsumexp_j(log w_j + log sigmoid(u_j)),
        log(1-S)  = logsumexp_j(log w_j + log sigmoid(-u_j)),   z = log S - log(1 - S),
        log dz/dx = logsumexp_j(log w_j + log a_j + log sigmoid(u_j) + log sigmoid(-u_j)) - log S - log(1-S),

    (the last two terms are log of logit's derivative, ``1 / (S (1 - S))``). All-zero parameters give the
    identity (``a = 1``, ``b = 0``: ``logit(sigmoid(x)) = x``).

    Inverse bracket: at ``x = min_j (z - b_j) / a_j`` every ``u_j <= z``, so ``S <= sigmoid(z)`` and ``f(x) <= z``;
    likewise ``f(max_j (z - b_j) / a_j) >= z``.

    Args:
        components: Number of sigmoids ``K``.
        iters: Bisection steps of the inverse.

    References:
        C.-W. Huang, D. Krueger, A. Lacoste, A. Courville. Neural Autoregressive Flows (ICML 2018).
        https://arxiv.org/abs/1804.00779

    Examples:
        >>> dsf = DSF(components=4)
        >>> x, p = torch.linspace(-3, 3, 5, dtype=torch.float64), torch.randn(5, dsf.n_params, dtype=torch.float64)
        >>> z, logd = dsf.forward(x, p)
        >>> torch.allclose(dsf.inverse(z, p)[0], x, atol=1e-12)
        True
        >>> dsf.forward(torch.tensor([1e4]), torch.zeros(1, dsf.n_params))  # the identity, finite far out
        (tensor([10000.]), tensor([0.]))
    """

    def __init__(self, components: int = 16, iters: int = 60) -> None:
        _check_positive_int("components", components)
        _check_iters(iters)
        self.components, self.iters = components, iters
        self.n_params = 3 * components

    def coefficients(self, p: Tensor) -> tuple[Tensor, ...]:
        raw_a, b, raw_w = p.split(self.components, -1)
        log_a = torch.log(F.softplus(raw_a + _SOFTPLUS_ONE))
        return log_a, b, torch.log_softmax(raw_w, -1)

    def evaluate(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        log_a, b, log_w = coeffs
        u = log_a.exp() * x[..., None] + b
        up, down = F.logsigmoid(u), F.logsigmoid(-u)
        log_s = torch.logsumexp(log_w + up, -1)
        log_1ms = torch.logsumexp(log_w + down, -1)
        log_slope = torch.logsumexp(log_w + log_a + up + down, -1) - log_s - log_1ms
        return log_s - log_1ms, log_slope

    def value(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> Tensor:
        log_a, b, log_w = coeffs
        u = log_a.exp() * x[..., None] + b
        return torch.logsumexp(log_w + F.logsigmoid(u), -1) - torch.logsumexp(log_w + F.logsigmoid(-u), -1)

    def bracket(self, z: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        log_a, b, _ = coeffs
        ends = (z[..., None] - b) / log_a.exp()
        return ends.amin(-1), ends.amax(-1)

    def __repr__(self) -> str:
        return f"DSF(components={self.components})"


class UMNN(MonotoneUnivariate, nn.Module):
    """Integral of a positive network (Wehenkel & Louppe 2019), as the exact integral of its piecewise-linear
    interpolant on a fixed grid.

    Data -> latent::

        z = beta + int_0^x g(t) dt,   log dz/dx = log g(x),

    where ``f(t; h) = ELU(net(t, h)) + 1 > 0`` is an MLP of ``t`` and the conditioner's embedding ``h`` (the first
    ``embed`` parameters; ``beta`` is the last), and ``g`` interpolates ``f`` linearly between the ``nodes``
    equispaced points ``t_k`` of ``[-B, B]`` and is held at ``f(-B)``, ``f(B)`` outside (linear tails, so the
    map is onto R). ``int g`` is the composite trapezoidal rule on the grid, with the partial panel integrated
    exactly: in panel ``[t_k, t_k + dt]``, ``s = x - t_k``::

        int_{-B}^x g = C_k + s f_k + s^2 (f_{k+1} - f_k) / (2 dt),   C_k = sum_{j<k} dt (f_j + f_{j+1}) / 2.

    Why not the paper's Clenshaw-Curtis rule on ``[0, x]``: its nodes move with ``x``, so that map's derivative
    is only approximately ``f(x)``, and it is not guaranteed to be increasing. Here the map is defined as the
    quadrature, and that quadrature is itself an exact integral of ``g > 0``: the returned log-det is the true
    derivative of the returned map (the autograd-Jacobian contract holds to rounding), the map is a bijection
    of R, and it approximates ``int f`` to ``O(dt^2)`` on ``[-B, B]``.

    Inverse bracket: ``g >= m = min_k f_k > 0``, so ``|z - beta| >= m |x|`` with the sign of ``x``, and the root
    lies between 0 and ``(z - beta) / m``.

    Args:
        embed: Size of the embedding ``h`` each feature gets from the conditioner.
        hidden: Hidden layer sizes of the integrand's MLP (ELU activations).
        nodes: Number of grid points on ``[-B, B]`` (at least 2).
        bound: Half-width ``B`` of the grid.
        iters: Bisection steps of the inverse.
        zero_last: Zero the integrand's output layer, so ``f = 1`` and the kernel starts as ``z = x + beta``.

    References:
        A. Wehenkel, G. Louppe. Unconstrained Monotonic Neural Networks (NeurIPS 2019).
        https://arxiv.org/abs/1908.05164

    Examples:
        >>> umnn = UMNN(embed=2, hidden=(8,), nodes=17, bound=3.0, zero_last=False)
        >>> x, p = torch.linspace(-4, 4, 5), torch.randn(5, umnn.n_params)
        >>> z, logd = umnn.forward(x, p)
        >>> torch.allclose(umnn.inverse(z, p)[0], x, atol=1e-5)
        True
    """

    def __init__(self, embed: int = 8, hidden: Sequence[int] = (32, 32), nodes: int = 33, bound: float = 5.0,
                 iters: int = 60, zero_last: bool = False) -> None:
        super().__init__()
        _check_positive_int("embed", embed)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden \
                or not all(isinstance(w, int) and w >= 1 for w in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive layer widths, got {hidden!r}")
        if not isinstance(nodes, int) or nodes < 2:
            raise ValueError(f"nodes must be an integer >= 2, got {nodes!r}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound!r}")
        _check_iters(iters)
        self.embed, self.nodes, self.bound, self.iters = embed, nodes, float(bound), iters
        self.n_params = embed + 1
        widths = [1 + embed, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.out = nn.Linear(widths[-1], 1)
        if zero_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def integrand(self, t: Tensor, h: Tensor) -> Tensor:
        """``f(t_k; h) > 0`` for every grid point ``t`` (shape ``(G,)``) and embedding ``h`` (``(..., embed)``):
        shape ``(..., G)``. The first layer's ``t`` and ``h`` columns are applied separately (``h`` once)."""
        first, *rest = self.layers
        w = first.weight
        a = F.linear(h, w[:, 1:], first.bias)[..., None, :] + t[:, None] * w[:, 0]
        for layer in rest:
            a = layer(F.elu(a))
        return F.elu(self.out(F.elu(a)).squeeze(-1)) + 1

    def coefficients(self, p: Tensor) -> tuple[Tensor, ...]:
        h, beta = p[..., :-1], p[..., -1]
        grid = torch.linspace(-self.bound, self.bound, self.nodes, dtype=p.dtype, device=p.device)
        f = self.integrand(grid, h)
        dt = 2 * self.bound / (self.nodes - 1)
        area = torch.cumsum(0.5 * dt * (f[..., 1:] + f[..., :-1]), -1)
        cum = torch.cat([torch.zeros_like(area[..., :1]), area], -1)  # C_k = int_{-B}^{t_k} g
        return f, cum, beta, self._from_minus_b(torch.zeros_like(beta), f, cum, slope=False)[0]

    def _from_minus_b(self, x: Tensor, f: Tensor, cum: Tensor, slope: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(int_{-B}^x g, g(x))`` (``g`` only if ``slope``): the panel maths on ``x`` clamped into the grid (where
        it gives ``g = f_0`` below and ``f_{G-1}`` above), plus the linear tails."""
        dt = 2 * self.bound / (self.nodes - 1)
        xc = x.clamp(-self.bound, self.bound)
        k = torch.floor((xc + self.bound) / dt).long().clamp(0, self.nodes - 2)[..., None]
        f0, f1, c0 = f.gather(-1, k)[..., 0], f.gather(-1, k + 1)[..., 0], cum.gather(-1, k)[..., 0]
        s = xc - (k[..., 0].to(x.dtype) * dt - self.bound)
        rise = (f1 - f0) / dt
        out = x - xc  # beyond the grid: below (< 0) at slope f_0, above (> 0) at slope f_{G-1}
        area = c0 + s * (f0 + 0.5 * rise * s) + out.clamp(max=0) * f[..., 0] + out.clamp(min=0) * f[..., -1]
        return area, (f0 + rise * s if slope else None)

    def evaluate(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        f, cum, beta, at_zero = coeffs
        area, g = self._from_minus_b(x, f, cum)
        return beta + area - at_zero, torch.log(g)

    def value(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> Tensor:
        f, cum, beta, at_zero = coeffs
        return beta + self._from_minus_b(x, f, cum, slope=False)[0] - at_zero

    def bracket(self, z: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        f, _, beta, _ = coeffs
        end = (z - beta) / f.amin(-1)
        return torch.minimum(end, torch.zeros_like(end)), torch.maximum(end, torch.zeros_like(end))

    def extra_repr(self) -> str:
        return f"embed={self.embed}, nodes={self.nodes}, bound={self.bound}"


class SOSPolynomial(MonotoneUnivariate):
    """Sum-of-squares polynomial transformer (Jaini et al. 2019).

    Data -> latent::

        z = c + int_0^x q(t) dt,   q(t) = eps + sum_{k<K} (sum_{l<=r} a_kl t^l)^2,   log dz/dx = log q(x),

    with ``K = squares`` polynomials of degree ``r = degree``, ``a_kl = raw_kl + [l = 0] sqrt((1 - eps) / K)``
    (so all-zero parameters give ``q = 1``, the identity) and ``c`` the last parameter. The integral is in
    closed form: with ``q(t) = sum_n q_n t^n``, ``q_n = eps [n = 0] + sum_k sum_{l+m=n} a_kl a_km``,
    ``z = c + sum_n q_n x^(n+1) / (n+1)``, an odd-degree polynomial evaluated by Horner's rule.

    ``eps > 0`` is this library's addition to the paper's sum of squares: it keeps the slope away from zero, so
    the log-det is finite everywhere and the inverse has a bracket: ``|z - c| >= eps |x|`` with the sign of
    ``x``, so the root lies between 0 and ``(z - c) / eps``.

    Args:
        squares: Number of squared polynomials ``K``.
        degree: Degree ``r`` of each polynomial (the map has degree ``2 r + 1``).
        eps: Lower bound of the slope, in (0, 1).
        iters: Bisection steps of the inverse.

    References:
        P. Jaini, K. A. Selby, Y. Yu. Sum-of-Squares Polynomial Flow (ICML 2019).
        https://arxiv.org/abs/1905.02325

    Examples:
        >>> sos = SOSPolynomial(squares=2, degree=2)
        >>> x, p = torch.linspace(-2, 2, 5, dtype=torch.float64), torch.randn(5, sos.n_params, dtype=torch.float64)
        >>> z, logd = sos.forward(x, p)
        >>> torch.allclose(sos.inverse(z, p)[0], x, atol=1e-12)
        True
    """

    def __init__(self, squares: int = 3, degree: int = 2, eps: float = 1e-3, iters: int = 60) -> None:
        _check_positive_int("squares", squares)
        if not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
        if not 0 < eps < 1:
            raise ValueError(f"eps (the smallest slope) must lie in (0, 1), got {eps!r}")
        _check_iters(iters)
        self.squares, self.degree, self.eps, self.iters = squares, degree, float(eps), iters
        self.n_params = squares * (degree + 1) + 1
        self.offset = math.sqrt((1 - eps) / squares)

    def coefficients(self, p: Tensor) -> tuple[Tensor, ...]:
        r1 = self.degree + 1
        a = p[..., :-1].unflatten(-1, (self.squares, r1))
        a = torch.cat([a[..., :1] + self.offset, a[..., 1:]], -1)
        outer = torch.einsum("...kl,...km->...lm", a, a)  # sum over the squares of a_kl a_km
        n = torch.arange(r1, device=p.device)
        anti = (n[:, None] + n[None, :] == torch.arange(2 * r1 - 1, device=p.device)[:, None, None]).to(p.dtype)
        q = torch.einsum("...lm,nlm->...n", outer, anti)  # q_n = sum_{l+m=n}
        q = torch.cat([q[..., :1] + self.eps, q[..., 1:]], -1)
        return q, p[..., -1]

    def evaluate(self, x: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        q, c = coeffs
        top = q.shape[-1] - 1
        integral = q[..., top] / (top + 1)
        slope = q[..., top]
        for n in range(top - 1, -1, -1):  # Horner: int = x (q_0 + x (q_1/2 + ...)), q(x) = q_0 + x (q_1 + ...)
            integral = integral * x + q[..., n] / (n + 1)
            slope = slope * x + q[..., n]
        return c + integral * x, torch.log(slope)

    def bracket(self, z: Tensor, coeffs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        end = (z - coeffs[1]) / self.eps
        return torch.minimum(end, torch.zeros_like(end)), torch.maximum(end, torch.zeros_like(end))

    def __repr__(self) -> str:
        return f"SOSPolynomial(squares={self.squares}, degree={self.degree}, eps={self.eps})"


class MonotoneAutoregressive(MaskedAutoregressive):
    """A `MaskedAutoregressive` layer whose kernel is a `MonotoneUnivariate`, inverted one feature per pass.

    ``forward`` (data -> latent) is `MaskedAutoregressive`'s: one MADE pass, ``z_i = f(x_i; theta_i)``,
    ``log|det dz/dx| = sum_i log f'(x_i; theta_i)``. ``inverse`` takes D MADE passes in the autoregressive
    order; pass ``t`` solves only the ``t``-th feature of the order by bisection (its parameters depend only on
    the features already solved), so each feature's root is found once and the gradients chain exactly through
    the passes. The backend has no fast route for these layers: both directions run this reference code.
    """

    exact_inverse = False

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if (context is None) != (self.net.context_features == 0):
            raise ValueError(f"this layer takes a context of {self.net.context_features} features (0: none), "
                             f"got {'none' if context is None else tuple(context.shape)}")
        cols = list(torch.zeros_like(z).unbind(-1))
        ladj = torch.zeros_like(z[..., 0])
        for i in self.order.tolist():
            p = self.net(torch.stack(cols, -1), context)[..., i, :]
            cols[i], logd = self.univariate.inverse(z[..., i], p)
            ladj = ladj + logd
        return torch.stack(cols, -1), ladj


# The test MADEs use tanh: with ReLU the MADE's own fast path (the same one MAF's tests cover) would make the
# contract repeat every check on batches of 4097 rows and at 32 features, each bisection then costing seconds;
# these layers have no fast path of their own to compare.
# float64 contract tolerance of the three layers: bisection leaves (hi - lo) 2^-60 per feature and pass. The
# brackets of the small randomised test layers are below about 1e5 wide (the widest: SOS's |z - c| / eps, with
# eps = 1e-3), so x is off by at most 1e-13 and z by that times the slope (below 1e3 there): 1e-10, and the
# D = 5 passes only feed exact-to-that-level features to the MADE. 1e-8 is what the root finder promises with
# a margin (the default 1e-5 could hide a root found to only 5 digits).
_BISECTION_TOLERANCE = 1e-8


@TRANSFORMS.register("NAFAutoregressive", tolerance=_BISECTION_TOLERANCE,
                     test_kwargs={"hidden": (16, 16), "components": 4, "activation": "tanh"})
class NAFAutoregressive(MonotoneAutoregressive):
    """NAF layer (Huang et al. 2018): a deep sigmoidal flow per feature, conditioned by a MADE.

    Data -> latent (one MADE pass)::

        z_i = logit( sum_j w_ij sigmoid(a_ij x_i + b_ij) ),   (a_i, b_i, w_i) = MADE(x_<i, context),
        log|det dz/dx| = sum_i log dz_i/dx_i,

    with ``a > 0``, ``w`` on the simplex and the log-det in closed form, in log space (see `DSF`).
    Latent -> data: D MADE passes, each solving every feature by bisection (see the module doc), accurate to
    ``(hi - lo) 2^-iters`` per feature.

    The MADE's arguments (``features``, ``context``, ``hidden``, ``order``, ``residual``, ``activation``, ``seed``,
    ``identity_init``) are those of `MaskedAutoregressive`, with ``identity_init=False`` by default.

    Args:
        components: Number of sigmoids per feature.
        iters: Bisection steps per feature and pass in ``inverse``.

    References:
        C.-W. Huang, D. Krueger, A. Lacoste, A. Courville. Neural Autoregressive Flows (ICML 2018).
        https://arxiv.org/abs/1804.00779

    Examples:
        >>> layer = NAFAutoregressive(3, context=2, hidden=(8, 8), components=4)
        >>> x, c = torch.randn(5, 3), torch.randn(5, 2)
        >>> z, ladj = layer(x, c)
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-4)
        True
    """

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64), components: int = 16,
                 order: str | Tensor = "natural", residual: bool = False, activation: str = "relu",
                 seed: int | None = None, identity_init: bool = False, iters: int = 60) -> None:
        super().__init__(features, context, DSF(components, iters), hidden, order, residual, activation, seed,
                         identity_init)


@TRANSFORMS.register("UNAFAutoregressive", tolerance=_BISECTION_TOLERANCE,
                     test_kwargs={"hidden": (16, 16), "embed": 2, "integrand": (8,), "nodes": 9,
                                  "activation": "tanh"})
class UNAFAutoregressive(MonotoneAutoregressive):
    """UNAF layer (Wehenkel & Louppe 2019): the integral of a positive network per feature, conditioned by a MADE.

    Data -> latent (one MADE pass, then the integrand network on the grid)::

        z_i = beta_i + int_0^{x_i} g(t; h_i) dt,   (h_i, beta_i) = MADE(x_<i, context),
        log|det dz/dx| = sum_i log g(x_i; h_i),

    where ``g`` is the piecewise-linear interpolant of the positive network ``f(t; h)`` on ``nodes`` points of
    ``[-bound, bound]`` (constant beyond), integrated exactly (see `UMNN` for why this, not the paper's moving
    Clenshaw-Curtis nodes: it makes the log-det the exact derivative of the map). Latent -> data: D MADE
    passes, each solving every feature by bisection, accurate to ``(hi - lo) 2^-iters`` per feature.

    The MADE's arguments (``features``, ``context``, ``hidden``, ``order``, ``residual``, ``activation``, ``seed``)
    are those of `MaskedAutoregressive`.

    Args:
        embed: Size of the embedding each feature's integrand gets from the MADE.
        integrand: Hidden layer sizes of the integrand network (shared by all features).
        nodes: Number of grid points of the quadrature on ``[-bound, bound]``.
        bound: Half-width of the grid (linear tails beyond).
        identity_init: Zero the MADE's and the integrand's output layers so the layer starts as the identity.
        iters: Bisection steps per feature and pass in ``inverse``.

    References:
        A. Wehenkel, G. Louppe. Unconstrained Monotonic Neural Networks (NeurIPS 2019).
        https://arxiv.org/abs/1908.05164

    Examples:
        >>> layer = UNAFAutoregressive(3, hidden=(8, 8), embed=2, integrand=(8,), nodes=9)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-4)
        True
    """

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64), embed: int = 8,
                 integrand: Sequence[int] = (32, 32), nodes: int = 33, bound: float = 5.0,
                 order: str | Tensor = "natural", residual: bool = False, activation: str = "relu",
                 seed: int | None = None, identity_init: bool = False, iters: int = 60) -> None:
        kernel = UMNN(embed, integrand, nodes, bound, iters, zero_last=identity_init)
        super().__init__(features, context, kernel, hidden, order, residual, activation, seed, identity_init)


@TRANSFORMS.register("SOSAutoregressive", tolerance=_BISECTION_TOLERANCE,
                     test_kwargs={"hidden": (16, 16), "squares": 2, "degree": 2, "activation": "tanh"})
class SOSAutoregressive(MonotoneAutoregressive):
    """SOS layer (Jaini et al. 2019): a sum-of-squares polynomial per feature, conditioned by a MADE.

    Data -> latent (one MADE pass)::

        z_i = c_i + int_0^{x_i} (eps + sum_k (sum_l a_ikl t^l)^2) dt,   (a_i, c_i) = MADE(x_<i, context),
        log|det dz/dx| = sum_i log(eps + sum_k (sum_l a_ikl x_i^l)^2),

    the integral in closed form (see `SOSPolynomial`). Latent -> data: D MADE passes, each solving every feature
    by bisection, accurate to ``(hi - lo) 2^-iters`` per feature.

    The MADE's arguments (``features``, ``context``, ``hidden``, ``order``, ``residual``, ``activation``, ``seed``,
    ``identity_init``) are those of `MaskedAutoregressive`. ``identity_init=True`` by default: all-zero kernel
    parameters give the identity (see `SOSPolynomial`), so a stack starts as the identity. From the MADE's random
    initialisation instead, each layer is a random polynomial of degree ``2 degree + 1``, and a few stacked layers
    overflow float32 already at initialisation on data a few units from the origin.

    Args:
        squares: Number of squared polynomials per feature.
        degree: Degree of each squared polynomial (the map has degree ``2 degree + 1``).
        eps: Smallest slope of the map, in (0, 1).
        iters: Bisection steps per feature and pass in ``inverse``.

    References:
        P. Jaini, K. A. Selby, Y. Yu. Sum-of-Squares Polynomial Flow (ICML 2019).
        https://arxiv.org/abs/1905.02325

    Examples:
        >>> layer = SOSAutoregressive(3, context=1, hidden=(8, 8), squares=2, degree=2)
        >>> x, c = torch.randn(5, 3), torch.randn(5, 1)
        >>> z, ladj = layer(x, c)
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-4)
        True
    """

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64), squares: int = 3,
                 degree: int = 2, eps: float = 1e-3, order: str | Tensor = "natural", residual: bool = False,
                 activation: str = "relu", seed: int | None = None, identity_init: bool = True,
                 iters: int = 60) -> None:
        super().__init__(features, context, SOSPolynomial(squares, degree, eps, iters), hidden, order, residual,
                         activation, seed, identity_init)
