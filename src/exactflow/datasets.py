"""Data: 2-D benchmark shapes generated from a fixed seed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["two_moons", "TOY"]


def two_moons(n: int, noise: float = 0.05, seed: int = 0) -> Tensor:
    """Two interleaved half circles, standardised to roughly unit scale."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=g)
    return (pts - torch.tensor([0.5, 0.25])) * 2


TOY = {"moons": two_moons}
