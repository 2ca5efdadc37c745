"""2-D benchmark shapes generated from a fixed seed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import DATASETS

__all__ = ["two_moons"]


def two_moons(n: int, noise: float = 0.05, seed: int = 0) -> Tensor:
    """Two interleaved half circles, centred and scaled by 2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=g)
    return (pts - torch.tensor([0.5, 0.25])) * 2


@DATASETS.register("moons")
def moons(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0):
    """Two moons (20k/2k/5k points by default)."""
    from . import Dataset

    return Dataset("moons", two_moons(train, seed=seed), two_moons(valid, seed=seed + 1), two_moons(test, seed=seed + 2),
                   info={"generator": "two_moons", "seed": seed})
