"""Interoperability: the context shape rule, ``from_latent`` and ``torch.distributions``.

The rule under test (``Flow``'s docstring): a context is one vector ``(c,)`` or rows ``(b, c)``; ``log_prob``,
``to_latent`` and ``from_latent`` pair ``n`` points with ``n`` rows or share one row or vector among them;
``sample(n)`` gives ``(n, D)`` for ``(c,)`` and ``(n, b, D)`` for ``(b, c)``; the torch distribution's
``batch_shape`` is the context's batch shape.
"""

import math

import pytest
import torch

from exactflow.flows import registry as flows
from exactflow.testing import randomize_

D, C, B = 3, 2, 4

# Float64 and mild parameter noise keep the round trips tight, so the comparisons below test the shapes and
# the pairing of points with context rows (a wrong pairing changes log p by O(1)), not float32 rounding.
TOL = {"atol": 1e-10, "rtol": 1e-10}

CONDITIONAL = {
    "RealNVP": {"transforms": 2, "hidden": (8,)},  # coupling layers, context-free N(0, I) base
    "MAF-conditional-base": {"transforms": 2, "hidden": (8,), "conditional_base": True},  # base N(mu(c), sigma(c))
}


def _flow(name: str, context: int = C):
    kwargs = dict(CONDITIONAL.get(name, {"transforms": 2, "hidden": (8,)}))
    preset = name.split("-")[0]
    return randomize_(flows[preset](features=D, context=context, **kwargs), 0.1).double()


@pytest.fixture(params=list(CONDITIONAL))
def cflow(request):
    return _flow(request.param)


@pytest.fixture
def context():
    return torch.randn(B, C, dtype=torch.float64)


# --- 1. torch.distributions: batch_shape, sample and log_prob broadcasting -------------------------------------


def test_unconditional_distribution_has_empty_batch_shape():
    flow = _flow("RealNVP", context=0)
    dist = flow.as_torch_distribution()
    assert dist.batch_shape == () and dist.event_shape == (D,)
    x = dist.sample((5,))
    assert x.shape == (5, D)
    torch.testing.assert_close(dist.log_prob(x.clone()), flow.log_prob(x), **TOL)


def test_conditional_distribution_batch_shape_is_the_contexts(cflow, context):
    dist = cflow.as_torch_distribution(context=context)
    assert dist.batch_shape == (B,) and dist.event_shape == (D,)
    assert dist.sample().shape == (B, D)
    assert dist.sample((5,)).shape == (5, B, D)
    assert dist.rsample((2, 5)).shape == (2, 5, B, D)


def test_conditional_log_prob_broadcasts_like_torch(cflow, context):
    """x (n, b, D), (b, D) and (n, 1, D) against b context rows; every value equals Flow.log_prob of the point
    with its own context row. ``.clone()`` keeps torch's cache of the sampling pass out of it."""
    dist = cflow.as_torch_distribution(context=context)
    x = dist.sample((5,)).clone()
    expected = cflow.log_prob(x.reshape(5 * B, D), context.repeat(5, 1)).reshape(5, B)
    torch.testing.assert_close(dist.log_prob(x), expected, **TOL)
    torch.testing.assert_close(dist.log_prob(x[0]), expected[0], **TOL)
    one = x[:, :1]  # (5, 1, D): each point scored under all B contexts
    expected = torch.stack([cflow.log_prob(one[:, 0], context[j]) for j in range(B)], dim=1)
    torch.testing.assert_close(dist.log_prob(one), expected, **TOL)


def test_log_prob_of_own_sample_reuses_the_sampling_pass(cflow, context):
    """torch caches the last (z, x) pair; the log-det of that pair comes from the same pass, so the log-density
    of a fresh sample needs no data -> latent pass and equals the recomputed one."""
    dist = cflow.as_torch_distribution(context=context)
    x = dist.rsample((5,))
    torch.testing.assert_close(dist.log_prob(x), dist.log_prob(x.clone()), atol=1e-9, rtol=1e-9)


def test_one_context_vector_gives_an_unbatched_distribution(cflow, context):
    c = context[1]
    dist = cflow.as_torch_distribution(context=c)
    assert dist.batch_shape == ()
    x = dist.sample((6,)).clone()
    assert x.shape == (6, D)
    torch.testing.assert_close(dist.log_prob(x), cflow.log_prob(x, c.expand(6, C)), **TOL)


def test_distribution_refuses_mismatched_shapes(cflow, context):
    with pytest.raises(ValueError, match="needs the context"):
        cflow.as_torch_distribution()
    with pytest.raises(ValueError, match=r"expected \(batch, 2\)"):
        cflow.as_torch_distribution(context=torch.randn(B, C + 1, dtype=torch.float64))
    dist = cflow.as_torch_distribution(context=context)
    with pytest.raises(ValueError):  # torch's own check: (6, D) does not broadcast with batch_shape (B,)
        dist.log_prob(torch.randn(6, D, dtype=torch.float64))
    t = dist.transforms[0]
    with pytest.raises(ValueError, match=r"batch shape \(6,\).*context's batch shape \(4,\)"):
        t.inv(torch.randn(6, D, dtype=torch.float64))


# --- 2. the context rule on Flow's own methods -----------------------------------------------------------------


def test_sample_shapes_follow_the_context_rule(cflow, context):
    assert cflow.sample(5, context[0]).shape == (5, D)
    assert cflow.sample(5, context).shape == (5, B, D)
    assert cflow.sample(5, context[:1]).shape == (5, 1, D)
    assert cflow.sample(0, context[0]).shape == (0, D)
    x, log_q = cflow.sample_and_log_prob(5, context[0])
    assert x.shape == (5, D) and log_q.shape == (5,)
    torch.testing.assert_close(log_q, cflow.log_prob(x, context[0]), atol=1e-9, rtol=1e-9)


def test_log_prob_shares_one_context_row_or_vector(cflow, context):
    x = torch.randn(6, D, dtype=torch.float64)
    row = context[:1]
    expected = cflow.log_prob(x, row.expand(6, C).contiguous())
    torch.testing.assert_close(cflow.log_prob(x, row), expected, **TOL)
    torch.testing.assert_close(cflow.log_prob(x, row[0]), expected, **TOL)
    torch.testing.assert_close(cflow.to_latent(x, row[0]), cflow.to_latent(x, row.expand(6, C)), **TOL)


def test_mismatched_context_rows_are_value_errors(cflow, context):
    x = torch.randn(6, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="context has 4 rows but x has 6"):
        cflow.log_prob(x, context)
    with pytest.raises(ValueError, match=r"context has shape \(3,\)"):
        cflow.log_prob(x, torch.randn(C + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"context has shape \(1, 6, 2\)"):
        cflow.sample(2, context.new_zeros(1, 6, C))
    with pytest.raises(ValueError, match="context contains NaN"):
        cflow.log_prob(x, torch.full((C,), math.nan, dtype=torch.float64))


# --- 3. from_latent ------------------------------------------------------------------------------------------


def test_from_latent_inverts_to_latent(cflow, context):
    x = torch.randn(B, D, dtype=torch.float64)
    z = cflow.to_latent(x, context)
    torch.testing.assert_close(cflow.from_latent(z, context), x, atol=1e-9, rtol=1e-9)
    z = torch.randn(B, D, dtype=torch.float64)
    torch.testing.assert_close(cflow.to_latent(cflow.from_latent(z, context[0]), context[0]), z, atol=1e-9, rtol=1e-9)


def test_from_latent_is_the_map_sample_applies():
    flow = _flow("RealNVP", context=0)
    torch.manual_seed(1)
    x = flow.sample(7)
    torch.manual_seed(1)
    torch.testing.assert_close(flow.from_latent(flow.base.rsample(7)), x, rtol=0, atol=0)


def test_from_latent_checks_its_input():
    flow = _flow("RealNVP", context=0)
    with pytest.raises(ValueError, match=r"z has shape \(4, 2\)"):
        flow.from_latent(torch.zeros(4, 2, dtype=torch.float64))
    z = torch.zeros(4, D, dtype=torch.float64)
    z[2, 1] = math.inf
    with pytest.raises(ValueError, match="z contains inf"):
        flow.from_latent(z)
