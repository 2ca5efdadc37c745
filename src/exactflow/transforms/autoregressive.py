"""Masked autoregressive transforms (MAF, IAF): ``z_i = f(x_i; theta_i(x_<i, context))`` with a MADE
conditioner, so the Jacobian dz/dx is triangular in the autoregressive order and
log|det dz/dx| = sum_i log f'(x_i; theta_i).

The elementwise map ``f`` is a `Univariate` kernel (affine here, rational-quadratic spline in
`exactflow.transforms.splines`); a kernel plus the generic `MaskedAutoregressive` layer
is a complete transform. Data -> latent takes one network pass; latent -> data takes D passes (after
pass t the first t features in the order are exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import backend
from ..core import Bijection, Inverse
from ..nets import MADE
from ..registry import TRANSFORMS
from .elementwise import bounded_log_scale

__all__ = ["Univariate", "AffineUnivariate", "MaskedAutoregressive", "MaskedAffineAutoregressive", "IAF"]


class Univariate:
    """A strictly increasing scalar map ``z = f(x; p)`` applied elementwise, with ``n_params`` parameters
    per element in the last dimension of ``p`` (shape ``(*x.shape, n_params)``). All-zero parameters
    give the identity. Kernels hold no tensors; conditioners produce ``p``."""

    n_params: int = 0

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log f'(x))``, both shaped like ``x``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log (f^-1)'(z))``, both shaped like ``z``."""
        raise NotImplementedError


class AffineUnivariate(Univariate):
    """``z = x * exp(-s) + t`` with ``p = (t, s_raw)`` and ``s = B tanh(s_raw / B)``
    (``B = scale_bound``, ``None``: unbounded); log f'(x) = -s.

    The shift acts after the scale, in latent units: dz/dt = 1 whatever the scale, so the network's shift
    and scale outputs move z independently. With the shift first, ``(x - t) exp(-s)``, the shift's gradient
    carries the factor exp(-s) and its effective step size follows the learnt scale.

    Args:
        scale_bound: Bound ``B`` of the log-scale; ``None``: unbounded.

    Examples:
        >>> kernel = AffineUnivariate(scale_bound=3.0)
        >>> z, logd = kernel.forward(torch.tensor([1.0]), torch.tensor([[0.5, 0.0]]))
        >>> z, logd == 0
        (tensor([1.5000]), tensor([True]))
    """

    n_params = 2

    def __init__(self, scale_bound: float | None = 3.0) -> None:
        if scale_bound is not None and scale_bound <= 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.scale_bound = scale_bound

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = p.unbind(-1)
        neg_s = -bounded_log_scale(raw, self.scale_bound)
        return torch.addcmul(shift, x, torch.exp(neg_s)), neg_s

    def inverse(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = p.unbind(-1)
        s = bounded_log_scale(raw, self.scale_bound)
        return (z - shift) * torch.exp(s), s

    def __repr__(self) -> str:
        return f"AffineUnivariate(scale_bound={self.scale_bound})"


class MaskedAutoregressive(Bijection):
    """``z_i = f(x_i; theta_i)``, ``theta = MADE(x, context)`` with ``theta_i`` a function of the features before
    ``i`` in `order` (and of the context); log|det dz/dx| = sum_i log f'(x_i; theta_i).

    ``forward`` (data -> latent, density) is one MADE pass; ``inverse`` (latent -> data, sampling) runs
    D passes ``x <- f^-1(z; MADE(x))`` from ``x = 0``. ``Inverse`` of this layer is an inverse
    autoregressive flow layer with the costs swapped.

    Args:
        features: Number of features ``D``.
        context: Number of context features fed to the MADE (0: unconditional).
        univariate: The elementwise kernel ``f``; ``None``: `AffineUnivariate`.
        hidden: Hidden layer sizes of the MADE.
        order: Autoregressive order of the MADE: ``"natural"``, ``"reversed"``, ``"random"`` or a permutation
            tensor listing the features in the order they are generated.
        residual: Make each entry of ``hidden`` a residual block of the MADE (all widths equal).
        activation: Activation of the MADE: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        seed: Seed of the ``"random"`` order.
        identity_init: Zero the MADE's output layer so the layer starts as the identity (all-zero kernel
            parameters); otherwise keep PyTorch's default initialisation.

    References:
        M. Germain, K. Gregor, I. Murray, H. Larochelle. MADE: Masked Autoencoder for Distribution
        Estimation (2015). https://arxiv.org/abs/1502.03509
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
    ) -> None:
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
        fast = backend.run(self, "forward", x, context)
        if fast is not None:
            return fast
        z, logd = self.univariate.forward(x, self.net(x, context))
        return z, logd.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if (context is None) != (self.net.context_features == 0):
            raise ValueError(f"this layer takes a context of {self.net.context_features} features (0: none), "
                             f"got {'none' if context is None else tuple(context.shape)}")
        fast = backend.run(self, "inverse", z, context)
        if fast is not None:
            return fast
        # pass t fixes the t-th feature in the order: its parameters depend only on the features before it
        x = torch.zeros_like(z)
        for _ in range(self.features):
            x, logd = self.univariate.inverse(z, self.net(x, context))
        return x, logd.sum(-1)

    def extra_repr(self) -> str:
        return f"features={self.features}, univariate={self.univariate!r}"


@TRANSFORMS.register("MaskedAffineAutoregressive", test_kwargs={"hidden": (16, 16)})
class MaskedAffineAutoregressive(MaskedAutoregressive):
    """MAF layer (Papamakarios et al. 2017): affine autoregressive; one-pass forward, D-pass inverse.

    Data -> latent (``forward``, one MADE pass)::

        z_i = x_i * exp(-s_i) + t_i,     (t_i, s_raw_i) = MADE(x_<i, context),
        log|det dz/dx| = -sum_i s_i,     s = B tanh(s_raw / B),  B = scale_bound.

    Latent -> data (``inverse``) is ``x_i = (z_i - t_i) exp(s_i)``, computed in D sequential MADE passes.
    The MADE keeps PyTorch's random initialisation by default (``identity_init=False``).

    Args:
        features: Number of features ``D``.
        context: Number of context features fed to the MADE (0: unconditional).
        hidden: Hidden layer sizes of the MADE.
        order: Autoregressive order of the MADE: ``"natural"``, ``"reversed"``, ``"random"`` or a permutation
            tensor listing the features in the order they are generated.
        residual: Make each entry of ``hidden`` a residual block of the MADE (all widths equal).
        activation: Activation of the MADE: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        scale_bound: Bound ``B`` of the log-scale; ``None``: unbounded.
        seed: Seed of the ``"random"`` order.
        identity_init: Zero the MADE's output layer so the layer starts as the identity.

    References:
        G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density Estimation (2017),
        with the MADE of M. Germain et al. (2015). https://arxiv.org/abs/1705.07057,
        https://arxiv.org/abs/1502.03509

    Examples:
        >>> layer = MaskedAffineAutoregressive(3, context=2, hidden=(8, 8))
        >>> x, c = torch.randn(4, 3), torch.randn(4, 2)
        >>> z, ladj = layer(x, c)
        >>> z.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-5)
        True
        >>> jac = torch.autograd.functional.jacobian(lambda v: layer(v[None], c[:1])[0][0], x[0])
        >>> torch.equal(jac, jac.tril())  # dz_i/dx_j = 0 for j > i: triangular in the natural order
        True
    """

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
    ) -> None:
        super().__init__(features, context, AffineUnivariate(scale_bound), hidden, order, residual, activation, seed,
                         identity_init)


@TRANSFORMS.register("IAF", test_kwargs={"hidden": (16, 16)})
def IAF(features: int, context: int = 0, **kwargs: Any) -> Inverse:
    """IAF layer (Kingma et al. 2016) = ``Inverse(MaskedAffineAutoregressive)``: one-pass sampling, D-pass density.

    Latent -> data (``inverse``: sampling, and ``sample_and_log_prob`` for variational posteriors) is one MADE
    pass over the latent::

        x_i = z_i * exp(-s_i) + t_i,     (t_i, s_raw_i) = MADE(z_<i, context),     log|det dx/dz| = -sum_i s_i.

    Data -> latent (``forward``) inverts it, ``z_i = (x_i - t_i) exp(s_i)`` with ``log|det dz/dx| = +sum_i s_i``,
    in D sequential MADE passes.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional).
        **kwargs: Passed to `MaskedAffineAutoregressive` (``hidden``, ``order``, ``residual``,
            ``activation``, ``scale_bound``, ``seed``, ``identity_init``).

    Returns:
        The layer, an `Inverse` of a `MaskedAffineAutoregressive`.

    References:
        D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling. Improved Variational
        Inference with Inverse Autoregressive Flow (2016). https://arxiv.org/abs/1606.04934

    Examples:
        >>> layer = IAF(3, hidden=(8, 8))
        >>> z = torch.randn(4, 3)
        >>> x, ladj = layer.inverse(z)  # sampling direction: one pass
        >>> x.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> torch.allclose(layer(x)[0], z, atol=1e-5)
        True
    """
    return Inverse(MaskedAffineAutoregressive(features, context, **kwargs))
