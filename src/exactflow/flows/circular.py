"""Flows on the circle and the torus ``[-pi, pi)^D``: circular neural spline flows (Rezende et al. 2020) on the
uniform base `CircularUniform`.

Every layer is a diffeomorphism of the torus (circular splines conditioned on ``(cos, sin)`` of other angles),
so ``log p(x) = -D log(2 pi) + sum over layers of log|det|`` is a density on the torus, periodic in every angle.
Data are angles; values outside ``[-pi, pi)`` are read modulo ``2 pi``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Compose
from ..distributions import CircularUniform, Flow
from ..registry import FLOWS
from ..transforms.coupling import CouplingChain
from ..transforms.splines_circular import CircularSplineAutoregressive, CircularSplineCoupling
from ..validation import check_sizes

__all__ = ["CircularNSF", "CircularNSFAutoregressive"]


@FLOWS.register("CircularNSF", domain="circle", test_kwargs={"depth": 2, "hidden": (16,), "bins": 4})
def CircularNSF(features: int, context: int = 0, depth: int = 4, hidden: Sequence[int] = (64, 64), bins: int = 8,
                mask: str = "half", rotation: bool = True) -> Flow:
    """Circular neural spline flow, coupling form (Rezende et al. 2020): a density on the torus, one pass both ways.

    ``depth`` `CircularSplineCoupling` layers, the fixed angles flipping every layer, on the uniform base
    ``[-pi, pi)^D``. Each layer maps data -> latent by ``z_tr = f(x_tr; net(cos x_id, sin x_id))``, ``z_id = x_id``
    with ``f`` a circular rational-quadratic spline and a rotation per angle, ``log|det dz/dx| = sum log f'(x_tr)``;
    ``log p(x) = -D log(2 pi) + sum over layers of log|det|``.

    Args:
        features: Number of angles ``D`` (at least 2; for one angle use `CircularNSFAutoregressive`).
        context: Number of context features (0: unconditional).
        depth: Number of circular spline couplings.
        hidden: Hidden layer sizes of each coupling's MLP.
        bins: Number of spline bins.
        mask: Which angles a coupling keeps fixed: ``"half"`` or ``"alternating"`` (flipped every layer).
        rotation: Follow every spline by a learned rotation.

    Returns:
        The flow, a `Flow` on `CircularUniform`; ``flow.spec`` records the call.

    References:
        D. J. Rezende, G. Papamakarios, S. Racanière, M. S. Albergo, G. Kanwar, P. E. Shanahan, K. Cranmer.
        Normalizing Flows on Tori and Spheres (ICML 2020). https://arxiv.org/abs/2002.02428

    Examples:
        >>> flow = CircularNSF(2, depth=2, hidden=(8,), bins=4)
        >>> x = flow.sample(5)
        >>> x.shape, bool(x.abs().max() <= torch.pi)
        (torch.Size([5, 2]), True)
        >>> torch.allclose(flow.log_prob(x), flow.log_prob(x + 2 * torch.pi), atol=1e-5)  # periodic
        True
    """
    check_sizes(features, context, hidden, depth=depth, bins=bins)
    if features < 2:
        raise ValueError(f"CircularNSF couples angles and needs features >= 2, got {features}; "
                         "for one angle use CircularNSFAutoregressive")
    layers = [CircularSplineCoupling(features, context, mask=mask, flip=i % 2 == 1, hidden=hidden, bins=bins,
                                     rotation=rotation) for i in range(depth)]
    return Flow(CouplingChain(*layers), CircularUniform(features), context=context)


@FLOWS.register("CircularNSFAutoregressive", domain="circle",
                test_kwargs={"depth": 2, "hidden": (16, 16), "bins": 4})
def CircularNSFAutoregressive(features: int, context: int = 0, depth: int = 3, hidden: Sequence[int] = (64, 64),
                              bins: int = 8, residual: bool = False, rotation: bool = True) -> Flow:
    """Circular neural spline flow, autoregressive form (Rezende et al. 2020): one-pass density, D-pass sampling.

    ``depth`` `CircularSplineAutoregressive` layers, their MADE orders alternating (natural, reversed, ...), on the
    uniform base ``[-pi, pi)^D``. Each layer maps data -> latent by ``z_i = f(x_i; theta_i(cos x_<i, sin x_<i))``
    with ``f`` a circular rational-quadratic spline and a rotation, ``log|det dz/dx| = sum_i log f'(x_i)``. With
    one angle (``features=1``) each layer is a learned (or context-conditioned) circle diffeomorphism.

    Args:
        features: Number of angles ``D``.
        context: Number of context features (0: unconditional).
        depth: Number of autoregressive layers.
        hidden: Hidden layer sizes of each MADE.
        bins: Number of spline bins.
        residual: Make each entry of ``hidden`` a residual block of the MADE (all widths equal).
        rotation: Follow every spline by a learned rotation.

    Returns:
        The flow, a `Flow` on `CircularUniform`; ``flow.spec`` records the call.

    References:
        D. J. Rezende et al. Normalizing Flows on Tori and Spheres (ICML 2020). https://arxiv.org/abs/2002.02428

    Examples:
        >>> flow = CircularNSFAutoregressive(3, depth=2, hidden=(8, 8), bins=4)
        >>> x = flow.sample(4)
        >>> flow.log_prob(x).shape, bool(x.abs().max() <= torch.pi)
        (torch.Size([4]), True)
    """
    check_sizes(features, context, hidden, depth=depth, bins=bins)
    layers = [CircularSplineAutoregressive(features, context, hidden, bins=bins, rotation=rotation,
                                           order="reversed" if i % 2 else "natural", residual=residual)
              for i in range(depth)]
    return Flow(Compose(*layers), CircularUniform(features), context=context)
