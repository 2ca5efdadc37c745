"""2-D benchmark shapes generated from a fixed seed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import DATASETS

__all__ = ["two_moons", "eight_gaussians", "checkerboard"]


def two_moons(n: int, noise: float = 0.05, seed: int = 0) -> Tensor:
    """Two interleaved half circles, centred and scaled by 2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=g)
    return (pts - torch.tensor([0.5, 0.25])) * 2


def eight_gaussians(n: int, scale: float = 2.0, std: float = 0.2, seed: int = 0) -> Tensor:
    """Equal mixture of 8 Gaussians (std ``std``) on a circle of radius ``scale``."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.randint(8, (n,), generator=g) * (math.pi / 4)
    centres = scale * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return centres + std * torch.randn(n, 2, generator=g)


def checkerboard(n: int, seed: int = 0) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard over [-4, 4]^2 (squares of side 2)."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, generator=g) * 8 - 4
    x2 = torch.rand(n, generator=g) * 2 - 4 + 2 * torch.randint(4, (n,), generator=g)
    x2 = x2 + 2 * ((torch.floor(x1 / 2) + torch.floor((x2 + 4) / 2)) % 2 != 0)
    x2 = torch.where(x2 >= 4, x2 - 8, x2)
    return torch.stack([x1, x2], -1)


def _toy(name: str, make, train: int, valid: int, test: int, seed: int):
    from . import Dataset

    return Dataset(name, make(train, seed=seed), make(valid, seed=seed + 1), make(test, seed=seed + 2),
                   info={"generator": make.__name__, "seed": seed, "sizes": [train, valid, test]})


@DATASETS.register("8gaussians")
def gaussians8(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0):
    """Eight Gaussians on a circle (20k/2k/5k points by default)."""
    return _toy("8gaussians", eight_gaussians, train, valid, test, seed)


@DATASETS.register("checkerboard")
def checkerboard_data(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0):
    """2-D checkerboard (20k/2k/5k points by default)."""
    return _toy("checkerboard", checkerboard, train, valid, test, seed)


@DATASETS.register("moons")
def moons(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0):
    """Two moons (20k/2k/5k points by default)."""
    return _toy("moons", two_moons, train, valid, test, seed)
