"""Small numerical helpers shared by several transforms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["bisect", "sum_except_batch"]


@torch.no_grad()
def bisect(f: Callable[[Tensor], Tensor], target: Tensor, lo: Tensor, hi: Tensor, iters: int = 60) -> Tensor:
    """Solve ``f(u) = target`` elementwise for increasing ``f`` with the root inside ``[lo, hi]``.

    Each step halves the bracket, so ``iters`` steps leave an error of ``(hi - lo) / 2**iters``.
    No gradient flows; callers add one Newton step with gradients (implicit function theorem).
    """
    lo, hi = torch.broadcast_tensors(lo.clone(), hi.clone())
    lo, hi = lo.clone(), hi.clone()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = f(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(batch, ...) -> (batch,)``."""
    return x.flatten(1).sum(-1) if x.dim() > 1 else x  # flatten, not reshape(B, -1): B may be 0
