"""Planar and radial flows (Rezende & Mohamed 2015), the flows of variational inference.

With ``context > 0`` every layer's parameters are affine in the context (amortised posteriors);
the base stays N(0, I) (a VAE puts its own context-dependent base under the layers, see
`exactflow.vae`).
"""

from __future__ import annotations

from ..core import Compose
from ..distributions import Flow, StandardNormal
from ..registry import FLOWS
from ..transforms.planar import Planar as PlanarLayer
from ..transforms.planar import Radial as RadialLayer
from ..validation import check_sizes

__all__ = ["Planar", "Radial"]


@FLOWS.register("Planar", conditional=True, renamed={"layers": "depth"}, test_kwargs={"depth": 4})
def Planar(features: int, context: int = 0, depth: int = 16) -> Flow:
    """Planar flow (Rezende & Mohamed 2015): ``depth`` planar maps on N(0, I).

    Each layer maps latent -> data by ``x = z + u' tanh(w.z + b)``, with
    ``log|det dx/dz| = log|1 + (1 - tanh^2(w.z + b)) w.u'|``. Sampling and ``sample_and_log_prob`` are closed
    form; ``log_prob`` of given data inverts each layer numerically (bisection).

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional); every layer's parameters are then affine in it.
        depth: Number of planar layers.

    Returns:
        The flow, a `Flow` on N(0, I); ``flow.spec`` records the call.

    References:
        D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows (2015).
        https://arxiv.org/abs/1505.05770

    Examples:
        >>> flow = Planar(2, depth=4)
        >>> x, log_q = flow.sample_and_log_prob(5)  # closed form
        >>> x.shape, log_q.shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> torch.allclose(flow.log_prob(x), log_q, atol=1e-4)  # by bisection
        True
    """
    check_sizes(features, context, depth=depth)
    return Flow(Compose(*[PlanarLayer(features, context) for _ in range(depth)]), StandardNormal(features), context)


@FLOWS.register("Radial", conditional=True, renamed={"layers": "depth"}, test_kwargs={"depth": 4})
def Radial(features: int, context: int = 0, depth: int = 16) -> Flow:
    """Radial flow (Rezende & Mohamed 2015): ``depth`` radial maps on N(0, I); both directions closed form.

    Each layer maps latent -> data by ``x = z + beta (z - z0) / (alpha + |z - z0|)``, with
    ``log|det dx/dz| = (D - 1) log(1 + beta/(alpha + r)) + log(1 + alpha beta/(alpha + r)^2)``, ``r = |z - z0|``.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional); every layer's parameters are then affine in it.
        depth: Number of radial layers.

    Returns:
        The flow, a `Flow` on N(0, I); ``flow.spec`` records the call.

    References:
        D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows (2015).
        https://arxiv.org/abs/1505.05770

    Examples:
        >>> flow = Radial(2, context=3, depth=4)
        >>> x, c = torch.randn(5, 2), torch.randn(5, 3)
        >>> flow.log_prob(x, c).shape
        torch.Size([5])
        >>> torch.allclose(flow.from_latent(flow.to_latent(x, c), c), x, atol=1e-5)
        True
    """
    check_sizes(features, context, depth=depth)
    return Flow(Compose(*[RadialLayer(features, context) for _ in range(depth)]), StandardNormal(features), context)
