"""Autoregressive flows with monotone neural transformers: NAF, UNAF and SOS.

Each preset stacks ``depth`` MADE-conditioned layers of `exactflow.transforms.monotone`, their orders
alternating (``permutation="reverse"``) or with a ``"random"`` permutation or ``"lu"`` map between them. Every
layer maps data -> latent by ``z_i = f(x_i; theta_i(x_<i, context))`` with a strictly increasing ``f`` and the
exact ``log|det dz/dx| = sum_i log f'(x_i)``, so ``log_prob`` is one MADE pass per layer and exact. ``sample``
inverts every layer by bisection in D MADE passes (about 60 kernel evaluations per pass), accurate to the
bracket's width times 2^-60 per feature: slow, meant for occasional sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..distributions import Flow
from ..registry import FLOWS
from ..transforms.monotone import NAFAutoregressive, SOSAutoregressive, UNAFAutoregressive
from ..validation import check_sizes
from .autoregressive import _made_flow

__all__ = ["NAF", "UNAF", "SOS"]

# float64 tolerance of the contract: that of the layers (see exactflow.transforms.monotone), for two layers; the
# test MADEs use tanh for the reason given there
_TOLERANCE = 1e-8


@FLOWS.register("NAF", tolerance=_TOLERANCE,
                test_kwargs={"depth": 2, "hidden": (16, 16), "components": 4, "activation": "tanh"})
def NAF(features: int, context: int = 0, depth: int = 3, hidden: Sequence[int] = (64, 64), components: int = 16,
        residual: bool = False, activation: str = "relu", permutation: str = "reverse",
        conditional_base: bool = False, embedding: Sequence[int] | nn.Module | None = None,
        standardize_context: bool = True) -> Flow:
    """Neural autoregressive flow (Huang et al. 2018) with deep sigmoidal transformers; exact density.

    Each layer maps data -> latent by ``z_i = logit(sum_j w_ij sigmoid(a_ij x_i + b_ij))`` (``a > 0``, ``w`` on
    the simplex, from a MADE on ``x_<i``), ``log|det dz/dx| = sum_i log dz_i/dx_i`` in closed form;
    ``log p(x) = log N(T(x); 0, I) + sum over layers of log|det|``. See `NAFAutoregressive`.

    ``features``, ``context``, ``depth``, ``hidden``, ``residual``, ``permutation``, ``conditional_base``,
    ``embedding`` and ``standardize_context`` are as in `MAF`.

    Args:
        components: Number of sigmoids per feature and layer.
        activation: Activation of the MADEs: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        C.-W. Huang, D. Krueger, A. Lacoste, A. Courville. Neural Autoregressive Flows (ICML 2018).
        https://arxiv.org/abs/1804.00779

    Examples:
        >>> flow = NAF(2, context=1, depth=2, hidden=(8, 8), components=4)
        >>> x, c = torch.randn(5, 2), torch.randn(5, 1)
        >>> flow.log_prob(x, c).shape, flow.sample(3, c[0]).shape
        (torch.Size([5]), torch.Size([3, 2]))
        >>> torch.allclose(flow.from_latent(flow.to_latent(x, c), c), x, atol=1e-4)
        True
    """
    check_sizes(features, context, hidden, depth=depth, components=components)
    return _made_flow(lambda e, order: NAFAutoregressive(features, e, hidden, components, order, residual, activation),
                      features, context, depth, permutation, conditional_base, embedding, standardize_context)


@FLOWS.register("UNAF", tolerance=_TOLERANCE,
                test_kwargs={"depth": 2, "hidden": (16, 16), "embed": 2, "integrand": (8,), "nodes": 9,
                             "activation": "tanh"})
def UNAF(features: int, context: int = 0, depth: int = 3, hidden: Sequence[int] = (64, 64), embed: int = 8,
         integrand: Sequence[int] = (32, 32), nodes: int = 33, bound: float = 5.0, residual: bool = False,
         activation: str = "relu", permutation: str = "reverse", conditional_base: bool = False,
         embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True) -> Flow:
    """Unconstrained monotonic neural network flow (Wehenkel & Louppe 2019); exact density.

    Each layer maps data -> latent by ``z_i = beta_i + int_0^{x_i} g(t; h_i) dt`` with ``(h_i, beta_i)`` from a
    MADE on ``x_<i`` and ``g`` the piecewise-linear interpolant of a positive network ``f(t; h)`` on ``nodes``
    points of ``[-bound, bound]``, integrated exactly, so ``log|det dz/dx| = sum_i log g(x_i; h_i)`` is the true
    derivative of the map (see `UMNN`). See `UNAFAutoregressive`.

    ``features``, ``context``, ``depth``, ``hidden``, ``residual``, ``permutation``, ``conditional_base``,
    ``embedding`` and ``standardize_context`` are as in `MAF`.

    Args:
        embed: Size of the embedding each feature's integrand gets from the MADE.
        integrand: Hidden layer sizes of each layer's integrand network.
        nodes: Number of quadrature grid points on ``[-bound, bound]``.
        bound: Half-width of the grid (linear tails beyond).
        activation: Activation of the MADEs: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        A. Wehenkel, G. Louppe. Unconstrained Monotonic Neural Networks (NeurIPS 2019).
        https://arxiv.org/abs/1908.05164

    Examples:
        >>> flow = UNAF(2, depth=2, hidden=(8, 8), embed=2, integrand=(8,), nodes=9)
        >>> x = torch.randn(5, 2)
        >>> flow.log_prob(x).shape, flow.sample(3).shape
        (torch.Size([5]), torch.Size([3, 2]))
    """
    check_sizes(features, context, hidden, depth=depth, embed=embed, nodes=nodes)
    check_sizes(features, context, integrand)
    return _made_flow(lambda e, order: UNAFAutoregressive(features, e, hidden, embed, integrand, nodes, bound, order,
                                                          residual, activation),
                      features, context, depth, permutation, conditional_base, embedding, standardize_context)


@FLOWS.register("SOS", tolerance=_TOLERANCE, test_kwargs={"depth": 2, "hidden": (16, 16), "squares": 2, "degree": 1,
                                                           "activation": "tanh"})
def SOS(features: int, context: int = 0, depth: int = 3, hidden: Sequence[int] = (64, 64), squares: int = 3,
        degree: int = 2, eps: float = 1e-3, residual: bool = False, activation: str = "relu",
        permutation: str = "reverse", conditional_base: bool = False,
        embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True) -> Flow:
    """Sum-of-squares polynomial flow (Jaini et al. 2019); exact density.

    Each layer maps data -> latent by ``z_i = c_i + int_0^{x_i} (eps + sum_k (sum_l a_ikl t^l)^2) dt`` with
    ``(a_i, c_i)`` from a MADE on ``x_<i``, a closed-form polynomial of degree ``2 degree + 1``, and
    ``log|det dz/dx| = sum_i log`` of the integrand at ``x_i``. See `SOSAutoregressive`. Stacked layers multiply
    the degrees, so keep ``degree`` and ``depth`` small (or standardise the data) to keep the latents moderate.

    ``features``, ``context``, ``depth``, ``hidden``, ``residual``, ``permutation``, ``conditional_base``,
    ``embedding`` and ``standardize_context`` are as in `MAF`.

    Args:
        squares: Number of squared polynomials per feature.
        degree: Degree of each squared polynomial.
        eps: Smallest slope of each layer's map, in (0, 1).
        activation: Activation of the MADEs: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        P. Jaini, K. A. Selby, Y. Yu. Sum-of-Squares Polynomial Flow (ICML 2019).
        https://arxiv.org/abs/1905.02325

    Examples:
        >>> flow = SOS(2, depth=2, hidden=(8, 8), squares=2, degree=1)
        >>> x = torch.randn(5, 2)
        >>> flow.log_prob(x).shape, flow.sample(3).shape
        (torch.Size([5]), torch.Size([3, 2]))
    """
    check_sizes(features, context, hidden, depth=depth, squares=squares)
    return _made_flow(lambda e, order: SOSAutoregressive(features, e, hidden, squares, degree, eps, order, residual,
                                                         activation),
                      features, context, depth, permutation, conditional_base, embedding, standardize_context)
