"""Elementwise transforms: each output coordinate depends on its own input coordinate only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Bijection
from ..nets import MLP
from ..registry import TRANSFORMS

__all__ = ["ElementwiseAffine", "bounded_log_scale"]


def bounded_log_scale(raw: Tensor, bound: float | None) -> Tensor:
    """The smoothly bounded log-scale of the affine layers: ``s = B tanh(raw / B)`` (``raw`` itself when
    ``B = bound`` is None), so ``exp(s)`` stays in ``(e^-B, e^B)`` and never overflows; ``ds/draw = 1`` at 0.

    Computed as the equal ``2B sigmoid(2 raw / B) - B`` (torch's sigmoid is several times faster than its tanh
    on the CPU). Every affine coupling and autoregressive layer calls this one function.

    Examples:
        >>> bounded_log_scale(torch.tensor([0.0, 100.0]), 3.0)
        tensor([0., 3.])
    """
    if bound is None:
        return raw
    return torch.rsub(torch.sigmoid(raw * (2 / bound)), -bound, alpha=-2 * bound)  # -B - (-2B) u


@TRANSFORMS.register("ElementwiseAffine")
class ElementwiseAffine(Bijection):
    """Diagonal affine map, per feature: a learned shift and log-scale (conditional if given a context).

    Data -> latent (``forward``)::

        z = (x - loc) * exp(-log_scale),      log|det dz/dx| = -sum_i log_scale_i.

    Latent -> data (``inverse``): ``x = z * exp(log_scale) + loc``, ``log|det dx/dz| = +sum_i log_scale_i``.

    Unconditional: ``loc`` and ``log_scale`` are parameters (zero: identity). With ``context=c``
    they are predicted from the context by an MLP, giving a conditional diagonal affine map.
    As a one-layer flow on N(0, 1), x = exp(log_scale) z + loc has the N(loc, exp(2 log_scale)) density.

    Args:
        features: Number of features ``D`` of the data.
        context: Number of context features (0: unconditional, ``loc`` and ``log_scale`` are parameters).
        hidden: Hidden layer sizes of the MLP that predicts ``(loc, log_scale)`` from the context
            (unused when ``context=0``).

    References:
        L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation (2014), the final
        diagonal scaling layer. https://arxiv.org/abs/1410.8516

    Examples:
        >>> layer = ElementwiseAffine(3, context=2, hidden=(8,))
        >>> x, c = torch.randn(4, 3), torch.randn(4, 2)
        >>> z, ladj = layer(x, c)
        >>> z.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> x_back, inv_ladj = layer.inverse(z, c)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(ladj + inv_ladj, torch.zeros(4), atol=1e-5)
        (True, True)
    """

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        self.features = features
        if context:
            self.net = MLP(context, 2 * features, hidden)
        else:
            self.loc = nn.Parameter(torch.zeros(features))
            self.log_scale = nn.Parameter(torch.zeros(features))

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if hasattr(self, "net"):
            loc, log_scale = self.net(context).chunk(2, dim=-1)
            return loc, log_scale
        return self.loc, self.log_scale

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self._params(context)
        return (x - loc) * torch.exp(-log_scale), (-log_scale).sum(-1).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self._params(context)
        return z * torch.exp(log_scale) + loc, log_scale.sum(-1).expand(z.shape[0])
