"""Interoperability: the context shape rule, ``from_latent``, ``torch.distributions`` and Pyro.

The rule under test (``Flow``'s docstring): a context is one vector ``(c,)`` or rows ``(b, c)``; ``log_prob``,
``to_latent`` and ``from_latent`` pair ``n`` points with ``n`` rows or share one row or vector among them;
``sample(n)`` gives ``(n, D)`` for ``(c,)`` and ``(n, b, D)`` for ``(b, c)``; the torch distribution's
``batch_shape`` is the context's batch shape.
"""

import math
import subprocess
import sys

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
    z = flow.base.rsample(7)
    with torch.no_grad():  # the sampler's own route: the same numbers
        assert torch.equal(flow.from_latent(z), x)
    # with autograd the networks may sum in another order: a few float32 roundings of the values' size apart
    torch.testing.assert_close(flow.from_latent(z), x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_from_latent_checks_its_input():
    flow = _flow("RealNVP", context=0)
    with pytest.raises(ValueError, match=r"z has shape \(4, 2\)"):
        flow.from_latent(torch.zeros(4, 2, dtype=torch.float64))
    z = torch.zeros(4, D, dtype=torch.float64)
    z[2, 1] = math.inf
    with pytest.raises(ValueError, match="z contains inf"):
        flow.from_latent(z)


# --- 4. Pyro -------------------------------------------------------------------------------------------------


def test_exactflow_does_not_import_pyro():
    code = "import sys, exactflow; assert 'pyro' not in sys.modules, 'pyro imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_distribution_alone_is_not_enough_for_pyro_as_pyro_is():
    pyro = pytest.importorskip("pyro")
    from pyro.distributions.torch_distribution import TorchDistributionMixin

    flow = _flow("RealNVP", context=0)
    with pytest.raises(TypeError, match="not callable"):  # Pyro calls its distributions to sample
        pyro.sample("z", flow.as_torch_distribution())
    dist = flow.as_pyro()
    assert isinstance(dist, TorchDistributionMixin) and dist.has_rsample
    assert pyro.sample("z", dist).shape == (D,)


def test_pyro_model_scores_with_flow_log_prob(cflow, context):
    """A conditional flow as the likelihood of B observations in a plate, an unconditional one as a prior:
    the trace's log-density is Flow.log_prob's."""
    pyro = pytest.importorskip("pyro")
    prior = _flow("RealNVP", context=0)
    x = torch.randn(B, D, dtype=torch.float64)

    def model():
        z = pyro.sample("z", prior.as_pyro())
        with pyro.plate("data", B):
            pyro.sample("x", cflow.as_pyro(context=context + z[:C]), obs=x)
        return z

    trace = pyro.poutine.trace(model).get_trace()
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    assert z.shape == (D,)
    torch.testing.assert_close(trace.nodes["z"]["log_prob"], prior.log_prob(z[None])[0], **TOL)
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], cflow.log_prob(x, context + z[:C]), **TOL)


def test_pyro_svi_with_flow_guide_recovers_conjugate_posterior():
    """Prior z ~ N(0, I_2), observations y_i ~ N(z, s^2 I), i = 1..k: the posterior is N(m, v I) with
    precision 1/v = 1 + k / s^2 and mean m = v * sum(y) / s^2. An IAF guide (affine layers: the Gaussian
    posterior is inside its family, so the ELBO's optimum is exact) is fitted by SVI with 16 vectorised
    particles and a decaying learning rate.

    Tolerances: the check estimates mean and std from N = 40000 guide draws, whose Monte Carlo standard errors
    are sqrt(v / N) = 0.005 sqrt(v) (mean) and about 1 / sqrt(2 N) = 0.35 % (std). What is left after 600 steps
    is the optimiser's noise, measured at <= 0.03 sqrt(v) and <= 2 % over seeds 0-4. The bounds, 0.1 sqrt(v)
    and 7 %, are 20 standard errors of the check and over three times the measured fit error; a guide that
    ignored the data would miss the mean by ~4 sqrt(v), one that counted the likelihood once per particle would
    have a std ratio of 1/4.
    """
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import ClippedAdam

    y = torch.tensor([[0.9, -0.4], [1.3, -0.1], [0.6, -0.8], [1.1, -0.3]])
    s, k = 0.5, len(y)
    v = 1 / (1 + k / s**2)
    mean, std = v * y.sum(0) / s**2, math.sqrt(v)

    def model(y):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("obs", k):
            pyro.sample("y", dist.Normal(z, s).to_event(1), obs=y)

    flow = flows["IAF"](features=2, transforms=2, hidden=(8,))

    def guide(y):
        pyro.module("q", flow)
        pyro.sample("z", flow.as_pyro())

    steps = 600
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / steps)}), elbo)
    for _ in range(steps):
        svi.step(y)
    pyro.clear_param_store()

    draws = flow.sample(40000)
    assert (draws.mean(0) - mean).abs().max() < 0.1 * std
    assert (draws.std(0) / std - 1).abs().max() < 0.07
