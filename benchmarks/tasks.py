"""Density-estimation tasks for choosing and checking defaults: toys, known densities, scikit-learn tables.

Every task gives fixed train/valid/test splits, standardised with the training split's mean and standard
deviation (the same data for every library). Tasks whose density is known in closed form also give
``log_prob``, the true log density in those standardised coordinates (the affine map adds
``sum(log std)``), so that

    distance to the truth = test NLL - H,   H = mean over the test rows of -log p_true(x)

is the Monte Carlo estimate of KL(p_true || model) on the test samples (>= 0 up to Monte Carlo error).

The tasks are split once: ``TUNING`` (the defaults sweep looks only at these) and ``HELD_OUT`` (reported
separately, never used to choose).

    from benchmarks.tasks import load
    task = load("funnel-4d", seed=0)
    task.train.shape, task.entropy()      # (10000, 4), a float in nats
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, Normal, StudentT

SIZES = {"train": 10000, "valid": 1000, "test": 5000}


@dataclass
class Task:
    """One task: float32 splits (standardised) and, where known, the true log density of a standardised row."""

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    log_prob: Callable[[Tensor], Tensor] | None = None
    source: str = ""

    @property
    def features(self) -> int:
        return int(self.train.shape[1])

    def entropy(self) -> float | None:
        """The Monte Carlo estimate of the true entropy on the test rows, ``mean(-log p_true(test))`` (nats)."""
        if self.log_prob is None:
            return None
        return float(-self.log_prob(self.test.double()).mean())


# known densities: (sample(n, generator) in float64, log_prob(x float64)) ---------------------------------------

class Known:
    """A distribution with exact sampling and log density (float64)."""

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def _draw(dist: torch.distributions.Distribution, n: int, gen: torch.Generator) -> Tensor:
    """``dist.sample((n,))`` from a seed taken from ``gen`` without touching the global RNG."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.sample((n,))


class Mixture(Known):
    """``k`` Gaussians with random means (spread 3) and random full covariances, unequal weights, in ``d`` dims."""

    def __init__(self, d: int, k: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(1000 + seed)
        means = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
        tril = torch.tril(0.3 * torch.randn(k, d, d, generator=g, dtype=torch.float64), -1)
        diag = 0.2 + 0.6 * torch.rand(k, d, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
        self.dist = MixtureSameFamily(Categorical(probs=weights / weights.sum()),
                                      MultivariateNormal(means, scale_tril=tril + torch.diag_embed(diag)))

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        return _draw(self.dist, n, gen)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.dist.log_prob(x)


class HeavyTails(Known):
    """``x = A z`` with independent Student-t coordinates ``z_i`` (``df`` degrees of freedom) and a fixed random
    well-conditioned ``A``: ``log p(x) = sum_i log t_df(A^-1 x)_i - log|det A|``."""

    def __init__(self, d: int, df: float = 3.0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(2000 + seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.a = q * (0.5 + torch.rand(d, generator=g, dtype=torch.float64))
        self.t = StudentT(torch.tensor(df, dtype=torch.float64))
        self.logdet = float(torch.linalg.slogdet(self.a)[1])

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        return _draw(self.t, n * self.a.shape[0], gen).reshape(n, -1) @ self.a.T

    def log_prob(self, x: Tensor) -> Tensor:
        z = torch.linalg.solve(self.a, x.T).T
        return self.t.log_prob(z).sum(-1) - self.logdet


class Funnel(Known):
    """Neal's funnel in ``d`` dims: ``v ~ N(0, scale^2)``, ``x_i | v ~ N(0, exp(v))`` for the other ``d - 1``."""

    def __init__(self, d: int, scale: float = 2.0) -> None:
        self.d, self.scale = d, scale

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        v = self.scale * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        return torch.cat([v, torch.exp(v / 2) * torch.randn(n, self.d - 1, generator=gen, dtype=torch.float64)], 1)

    def log_prob(self, x: Tensor) -> Tensor:
        v = x[:, 0]
        return Normal(0.0, self.scale).log_prob(v) + Normal(0.0, torch.exp(v / 2)[:, None]).log_prob(x[:, 1:]).sum(-1)


class Rings(Known):
    """Concentric rings in 2-D: a uniform angle and ``log r`` from an equal mixture of ``N(log r_k, s^2)``;
    ``p(x) = p_log r(log |x|) / (2 pi |x|^2)``."""

    def __init__(self, radii: tuple[float, ...] = (1.0, 2.0, 3.0), s: float = 0.06) -> None:
        k = len(radii)
        self.logr = MixtureSameFamily(Categorical(probs=torch.full((k,), 1.0 / k, dtype=torch.float64)),
                                      Normal(torch.log(torch.tensor(radii, dtype=torch.float64)),
                                             torch.full((k,), s, dtype=torch.float64)))

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        r = torch.exp(_draw(self.logr, n, gen))
        angle = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1)

    def log_prob(self, x: Tensor) -> Tensor:
        r = x.norm(dim=-1)
        return self.logr.log_prob(torch.log(r)) - math.log(2 * math.pi) - 2 * torch.log(r)


class NoisyManifold(Known):
    """A 2-D sheet curved through ``d`` dims, with noise: ``u ~ N(0, I_2)`` are the first two coordinates and
    ``x_j = sin(w_j . u + b_j) + noise * eps_j`` the others;
    ``log p = log N(u) + sum_j log N(x_j; sin(w_j . u + b_j), noise^2)``."""

    def __init__(self, d: int, noise: float = 0.1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(3000 + seed)
        self.w = 1.5 * torch.randn(d - 2, 2, generator=g, dtype=torch.float64)
        self.b = 2 * math.pi * torch.rand(d - 2, generator=g, dtype=torch.float64)
        self.noise = noise

    def _curve(self, u: Tensor) -> Tensor:
        return torch.sin(u @ self.w.T + self.b)

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        u = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        eps = torch.randn(n, self.w.shape[0], generator=gen, dtype=torch.float64)
        return torch.cat([u, self._curve(u) + self.noise * eps], 1)

    def log_prob(self, x: Tensor) -> Tensor:
        u = x[:, :2]
        return Normal(0.0, 1.0).log_prob(u).sum(-1) + Normal(self._curve(u), self.noise).log_prob(x[:, 2:]).sum(-1)


KNOWN: dict[str, Callable[[], Known]] = {
    "mixture-4d": lambda: Mixture(4), "mixture-16d": lambda: Mixture(16, k=8, seed=1),
    "student-t-4d": lambda: HeavyTails(4), "student-t-8d": lambda: HeavyTails(8, seed=1),
    "funnel-4d": lambda: Funnel(4), "funnel-8d": lambda: Funnel(8),
    "rings-2d": lambda: Rings(),
    "manifold-4d": lambda: NoisyManifold(4), "manifold-8d": lambda: NoisyManifold(8, seed=1),
}
TOYS = ("moons", "8gaussians", "checkerboard", "pinwheel", "spirals")  # exactflow's 2-D toys, no known density
TABLES = ("digits-pca8", "breast-cancer")  # scikit-learn's shipped tables, no known density

TUNING = ("moons", "mixture-4d", "funnel-4d", "manifold-4d")
HELD_OUT = ("8gaussians", "checkerboard", "rings-2d", "student-t-4d", "student-t-8d", "funnel-8d", "mixture-16d",
            "manifold-8d", "digits-pca8", "breast-cancer")
ALL = (*TUNING, *HELD_OUT)


def _standardised(name: str, train: Tensor, valid: Tensor, test: Tensor, log_prob: Callable | None,
                  source: str) -> Task:
    """The task with every split mapped by ``y = (x - mean) / std`` (training statistics); the true log density
    follows as ``log p_y(y) = log p_x(mean + std * y) + sum(log std)``."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)

    def scale(x: Tensor) -> Tensor:
        return ((x - mean) / std).float()

    truth = None
    if log_prob is not None:
        m, s, logdet = mean.double(), std.double(), float(torch.log(std.double()).sum())

        def truth(y: Tensor) -> Tensor:
            return log_prob(m + s * y.double()) + logdet

    return Task(name, scale(train), scale(valid), scale(test), truth, source)


def _table(name: str, seed: int) -> tuple[Tensor, str]:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.decomposition import PCA

    if name == "digits-pca8":
        x = load_digits().data
        return torch.as_tensor(PCA(8, random_state=0).fit_transform(x), dtype=torch.float64), \
            "scikit-learn digits, first 8 principal components"
    return torch.as_tensor(load_breast_cancer().data, dtype=torch.float64).log1p(), \
        "scikit-learn breast cancer, 30 features, log1p"


def load(name: str, seed: int = 0, sizes: dict[str, int] | None = None) -> Task:
    """The task ``name`` (one of `ALL`, or another toy of `TOYS`) with data drawn from ``seed``.

    ``sizes`` (train/valid/test row counts) applies to the generated tasks; the scikit-learn tables are split
    70/10/20 at random by ``seed``."""
    sizes = {**SIZES, **(sizes or {})}
    n = (sizes["train"], sizes["valid"], sizes["test"])
    if name in KNOWN:
        dist, gen = KNOWN[name](), torch.Generator().manual_seed(seed)
        parts = [dist.sample(k, gen) for k in n]
        return _standardised(name, *parts, dist.log_prob, type(dist).__name__)
    if name in TOYS:
        from exactflow.data import registry as datasets

        ds = datasets.build(name, train=n[0], valid=n[1], test=n[2], seed=seed)
        return _standardised(name, ds.train.double(), ds.valid.double(), ds.test.double(), None, "exactflow.data")
    if name in TABLES:
        x, source = _table(name, seed)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        a, b = int(0.7 * len(x)), int(0.8 * len(x))
        return _standardised(name, x[order[:a]], x[order[a:b]], x[order[b:]], None, source)
    raise ValueError(f"unknown task {name!r}; choose from {', '.join((*ALL, *TOYS))}")
