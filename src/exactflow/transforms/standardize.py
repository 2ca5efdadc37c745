"""Fixed standardisation as a bijection, so a flow trained on standardised data keeps scoring
data in the user's original units.

``z = (x - loc) / scale`` per feature, ``log|det dz/dx| = -sum(log scale)``. ``loc`` and ``scale``
are buffers: saved in the state dict, never trained. Prepended to a flow's transform,

    log p(x) = log p_std((x - loc) / scale) - sum(log scale),

the density of the original data, not of its standardised copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import Bijection
from ..registry import TRANSFORMS

__all__ = ["Standardize"]


def _floating(v: float | Sequence[float] | Tensor, features: int) -> Tensor:
    t = torch.as_tensor(v)
    t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
    return t.expand(features) if t.dim() == 0 else t


@TRANSFORMS.register("Standardize", conditional=False,
                     test_kwargs={"loc": 0.5, "scale": 2.5})
class Standardize(Bijection):
    """Fixed standardisation of each feature (buffers, never trained).

    Data -> latent: ``z = (x - loc) / scale`` with ``scale > 0``, ``log|det dz/dx| = -sum_i log scale_i``;
    latent -> data: ``x = z * scale + loc``, ``log|det dx/dz| = +sum_i log scale_i``.

    ``Standardize.fit(x)`` takes ``loc``/``scale`` from the mean and standard deviation of data ``x``
    (computed in float64, stored in ``x``'s dtype).

    Args:
        features: Number of features ``D``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        loc: The per-feature shift: a number (the same for every feature), a sequence or tensor of length
            ``features``; ``None``: 0.
        scale: The per-feature scale, positive, given like ``loc``; ``None``: 1.

    Raises:
        ValueError: If ``context`` is not 0, the shapes are not ``(features,)``, or ``scale`` is not finite
            and positive (or ``loc`` not finite).

    Examples:
        >>> layer = Standardize(2, loc=1.0, scale=[2.0, 4.0])
        >>> z, ladj = layer(torch.tensor([[3.0, 9.0]]))
        >>> z
        tensor([[1., 2.]])
        >>> torch.allclose(ladj, -torch.log(torch.tensor(8.0)))
        True
        >>> layer.inverse(z)[0]
        tensor([[3., 9.]])
    """

    def __init__(self, features: int, context: int = 0, loc: float | Sequence[float] | Tensor | None = None,
                 scale: float | Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if context:
            raise ValueError(f"Standardize is unconditional; got context={context}")
        loc = torch.zeros(features) if loc is None else _floating(loc, features)
        scale = torch.ones(features) if scale is None else _floating(scale, features)
        if loc.shape != (features,) or scale.shape != (features,):
            raise ValueError(f"Standardize: loc and scale must have shape ({features},), "
                             f"got {tuple(loc.shape)} and {tuple(scale.shape)}")
        if not (torch.isfinite(scale).all() and (scale > 0).all() and torch.isfinite(loc).all()):
            raise ValueError("Standardize: scale must be finite and positive, loc finite")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-8) -> Standardize:
        """Standardisation of the data ``x`` of shape ``(n, features)``: its mean and std (floored at ``eps``)."""
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"Standardize.fit needs data of shape (n >= 2, features), got {tuple(x.shape)}")
        x64 = x.detach().double()
        return cls(x.shape[1], loc=x64.mean(0).to(x.dtype), scale=x64.std(0).clamp_min(eps).to(x.dtype))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) / self.scale, (-torch.log(self.scale).sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * self.scale + self.loc, torch.log(self.scale).sum().expand(z.shape[0])
