"""Random compositions of registered vector transforms obey the same contract."""

import random

import pytest
import torch

from exactflow import Compose, Inverse
from exactflow.testing import check_bijection, randomize_, warm_up
from exactflow.transforms import registry


def _vector_entries():
    return sorted(n for n, e in registry.items() if e.input == "vector" and e.domain == "real" and not e.slow)


@pytest.mark.parametrize("seed", range(4))
def test_random_composition(seed):
    rng = random.Random(seed)
    names = rng.sample(_vector_entries(), 3)
    parts = []
    for name in names:
        entry = registry[name]
        b = entry(**{**entry.test_kwargs, "features": 4, "context": 0}).double()
        parts.append(Inverse(b) if rng.random() < 0.3 else b)
    composed = Compose(*parts)
    x = torch.randn(12, 4, dtype=torch.float64)
    warm_up(composed, x)
    randomize_(composed, 0.2)
    tol = max(registry[n].tolerance for n in names)
    check_bijection(composed, x, atol=tol, name=" o ".join(names))
