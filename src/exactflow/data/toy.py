"""2-D benchmark shapes generated from a fixed seed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..registry import DATASETS

if TYPE_CHECKING:
    from . import Dataset

__all__ = ["checkerboard", "circles", "eight_gaussians", "pinwheel", "rings", "swiss_roll", "two_moons", "two_spirals"]


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


def circles(n: int, noise: float = 0.08, factor: float = 0.5, seed: int = 0) -> Tensor:
    """Two concentric circles of radii 3 and ``3 * factor``, equally weighted, with Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = torch.where(torch.rand(n, generator=g) < 0.5, 3.0, 3.0 * factor)
    pts = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return pts + noise * torch.randn(n, 2, generator=g)


def two_spirals(n: int, noise: float = 0.1, seed: int = 0) -> Tensor:
    """Two interleaved Archimedean spirals (radius proportional to angle, up to 540 degrees)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * torch.stack([-t * torch.cos(t), t * torch.sin(t)], -1) / 2.5
    return pts + noise * torch.randn(n, 2, generator=g)


def pinwheel(n: int, arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1, rate: float = 0.25,
             seed: int = 0) -> Tensor:
    """``arms`` curved arms: a Gaussian blob at radius 1 along each arm, rotated by ``rate * exp(r)``, scaled by 3."""
    g = torch.Generator().manual_seed(seed)
    arm = torch.randint(arms, (n,), generator=g)
    r = 1 + radial_std * torch.randn(n, generator=g)
    tangential = tangential_std * torch.randn(n, generator=g)
    angle = arm * (2 * math.pi / arms) + rate * torch.exp(r)
    c, s = torch.cos(angle), torch.sin(angle)
    return 3 * torch.stack([c * r - s * tangential, s * r + c * tangential], -1)


def rings(n: int, noise: float = 0.08, seed: int = 0) -> Tensor:
    """Four concentric rings of radii 1, 2, 3, 4 (scaled by 0.9), with points in proportion to the circumference."""
    g = torch.Generator().manual_seed(seed)
    radius = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ring = torch.multinomial(radius, n, replacement=True, generator=g)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    pts = 0.9 * radius[ring][:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return pts + noise * torch.randn(n, 2, generator=g)


def swiss_roll(n: int, noise: float = 0.25, seed: int = 0) -> Tensor:
    """The 2-D swiss roll: ``t (cos t, sin t) / 3``, ``t`` uniform on [1.5 pi, 4.5 pi], plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = t[:, None] * torch.stack([torch.cos(t), torch.sin(t)], -1) / 3
    return pts + noise * torch.randn(n, 2, generator=g)


def _toy(name: str, make: Callable[..., Tensor], train: int, valid: int, test: int, seed: int) -> Dataset:
    from . import Dataset

    return Dataset(name, make(train, seed=seed), make(valid, seed=seed + 1), make(test, seed=seed + 2),
                   info={"generator": make.__name__, "seed": seed, "sizes": [train, valid, test]})


@DATASETS.register("8gaussians")
def gaussians8(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """Eight Gaussians on a circle (20k/2k/5k points by default)."""
    return _toy("8gaussians", eight_gaussians, train, valid, test, seed)


@DATASETS.register("checkerboard")
def checkerboard_data(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """2-D checkerboard (20k/2k/5k points by default)."""
    return _toy("checkerboard", checkerboard, train, valid, test, seed)


@DATASETS.register("moons")
def moons(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """Two moons (20k/2k/5k points by default)."""
    return _toy("moons", two_moons, train, valid, test, seed)


@DATASETS.register("circles")
def circles_data(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """Two concentric circles (20k/2k/5k points by default)."""
    return _toy("circles", circles, train, valid, test, seed)


@DATASETS.register("spirals")
def spirals(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """Two interleaved spirals (20k/2k/5k points by default)."""
    return _toy("spirals", two_spirals, train, valid, test, seed)


@DATASETS.register("pinwheel")
def pinwheel_data(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """Pinwheel with five arms (20k/2k/5k points by default)."""
    return _toy("pinwheel", pinwheel, train, valid, test, seed)


@DATASETS.register("rings")
def rings_data(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """Four concentric rings (20k/2k/5k points by default)."""
    return _toy("rings", rings, train, valid, test, seed)


@DATASETS.register("swissroll")
def swissroll(train: int = 20000, valid: int = 2000, test: int = 5000, seed: int = 0) -> Dataset:
    """2-D swiss roll (20k/2k/5k points by default)."""
    return _toy("swissroll", swiss_roll, train, valid, test, seed)
