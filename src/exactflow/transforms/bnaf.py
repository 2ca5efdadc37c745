"""Block neural autoregressive flow (De Cao et al. 2020): one monotone neural network per feature, all
in a single network whose weights are block lower triangular.

A layer maps ``D`` blocks of ``a_in`` units to ``D`` blocks of ``a_out`` units with ``W = diag(g) V / ||V||_row``;
block ``(i, j)`` of ``V`` is zero for ``j > i``, free for ``j < i`` and elementwise positive (``exp``) for
``j = i``. Hidden layers are followed by ``sigma(u) = tanh(u) + alpha u`` (``alpha > 0``, so every feature's
map is onto R and sampling has a pre-image everywhere; plain tanh bounds it). The Jacobian dz/dx is lower
triangular; its diagonal ``dz_i/dx_i`` is the product of the diagonal blocks and the activation slopes,
computed exactly in log space by log-sum-exp over the hidden units, layer by layer.

The inverse has no closed form: it solves ``z_i = f_i(x_<i, x_i)`` for ``x_i`` by bisection, feature by
feature in order, and then runs ``D`` Newton-Jacobi sweeps that carry exact first-order gradients (the
implicit function theorem). It costs about ``D * (60 + D)`` network passes: slow, meant for occasional
sampling, not for training through samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection
from ..registry import TRANSFORMS
from ..utils import bisect

__all__ = ["BNAF", "BlockLinear"]


def _block_masks(features: int, a_out: int, a_in: int) -> tuple[Tensor, Tensor]:
    """Boolean ``(D a_out, D a_in)`` masks: the lower block triangle (diagonal included) and the diagonal blocks."""
    rows = torch.arange(features).repeat_interleave(a_out)[:, None]
    cols = torch.arange(features).repeat_interleave(a_in)[None, :]
    return cols <= rows, cols == rows


class BlockLinear(nn.Module):
    """``h' = W h + b`` with ``W`` block lower triangular and positive diagonal blocks (weight-normalised rows).

    `weight` also returns ``log W`` of the diagonal blocks, shape ``(D, a_out, a_in)``. Entries of the
    raw weight outside the lower block triangle are masked on use, so they may hold anything.

    Args:
        features: Number of features ``D`` (blocks).
        a_in: Units per feature on the input side.
        a_out: Units per feature on the output side.
    """

    def __init__(self, features: int, a_in: int, a_out: int) -> None:
        super().__init__()
        self.features, self.a_in, self.a_out = features, a_in, a_out
        lower, diag = _block_masks(features, a_out, a_in)
        self.register_buffer("lower", lower)
        self.register_buffer("diag", diag)
        # near-unit gain at the start: diagonal blocks exp(raw) ~ 1, small free blocks, unit-norm rows
        bound = 1 / math.sqrt(a_in * features)
        self.raw = nn.Parameter(torch.empty(features * a_out, features * a_in).uniform_(-bound, bound))
        self.log_g = nn.Parameter(torch.zeros(features * a_out))
        self.bias = nn.Parameter(torch.empty(features * a_out).uniform_(-bound, bound))

    def _direction(self, raw: Tensor) -> Tensor:
        positive = torch.exp(torch.where(self.diag, raw, torch.zeros_like(raw)))
        return torch.where(self.diag, positive, torch.where(self.lower, raw, torch.zeros_like(raw)))

    def weight(self) -> tuple[Tensor, Tensor]:
        """``(W, log W_diag)``, ``W`` of shape ``(D a_out, D a_in)`` and the diagonal blocks ``(D, a_out, a_in)``."""
        v = self._direction(self.raw)
        log_norm = torch.log(v.norm(dim=-1, keepdim=True))
        w = torch.exp(self.log_g[:, None] - log_norm) * v
        d, o, i = self.features, self.a_out, self.a_in
        log_diag = (self.log_g[:, None] - log_norm + self.raw)[self.diag].reshape(d, o, i)
        return w, log_diag


def _log_slope(u: Tensor, alpha: float) -> Tensor:
    """``log(1 - tanh(u)^2 + alpha)`` without overflow: ``log sech^2 u = 2 (log 2 - |u| - softplus(-2|u|))``."""
    log_sech2 = 2 * (math.log(2) - u.abs() - F.softplus(-2 * u.abs()))
    return torch.logaddexp(log_sech2, torch.full_like(u, math.log(alpha)))


@TRANSFORMS.register("BNAF", tolerance=1e-6, test_kwargs={"features": 3, "hidden": (3,)})
class BNAF(Bijection):
    """Block neural autoregressive layer: exact log-det; inverse by bisection (slow).

    ``z = L_n(sigma(... sigma(L_1(x) + c_1(context)) ...)) + c_n(context)`` with block lower triangular
    ``L_l`` (`BlockLinear`), ``hidden`` units per feature in each hidden layer and
    ``sigma(u) = tanh(u) + alpha u``; log|det dz/dx| = sum_i log dz_i/dx_i, exact (see the module doc).

    Data -> latent is the network above (one pass); latent -> data inverts it feature by feature by
    bisection (slow, see the module doc) and returns ``log|det dx/dz| = -sum_i log dz_i/dx_i`` at the root.

    Features are in natural order (`order`); stack layers with `Reverse`
    between them. The context shifts the pre-activations of every layer.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional); a linear map of the context shifts the
            pre-activations of every layer.
        hidden: Units per feature in each hidden layer (at least one layer).
        alpha: Slope ``alpha > 0`` of the linear part of ``sigma``, which makes each feature's map onto R.
        iters: Bisection steps per feature in ``inverse``.

    References:
        N. De Cao, I. Titov, W. Aziz. Block Neural Autoregressive Flow (UAI 2019).
        https://arxiv.org/abs/1904.04676

    Examples:
        >>> layer = BNAF(2, hidden=(4,))
        >>> x = torch.randn(3, 2)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([3, 2]), torch.Size([3]))
        >>> jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], x[0])
        >>> torch.allclose(ladj[0], torch.linalg.slogdet(jac)[1], atol=1e-5)  # the exact log-det
        True
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    exact_inverse = False

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (16, 16), alpha: float = 0.1,
                 iters: int = 60) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("BNAF needs at least one hidden layer")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.features, self.alpha, self.iters = features, alpha, iters
        widths = [1, *hidden, 1]
        self.layers = nn.ModuleList(BlockLinear(features, a, b) for a, b in zip(widths[:-1], widths[1:], strict=False))
        self.context_net = nn.Linear(context, features * sum(widths[1:])) if context else None
        self._splits = [features * w for w in widths[1:]]

    @property
    def order(self) -> Tensor:
        """Feature indices in autoregressive order (natural)."""
        return torch.arange(self.features)

    def _weights(self, context: Tensor | None, dtype: torch.dtype) -> tuple[list, list | None]:
        """Every layer's ``(W, log W_diag, bias)`` and the context shifts, computed once per call."""
        weights = [(*layer.weight(), layer.bias) for layer in self.layers]
        shifts = None if self.context_net is None else self.context_net(context.to(dtype)).split(self._splits, -1)
        return weights, shifts

    def _network(self, x: Tensor, params: tuple[list, list | None],
                 logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(z, log dz_i/dx_i)``, both ``(batch, D)``; ``logdet=False`` skips the second (``None``)."""
        weights, shifts = params
        h, log_j = x, x.new_zeros(x.shape[0], self.features, 1)  # log_j: (batch, D, units) = log dh/dx_i
        last = len(weights) - 1
        for k, (w, log_diag, bias) in enumerate(weights):
            u = F.linear(h, w, bias)
            if shifts is not None:
                u = u + shifts[k]
            if logdet:
                log_j = torch.logsumexp(log_diag.unsqueeze(0) + log_j.unsqueeze(2), dim=-1)  # (batch, D, a_out)
                if k < last:
                    log_j = log_j + _log_slope(u, self.alpha).reshape(log_j.shape)
            h = torch.tanh(u) + self.alpha * u if k < last else u
        return h, log_j.squeeze(-1) if logdet else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_j = self._network(x, self._weights(context, x.dtype))
        return z, log_j.sum(-1)

    @staticmethod
    def _bracket(f: Callable[[Tensor], Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """``[lo, hi]`` with ``f(lo) <= target <= f(hi)``, grown by doubling (``f`` is increasing and onto R)."""
        lo, hi = torch.full_like(target, -1.0), torch.full_like(target, 1.0)
        for _ in range(64):
            low_bad, high_bad = f(lo) > target, f(hi) < target
            if not (low_bad.any() or high_bad.any()):
                break
            lo = torch.where(low_bad, 2 * lo, lo)
            hi = torch.where(high_bad, 2 * hi, hi)
        return lo, hi

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zd = z.detach()
        x = zd.new_zeros(z.shape)
        with torch.no_grad():
            frozen = self._weights(context, z.dtype)
            for i in range(self.features):

                def f(u: Tensor, i: int = i) -> Tensor:
                    return self._network(torch.cat([x[:, :i], u[:, None], x[:, i + 1 :]], -1), frozen, False)[0][:, i]

                lo, hi = self._bracket(f, zd[:, i])
                x[:, i] = bisect(f, zd[:, i], lo, hi, self.iters)
            slope = torch.exp(self._network(x, frozen)[1])
        # Gradients by the implicit function theorem: D Newton-Jacobi sweeps from the root carry exactly
        # dx = J^-1 (dz - df/dtheta dtheta), as I - diag(J)^-1 J is strictly triangular (nilpotent);
        # the value is kept at the bisection root, which the sweeps could only blur by rounding.
        params = self._weights(context, z.dtype)
        root, x = x, x.clone()
        for _ in range(self.features):
            x = x - (self._network(x, params, False)[0] - z) / slope
        x = root + (x - x.detach())
        return x, -self._network(x, params)[1].sum(-1)

    def extra_repr(self) -> str:
        return f"features={self.features}, alpha={self.alpha}"
