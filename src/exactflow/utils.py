"""Small numerical helpers shared by several transforms."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["bisect", "soft_clamp", "sum_except_batch"]


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


def soft_clamp(x: Tensor, bound: float | None) -> Tensor:
    """``bound * tanh(x / bound)``: smooth, identity near 0, confined to (-bound, bound); None = no bound."""
    return x if bound is None else bound * torch.tanh(x / bound)


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(batch, ...) -> (batch,)``."""
    return x.reshape(x.shape[0], -1).sum(-1)
