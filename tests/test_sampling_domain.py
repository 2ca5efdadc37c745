"""A flow's own samples are in its domain (the logit's edges in float32); the sample count is checked;
empty batches give empty results of the right shapes, for image flows as for vector flows."""

import math

import pytest
import torch

from exactflow.flows import registry as flows
from exactflow.testing import randomize_, warm_up
from exactflow.transforms.image import Logit, Squeeze, Unsqueeze, _logit_edges

IMAGE_FLOWS = ["Glow", "RealNVPImage", "TarFlow"]


def _small(name: str, context: int = 0, **overrides):
    """The registry entry at the small sizes of its ``test_kwargs``; the numerics (``scale_bound``, ``alpha``)
    keep the library defaults, which is where samples reach the logit's edges."""
    entry = flows[name]
    kwargs = {"shape": (1, 4, 4)} if entry.input == "image" else {"features": 3}
    kwargs.update({k: v for k, v in entry.test_kwargs.items() if k not in ("scale_bound", "alpha")})
    return entry(**kwargs, context=context, **overrides)


def _unit(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return 0.05 + 0.9 * torch.rand(n, *shape, generator=generator)


@pytest.mark.parametrize("name", IMAGE_FLOWS)
@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_perturbed_image_flow_scores_its_own_float32_samples(name, scale):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    flow = _small(name)
    with torch.no_grad():
        warm_up(flow, _unit(64, flow.event_shape, gen))
        randomize_(flow, scale, generator=gen)
        x = flow.sample(2000)
        x2, log_q = flow.sample_and_log_prob(500)
        lp, lp2 = flow.log_prob(x), flow.log_prob(x2)
    lo, hi, lo_in, hi_in = _logit_edges(0.05, torch.float32)
    # the perturbed flow does push samples onto the logit's edges (before the fix, log_prob raised on them)
    assert ((x == lo_in) | (x == hi_in)).any()
    assert x.dtype == torch.float32 and bool(((x > lo) & (x < hi)).all())
    assert lp.shape == (2000,) and torch.isfinite(lp).all()
    assert torch.isfinite(lp2).all() and torch.isfinite(log_q).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
def test_logit_inverse_of_extreme_latents_is_inside_its_domain(dtype, alpha):
    logit = Logit(alpha)
    z = torch.tensor([[-40.0, 40.0, -200.0, 200.0, -1e4, 1e4, -2.0, 0.0, 3.0]], dtype=dtype)
    y, ladj_inv = logit.inverse(z)
    lo, hi, lo_in, hi_in = _logit_edges(alpha, dtype)
    assert lo == pytest.approx(-alpha / (1 - 2 * alpha)) and hi == pytest.approx((1 - alpha) / (1 - 2 * alpha))
    assert torch.equal(y[0, 4:6], torch.tensor([lo_in, hi_in], dtype=dtype))  # clamped next to the edges
    x, ladj = logit(y)  # accepted: finite latent and log-det
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all() and torch.isfinite(ladj_inv).all()
    assert torch.equal(torch.sign(x), torch.sign(z))
    # the inverse's log-det is the exact one at z: log(hi - lo) + log sigmoid(z) + log sigmoid(-z) per entry
    z64 = z.double()
    exact = (math.log(hi - lo) + torch.nn.functional.logsigmoid(z64) + torch.nn.functional.logsigmoid(-z64)).sum()
    # 9 terms of magnitude <= 2e4 (two log-sigmoids each), each rounded and summed: error <= 2 * 9 eps * 2e4
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ladj_inv.double(), exact.reshape(1), rtol=2 * 9 * eps, atol=2 * 9 * eps * 2e4)
    # where nothing saturates (|z| <= 3), forward(inverse(z)) = z: a few eps of rounding in y, amplified by the
    # logit's condition number |y| dx/dy <= 1 + e^|z|
    torch.testing.assert_close(x[0, 6:], z[0, 6:], rtol=4 * eps, atol=4 * eps * (1 + math.exp(3.0)))
    # the edges themselves (and beyond) are rejected
    for bad in (lo, hi, hi + 1.0):
        with pytest.raises(ValueError, match="needs inputs in"):
            logit(torch.tensor([[bad]], dtype=dtype))


def test_logit_forward_is_exact_next_to_the_edges():
    # float32, alpha = 0.05: alpha + 0.9 y cancels to 0 one step inside the edge; y - lo is exact there
    lo, hi, lo_in, hi_in = _logit_edges(0.05, torch.float32)
    y = torch.tensor([[lo_in, hi_in]], dtype=torch.float32)
    x, _ = Logit(0.05)(y)
    expected = torch.tensor([math.log(lo_in - lo) - math.log(hi - lo_in), math.log(hi_in - lo) - math.log(hi - hi_in)])
    # y - lo and hi - y are exact, so only two logs and a subtraction round (|x| ~ 17): 4 eps relative
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(x[0], expected, rtol=4 * eps, atol=4 * eps * expected.abs().max().item())


@pytest.mark.parametrize("name", ["RealNVP", *IMAGE_FLOWS])
def test_sample_count_must_be_a_non_negative_int(name):
    flow = _small(name)
    for method in (flow.sample, flow.rsample, flow.sample_and_log_prob):
        with pytest.raises(ValueError, match=r"n \(the number of samples\) must be >= 0, got -1"):
            method(-1)
        with pytest.raises(TypeError, match=r"n \(the number of samples\) must be an int, got float 2.5"):
            method(2.5)
        with pytest.raises(TypeError, match="bool"):
            method(True)
    assert flow.sample(torch.tensor(2)).shape == (2, *flow.event_shape)  # integer scalars are counts


@pytest.mark.parametrize("context", [0, 3])
@pytest.mark.parametrize("name", ["RealNVP", *IMAGE_FLOWS])
def test_empty_batches_give_empty_results(name, context):
    gen = torch.Generator().manual_seed(1)
    flow = _small(name, context)
    event = flow.event_shape
    x = _unit(8, event, gen) if flows[name].input == "image" else torch.randn(8, *event, generator=gen)
    c = torch.randn(8, context, generator=gen) if context else None
    with torch.no_grad():
        warm_up(flow, x, c)  # ActNorm initialised by a real batch
        before = flow.log_prob(x, c)
        c0 = torch.zeros(0, context) if context else None
        lp = flow.log_prob(x[:0], c0)
        assert lp.shape == (0,) and lp.dtype == x.dtype
        lead = (0, 2) if context else (0,)
        c2 = c[:2] if context else None
        assert flow.sample(0, c2).shape == (*lead, *event)
        assert flow.rsample(0, c2).shape == (*lead, *event)
        s, lq = flow.sample_and_log_prob(0, c2)
        assert s.shape == (*lead, *event) and lq.shape == lead
        if context:  # n samples for each of 0 context rows
            assert flow.sample(3, c0).shape == (3, 0, *event)
        # the empty calls changed no state: the same computation on the same inputs gives the same bits
        assert torch.equal(flow.log_prob(x, c), before)


def test_squeeze_of_an_empty_batch_has_the_squeezed_shape():
    x = torch.zeros(0, 3, 4, 6)
    z, ladj = Squeeze()(x)
    assert z.shape == (0, 12, 2, 3) and ladj.shape == (0,)
    assert Squeeze().inverse(z)[0].shape == x.shape and Unsqueeze()(z)[0].shape == x.shape
