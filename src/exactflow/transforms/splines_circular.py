"""Circular rational-quadratic splines (Rezende et al. 2020): diffeomorphisms of the circle, for flows on the
circle and the torus ``[-pi, pi)^D``, in coupling and autoregressive layers.

A circular spline is the rational-quadratic spline of `exactflow.transforms.splines` on ``[-pi, pi]`` with
``y(-pi) = -pi``, ``y(pi) = pi`` and **equal end derivatives** ``d_0 = d_K`` (one learned value), so that the map
and its derivative join up at the seam: identifying ``-pi`` with ``pi`` it is a diffeomorphism of the circle. A
learned rotation (circular shift) ``phi`` follows, so ``-pi`` need not stay fixed. Data -> latent::

    z = wrap(f(wrap(x)) + phi),     log|dz/dx| = log f'(wrap(x)),     wrap(a) = ((a + pi) mod 2 pi) - pi,

with ``f`` the spline (``K`` bins: softmax widths and heights, ``K`` derivatives ``min_derivative + softplus``);
latent -> data is ``x = f^-1(wrap(z - phi))`` (the spline's closed-form inverse). Inputs are angles: any real
number is read modulo ``2 pi``, and outputs lie in ``[-pi, pi]`` (``pi`` only by rounding).

The conditioners see angles through ``(cos x, sin x)``, so the predicted parameters, and with them the whole
layer, are continuous functions on the torus. In the coupling layer the MLP takes ``(cos x_id, sin x_id,
context)``; in the autoregressive layer a MADE takes ``(cos x, sin x)`` with both features of angle ``i`` at
angle ``i``'s degree (`CircularMADE`).

References:
    D. J. Rezende, G. Papamakarios, S. Racanière, M. S. Albergo, G. Kanwar, P. E. Shanahan, K. Cranmer.
    Normalizing Flows on Tori and Spheres (ICML 2020). https://arxiv.org/abs/2002.02428

    C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
    https://arxiv.org/abs/1906.04032
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nets import MADE, MLP, MaskedLinear
from ..registry import TRANSFORMS
from .autoregressive import MaskedAutoregressive
from .splines import RQSpline, SplineKernelCoupling

__all__ = ["wrap", "CircularRQSpline", "CircularMADE", "CircularSplineCoupling", "CircularSplineAutoregressive"]


def wrap(a: Tensor) -> Tensor:
    """The angle ``a`` in ``[-pi, pi)``: ``((a + pi) mod 2 pi) - pi`` (derivative 1)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def angle_features(x: Tensor) -> Tensor:
    """``(cos x, sin x)`` side by side, ``(..., 2 D)`` from ``(..., D)``: the angles as continuous functions on the
    torus."""
    return torch.cat([torch.cos(x), torch.sin(x)], dim=-1)


class CircularRQSpline(RQSpline):
    """Circular rational-quadratic spline kernel on ``[-pi, pi)`` with ``bins`` bins, equal end derivatives and
    (``rotation=True``) a learned circular shift; see the module doc for the maths.

    Parameters per element (``3 K``, plus 1 with the rotation): unnormalised bin widths and heights (softmax,
    then at least ``min_width``/``min_height`` of ``2 pi``), the ``K`` knot derivatives ``d_0 = d_K, d_1, ...,
    d_{K-1}`` (``min_derivative + softplus``) and the rotation angle ``phi`` (any real number). All-zero
    parameters give the identity.

    Args:
        bins: Number of spline bins ``K``.
        rotation: Follow the spline by a learned rotation ``phi``.
        min_width: Smallest bin width, as a fraction of ``2 pi``.
        min_height: Smallest bin height, as a fraction of ``2 pi``.
        min_derivative: Smallest knot derivative.

    References:
        D. J. Rezende et al. Normalizing Flows on Tori and Spheres (ICML 2020). https://arxiv.org/abs/2002.02428

    Examples:
        >>> spline = CircularRQSpline(bins=4)
        >>> x, p = torch.linspace(-3, 3, 5), torch.randn(5, spline.n_params)
        >>> z, logd = spline.forward(x, p)
        >>> bool(z.abs().max() <= math.pi), torch.allclose(spline.inverse(z, p)[0], x, atol=1e-5)
        (True, True)
        >>> p0 = torch.randn(spline.n_params)  # one spline: the same point and slope at -pi and at pi
        >>> ends = spline.forward(torch.tensor([-math.pi, math.pi]), p0.expand(2, -1))
        >>> torch.allclose(wrap(ends[0][0] - ends[0][1]), torch.tensor(0.0), atol=1e-6), torch.allclose(*ends[1])
        (True, True)
    """

    def __init__(self, bins: int = 8, rotation: bool = True, min_width: float = 1e-3, min_height: float = 1e-3,
                 min_derivative: float = 1e-3) -> None:
        super().__init__(bins, math.pi, min_width, min_height, min_derivative)
        self.rotation = rotation
        self.n_params = 3 * bins + int(rotation)

    def __repr__(self) -> str:
        return f"CircularRQSpline(bins={self.bins}, rotation={self.rotation})"

    def knots(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Knot positions ``x_k``, values ``y_k`` and derivatives ``d_k`` (``d_K = d_0``), each ``(*batch, K + 1)``."""
        k = self.bins
        if p.shape[-1] != self.n_params:
            raise ValueError(f"circular spline parameters have {p.shape[-1]} entries per element: expected "
                             f"{self.n_params}")
        w, h, d = p[..., : 3 * k].split([k, k, k], dim=-1)
        d = self.min_derivative + F.softplus(d + self.derivative_shift)
        return self._knots(w, self.min_width), self._knots(h, self.min_height), torch.cat([d, d[..., :1]], dim=-1)

    def _angle(self, p: Tensor, like: Tensor) -> Tensor:
        return p[..., -1] if self.rotation else like.new_zeros(())

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        y, logd = super().forward(wrap(x).clamp(-self.bound, self.bound), p)
        return wrap(y + self._angle(p, x)), logd

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return super().inverse(wrap(z - self._angle(p, z)).clamp(-self.bound, self.bound), p)


class CircularMADE(MADE):
    """A `MADE` on angles: input ``i`` enters as ``(cos x_i, sin x_i)``, both with the degree of angle ``i``, so
    output ``[:, i, :]`` is a continuous function on the torus of the angles before ``i`` (and of the context).
    Same arguments as `MADE`; only the first masked layer differs (``2 D + context`` inputs).

    Examples:
        >>> net = CircularMADE(3, params=2, hidden=(8,), zero_last=False)
        >>> x = torch.rand(4, 3) * 6 - 3
        >>> torch.allclose(net(x), net(x + 2 * math.pi), atol=1e-5)  # periodic in every angle
        True
    """

    def __init__(self, features: int, params: int, hidden: Sequence[int] = (64, 64), context: int = 0,
                 order: str | Tensor = "natural", residual: bool = False, activation: str = "relu",
                 zero_last: bool = True, seed: int | None = None) -> None:
        super().__init__(features, params, hidden, context, order, residual, activation, zero_last, seed)
        d_in = torch.cat([self.input_degrees.repeat(2), torch.zeros(context, dtype=torch.long)])
        first = self.hidden_degrees[0]
        self.layers[0] = MaskedLinear(len(d_in), len(first), first[:, None] >= d_in[None, :])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The parameters ``(batch, D, params)`` from the angles ``x`` ``(batch, D)``."""
        return super().forward(angle_features(x), context)


@TRANSFORMS.register("CircularSplineCoupling", domain="circle", test_kwargs={"bins": 4, "hidden": (16,)})
class CircularSplineCoupling(SplineKernelCoupling):
    """Circular spline coupling layer (Rezende et al. 2020) on angles: a `CircularRQSpline` per transformed angle,
    conditioned on ``(cos, sin)`` of the fixed angles.

    Data -> latent: ``z_tr = f(x_tr; p)``, ``z_id = x_id``, ``p = net(cos x_id, sin x_id, context)`` with ``f``
    a circle diffeomorphism (spline, then rotation); ``log|det dz/dx| = sum log f'(x_tr; p)``. Latent -> data
    inverts the splines in closed form with the same ``p`` (from ``z_id = x_id``). Angles are read modulo
    ``2 pi``; the transformed ones come out in ``[-pi, pi)``.

    The coupling's arguments (``context``, ``mask``, ``flip``, ``hidden``, ``activation``) are those of
    `RQSplineCoupling`, with angles for features.

    Args:
        features: Number of angles ``D`` (at least 2).
        bins: Number of spline bins ``K``.
        rotation: Follow every spline by a learned rotation.

    References:
        D. J. Rezende et al. Normalizing Flows on Tori and Spheres (ICML 2020). https://arxiv.org/abs/2002.02428

    Examples:
        >>> layer = CircularSplineCoupling(4, hidden=(8,), bins=4)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight)  # leave the identity it starts as
        >>> x = torch.rand(3, 4) * 2 * math.pi - math.pi
        >>> z, ladj = layer(x)
        >>> torch.equal(z[:, :2], x[:, :2]), bool(z.abs().max() <= math.pi)
        (True, True)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    def __init__(self, features: int, context: int = 0, mask: str | Tensor = "half", flip: bool = False,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu", bins: int = 8,
                 rotation: bool = True) -> None:
        super().__init__(CircularRQSpline(bins, rotation), features, context, mask, flip, hidden, activation)
        # the conditioner reads each fixed angle as (cos, sin)
        self.net = MLP(2 * len(self.idx_id) + context, self.spline.n_params * len(self.idx_tr), hidden, activation)

    def _conditioner_input(self, x_id: Tensor) -> Tensor:
        return angle_features(x_id)


@TRANSFORMS.register("CircularSplineAutoregressive", domain="circle", test_kwargs={"bins": 4, "hidden": (16, 16)})
class CircularSplineAutoregressive(MaskedAutoregressive):
    """Autoregressive circular spline layer (Rezende et al. 2020): ``z_i = f(x_i; theta_i)`` with ``theta`` from a
    `CircularMADE` on ``(cos x_<i, sin x_<i)`` and the context, ``f`` a `CircularRQSpline`; one MADE pass forward,
    D passes for the inverse.

    Data -> latent: ``log|det dz/dx| = sum_i log f'(x_i; theta_i)``, the Jacobian triangular in the MADE's order.
    Angles are read modulo ``2 pi`` and come out in ``[-pi, pi)``.

    The MADE's arguments (``context``, ``hidden``, ``order``, ``residual``, ``activation``, ``seed``,
    ``identity_init``) are those of `MaskedAutoregressive`.

    Args:
        features: Number of angles ``D``.
        bins: Number of spline bins ``K``.
        rotation: Follow every spline by a learned rotation.

    References:
        D. J. Rezende et al. Normalizing Flows on Tori and Spheres (ICML 2020). https://arxiv.org/abs/2002.02428

    Examples:
        >>> layer = CircularSplineAutoregressive(3, hidden=(8, 8), bins=4, identity_init=False)
        >>> x = torch.rand(5, 3) * 2 * math.pi - math.pi
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64), bins: int = 8,
                 rotation: bool = True, order: str | Tensor = "natural", residual: bool = False,
                 activation: str = "relu", seed: int | None = None, identity_init: bool = True) -> None:
        spline = CircularRQSpline(bins, rotation)
        super().__init__(features, context, spline, hidden, order, residual, activation, seed, identity_init)
        self.net = CircularMADE(features, spline.n_params, hidden, context, order, residual, activation,
                                zero_last=identity_init, seed=seed)
