"""Residual flows: what the generic contract cannot see (the Lipschitz bound, the inverse's stated accuracy, the
log-det policy, the estimator's unbiasedness, and the issue's done-criterion on a trained 2-D model)."""

import math

import pytest
import torch

import exactflow
from exactflow import checkpoint
from exactflow.data.toy import two_moons
from exactflow.flows import ResidualFlow
from exactflow.flows import registry as flows
from exactflow.testing import randomize_
from exactflow.transforms import registry as transforms
from exactflow.transforms.normalization import ActNorm
from exactflow.transforms.residual import (
    EXACT_MAX_FEATURES,
    INVERSE_TOL,
    LipschitzMLP,
    ResidualBlock,
    log_prob_estimate,
    logdet_mode,
)


def _spectral_norms(mlp: LipschitzMLP) -> list[float]:
    return [torch.linalg.matrix_norm(w.detach().double(), ord=2).item() for w in mlp.weights()]


def _strong_block(features: int = 4, context: int = 0, **kwargs) -> ResidualBlock:
    """A block whose raw weights are far above the bound, so every layer sits on it (the slowest inverse)."""
    block = ResidualBlock(features, context, hidden=(16, 16), **kwargs).double()
    randomize_(block, 2.0)
    return block


def test_the_lipschitz_bound_holds_for_the_weights_used_in_every_mode_and_after_loading():
    block = _strong_block(lipschitz=0.9)
    for mode in (block.train, block.eval):
        mode()
        assert all(s <= 0.9 * (1 + 1e-12) for s in _spectral_norms(block.net))
    other = ResidualBlock(4, hidden=(16, 16), lipschitz=0.9).double()
    other.load_state_dict(block.state_dict())
    assert all(s <= 0.9 * (1 + 1e-12) for s in _spectral_norms(other.net))
    with torch.no_grad():
        for p in other.parameters():
            p.data.mul_(10.0)  # a user's .data write: the next call sees it, still within the bound
    assert all(s <= 0.9 * (1 + 1e-12) for s in _spectral_norms(other.net))
    # the Jacobian's spectral norm at random points stays below the bound of g (0.9^3)
    x = torch.randn(64, 4, dtype=torch.float64)
    weights = other.net.weights()
    jac = other.net.jacobian(weights, other.net.evaluate(x, None, weights)[1])
    assert torch.linalg.matrix_norm(jac, ord=2).max() <= other.net.bound * (1 + 1e-12)
    assert not list(other.buffers())  # no power-iteration state that could go stale


def test_the_chain_rule_jacobian_and_vjp_equal_autograd():
    block = _strong_block(3, context=2)
    x, c = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    weights = block.net.weights()
    slopes = block.net.evaluate(x, c, weights)[1]

    def g(xi, ci):
        return block.net.evaluate(xi.unsqueeze(0), ci.unsqueeze(0), weights)[0].squeeze(0)

    want = torch.stack([torch.autograd.functional.jacobian(lambda xi, i=i: g(xi, c[i]), x[i]) for i in range(6)])
    torch.testing.assert_close(block.net.jacobian(weights, slopes), want, rtol=1e-10, atol=1e-12)
    u = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(block.net.vjp(u, weights, slopes), torch.einsum("bi,bij->bj", u, want),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_inverse_reaches_its_stated_accuracy(dtype):
    block = _strong_block(lipschitz=0.97).to(dtype).eval()
    x = 2 * torch.randn(256, 4, dtype=dtype)
    with torch.no_grad():
        z, _ = block(x)
        # the fixed point itself (before the Newton step) is within the stated bound of the true preimage
        weights = block.net.weights()
        fixed = block._fixed_point(z, None, weights)
        back, _ = block.inverse(z)
    bound = INVERSE_TOL[dtype] * (1 + z.norm(dim=-1))
    # in float32 the true preimage of the rounded z differs from x by rounding, ~1e-7 |x| / (1 - L)
    slack = 0.0 if dtype == torch.float64 else 30 * torch.finfo(dtype).eps * (1 + x.norm(dim=-1))
    assert ((fixed - x).norm(dim=-1) <= bound + slack).all()
    assert ((back - x).norm(dim=-1) <= bound + slack).all()


def test_an_inverse_that_does_not_converge_is_an_error():
    block = _strong_block(max_iter=2).eval()
    z = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="did not reach the tolerance"):
        block.inverse(z)
    with pytest.raises(ValueError, match="NaN or inf"):
        block.inverse(torch.full((2, 4), math.nan, dtype=torch.float64))


def test_bad_arguments_are_named():
    for kwargs, word in (({"lipschitz": 1.0}, "lipschitz"), ({"logdet": "fast"}, "logdet"),
                         ({"roulette_p": 0.0}, "roulette_p"), ({"exact_terms": -1}, "exact_terms"),
                         ({"tol": 0}, "tol"), ({"max_iter": 0}, "max_iter"), ({"hidden": ()}, "hidden")):
        with pytest.raises(ValueError, match=word):
            ResidualBlock(2, **kwargs)
    with pytest.raises(ValueError, match="draws"):
        log_prob_estimate(ResidualFlow(2, depth=1, hidden=(4,)), torch.randn(3, 2), draws=1)


def test_the_log_det_policy():
    """auto: exact in eval mode, and in training mode up to EXACT_MAX_FEATURES features; the estimate above.
    The estimate is selectable explicitly, and logdet_mode restores every block's setting."""
    small, large = ResidualBlock(2, hidden=(8,)), ResidualBlock(EXACT_MAX_FEATURES + 1, hidden=(8,))
    assert not small.train().uses_estimate() and not small.eval().uses_estimate()
    assert large.train().uses_estimate() and not large.eval().uses_estimate()
    flow = ResidualFlow(3, depth=2, hidden=(8,)).eval()
    x = torch.randn(5, 3)
    exact = flow.log_prob(x)
    torch.testing.assert_close(flow.log_prob(x), exact, rtol=0, atol=0)  # deterministic
    with logdet_mode(flow, "estimate"):
        assert not torch.allclose(flow.log_prob(x), exact)
    torch.testing.assert_close(flow.log_prob(x), exact, rtol=0, atol=0)
    forced = ResidualFlow(3, depth=2, hidden=(8,), logdet="estimate")
    assert all(b.uses_estimate() for b in forced.modules() if isinstance(b, ResidualBlock))
    assert transforms["ResidualBlock"].estimator and flows["ResidualFlow"].estimator
    assert not transforms["MaskedAffineAutoregressive"].estimator


@pytest.mark.parametrize("roulette_p,exact_terms", [(None, 2), (0.5, 2), (0.5, 0)])
def test_the_estimator_is_unbiased(roulette_p, exact_terms):
    """Over many draws the estimated log-det's mean agrees with the exact one within 4 standard errors, row by
    row, for the default roulette, the paper's (p = 1/2) and one with no exact terms."""
    torch.manual_seed(1)
    block = ResidualBlock(3, hidden=(16,), lipschitz=0.9, roulette_p=roulette_p, exact_terms=exact_terms).double()
    randomize_(block, 1.0)
    block.eval()
    x = torch.randn(8, 3, dtype=torch.float64)
    n = 4000
    with torch.no_grad():
        exact = block(x)[1]
        block.logdet = "estimate"  # every row draws its own probe and roulette: n draws in one call
        draws = block(x.repeat(n, 1))[1].reshape(n, len(x))
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(n)
    assert (se > 0).all()
    assert ((mean - exact).abs() <= 4 * se).all(), ((mean - exact) / se).tolist()


def test_the_estimate_trains_with_finite_gradients():
    flow = ResidualFlow(3, depth=2, hidden=(8,), logdet="estimate").train()
    loss = -flow.log_prob(torch.randn(16, 3)).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


def test_the_preset_ends_with_an_actnorm_that_standardises_the_first_training_batch():
    """The blocks, then an ActNorm (data -> latent) initialised from the first training batch; its log-det is the
    exact one of the whole map, and ``actnorm=False`` leaves the blocks alone."""
    torch.manual_seed(0)
    flow = ResidualFlow(2, depth=2, hidden=(8,)).double()
    layers = flow.transform.bijections
    assert isinstance(layers[-1], ActNorm) and all(isinstance(b, ResidualBlock) for b in layers[:-1])
    x = torch.tensor([3.0, -1.0], dtype=torch.float64) + torch.tensor([2.0, 0.5], dtype=torch.float64) * torch.randn(
        512, 2, dtype=torch.float64)
    z, _ = flow.train().transform(x)
    # float64 rounding of a mean of 512 standardised values; the std is s / (s + eps) = 1 - eps / s with ActNorm's
    # eps = 1e-6 and s (the batch's std after the blocks) above 0.1 here, so within 1e-5 of 1 in absolute terms
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-5)
    flow.eval()
    pts = x[:5]
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: flow.to_latent(v[None])[0], p) for p in pts])
    base = torch.distributions.Normal(0.0, 1.0).log_prob(flow.to_latent(pts)).sum(-1)
    torch.testing.assert_close(flow.log_prob(pts), base + torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
    # the fixed-point inverse is accurate to 1e-10 (1 + |z|) per block in float64 before its Newton step
    torch.testing.assert_close(flow.from_latent(flow.to_latent(pts)), pts, rtol=0, atol=1e-8)
    bare = ResidualFlow(2, depth=2, hidden=(8,), actnorm=False)
    assert len(bare.transform.bijections) == 2 and all(isinstance(b, ResidualBlock) for b in bare.transform.bijections)
    with pytest.raises(ValueError, match="actnorm"):
        ResidualFlow(2, actnorm=1)


def test_save_and_load(tmp_path):
    flow = exactflow.build("ResidualFlow", features=2, depth=2, hidden=(8,))
    randomize_(flow, 0.2)
    path = checkpoint.save(tmp_path / "res", flow)
    again = checkpoint.load(path)
    x = torch.randn(7, 2)
    torch.testing.assert_close(again.log_prob(x), flow.eval().log_prob(x), rtol=0, atol=0)
    assert type(again.transform.bijections[0]) is ResidualBlock


def test_estimated_log_likelihood_agrees_with_exact_on_a_trained_moons_model():
    """The issue's done-criterion: on a 2-D residual flow trained on two moons, the estimated log-likelihood (a
    mean over draws, with its standard error) agrees with the exact one within a few standard errors."""
    torch.manual_seed(0)
    data = two_moons(4096, seed=0)
    flow = ResidualFlow(2, depth=8, hidden=(32,))
    opt = torch.optim.Adam(flow.parameters(), lr=3e-2)
    flow.train()
    for _step in range(300):
        batch = data[torch.randint(len(data), (128,))]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    test = two_moons(256, seed=1)
    with torch.no_grad():
        exact = flow.log_prob(test).mean().item()
    estimate, se = log_prob_estimate(flow, test, draws=32)
    mean, mean_se = estimate.mean().item(), (se.square().sum().sqrt() / len(test)).item()
    # a Gaussian fitted to the data scores -3.27 nats: well above that, the flow has learnt the moons' shape
    assert exact > -2.8, f"training did not get anywhere: exact mean log-likelihood {exact:.3f}"
    assert 0 < mean_se < 0.05
    assert abs(mean - exact) <= 3 * mean_se, (mean, exact, mean_se)
