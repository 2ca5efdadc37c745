"""Base distributions: a generic contract over every entry of `BASES`, then what only the learned bases have.

The contract builds each registered base on 2-D events with its ``test_kwargs``, randomises its parameters (a
freshly initialised base is often N(0, I) and would hide mistakes), and checks that ``log_prob`` integrates to one
(2-D midpoint quadrature), that samples have the moments ``log_prob`` implies, shapes, dtypes, gradients, state
round trips and float32 against float64.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import exactflow
from exactflow.bases import ConditionalGaussianMixture, GaussianMixture, ResampledBase
from exactflow.flows import describe, rebuild, set_base
from exactflow.registry import BASES

NAMES = sorted(BASES)
EPS32 = torch.finfo(torch.float32).eps


def _randomise(base: torch.nn.Module) -> torch.nn.Module:
    """Moves every parameter away from its initial value (seeded), keeping scales within about [0.2, 1.7]
    (context networks get smaller moves: their outputs sum many of them)."""
    with torch.no_grad():
        for name, p in base.named_parameters():
            if isinstance(base, ResampledBase):
                p.copy_(1.5 * torch.randn_like(p))
            elif name.startswith("net."):
                p.add_(0.25 * torch.randn_like(p))
            elif "log_scale" in name:
                p.add_(0.3 * torch.randn_like(p).clamp(-2, 2))
            else:
                p.add_(0.5 * torch.randn_like(p))
        if isinstance(base, ResampledBase):
            base.net[-1].bias.fill_(-1.0)  # accepts well under half of its proposals: a far from constant
            base.calibrate(200_000)
    return base


def _make(name: str, event_shape: tuple[int, ...] = (2,), dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(1)
    base = BASES[name](event_shape, **BASES[name].test_kwargs).to(dtype)
    return _randomise(base).eval()


def _context(base: torch.nn.Module, rows: int) -> torch.Tensor | None:
    features = getattr(base, "context_features", 0)
    if not features:
        return None
    torch.manual_seed(2)
    return torch.randn(1, features, dtype=base._ref.dtype).expand(rows, features)


def _grid(half_width: float, m: int) -> tuple[torch.Tensor, float]:
    """Midpoints of an ``m x m`` grid on [-L, L]^2 and the cell area."""
    h = 2 * half_width / m
    g = -half_width + h * (torch.arange(m, dtype=torch.float64) + 0.5)
    x, y = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], -1), h * h


@torch.no_grad()
def _quadrature(base: torch.nn.Module, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and their masses p(z) h^2 on [-12, 12]^2 (every test base has scales <= 1.7 and means within 3 of
    0, so the mass outside is below the N(0, 1) tail beyond 5.3, about 1e-7)."""
    points, area = _grid(12.0, m)
    return points, base.log_prob(points, _context(base, points.shape[0])).exp() * area


def _z_term(base: torch.nn.Module) -> float:
    """How far an exact density's integral may differ from 1 because of ResampledBase's estimated Z: the integral
    is alpha + (1 - alpha) Z_true / Z, so 5 standard errors of Z give (1 - alpha) 5 se / Z."""
    if not isinstance(base, ResampledBase):
        return 0.0
    z, se = base.normalizer.item(), base.normalizer_stderr.item()
    return (1 - (1 - z) ** (base.truncation - 1)) * 5 * se / z


# ---------------------------------------------------------------- the contract, over every registered base


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_integrates_to_one(name):
    """Midpoint rule at h and h/2 on the 2-D box: for an O(h^2) rule the error of the finer one is about a third
    of their difference (analytic Gaussian integrands converge exponentially fast, so the difference is then at
    round-off), plus the tail outside the box (1e-6) and the effect of an estimated Z."""
    base = _make(name)
    coarse, fine = _quadrature(base, 240)[1].sum().item(), _quadrature(base, 480)[1].sum().item()
    assert abs(fine - 1) <= abs(coarse - fine) + 1e-6 + _z_term(base), (name, coarse, fine)


@pytest.mark.parametrize("name", NAMES)
def test_samples_have_the_moments_of_log_prob(name):
    """First and second moments of 20000 samples against those of the (quadrature-normalised) density, within 5
    standard errors of the sample means (the quadrature's error is orders of magnitude smaller)."""
    base = _make(name)
    points, mass = _quadrature(base, 480)
    mass = mass / mass.sum()
    n = 20_000
    torch.manual_seed(3)
    z = base.rsample(n, _context(base, n)).detach()
    for f in (lambda v: v[:, 0], lambda v: v[:, 1], lambda v: v[:, 0] ** 2, lambda v: v[:, 1] ** 2,
              lambda v: v[:, 0] * v[:, 1]):
        expected = (f(points) * mass).sum()
        values = f(z)
        se = values.std() / math.sqrt(n)
        assert abs(values.mean() - expected) <= 5 * se, (name, values.mean().item(), expected.item(), se.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("event_shape", [(2,), (2, 3)])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_dtypes(name, event_shape, dtype):
    base = _make(name, event_shape, dtype)
    ctx = _context(base, 5)
    z = base.rsample(5, ctx)
    assert z.shape == (5, *event_shape) and z.dtype == dtype
    lp = base.log_prob(z, ctx)
    assert lp.shape == (5,) and lp.dtype == dtype and torch.isfinite(lp).all()
    assert base.rsample(0, _context(base, 0)).shape == (0, *event_shape)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name):
    """The same parameters and points (rounded to float32 once) scored in both precisions. Each log-density is a
    short chain (a few dozen roundings of relative size eps32: squared distances, an MLP of width <= 8, a
    logsumexp over <= 3 terms), whose intermediates are at most about 1 + |log p| + |z|^2 in size."""
    base32 = _make(name, dtype=torch.float32)
    base64 = copy.deepcopy(base32).double()
    z = base32.rsample(64, _context(base32, 64)).detach()
    lp32 = base32.log_prob(z, _context(base32, 64))
    lp64 = base64.log_prob(z.double(), _context(base64, 64))
    tol = 64 * EPS32 * (1 + lp64.abs() + z.double().square().sum(-1))
    assert ((lp32.double() - lp64).abs() <= tol).all(), (name, (lp32.double() - lp64).abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    base = _make(name).train()
    z = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    logp = base.log_prob(z, _context(base, 16)).sum()
    if not logp.requires_grad:  # a constant density (CircularUniform): nothing to differentiate
        assert not list(base.parameters())
        return
    logp.backward()
    assert torch.isfinite(z.grad).all()
    for pname, p in base.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), (name, pname)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip(name):
    """Rebuilt from its description (what checkpoints store) and loaded through torch.save: the same density."""
    base = _make(name)
    buffer = io.BytesIO()
    torch.save(base.state_dict(), buffer)
    buffer.seek(0)
    again = rebuild(describe(base)).double()
    again.load_state_dict(torch.load(buffer))
    again.eval()
    z = torch.randn(8, 2, dtype=torch.float64)
    torch.testing.assert_close(again.log_prob(z, _context(base, 8)), base.log_prob(z, _context(base, 8)),
                               rtol=0, atol=1e-12)
    assert repr(again)


@pytest.mark.parametrize("name", NAMES)
def test_preset_with_the_base_saves_and_loads(name, tmp_path):
    context = 2 if BASES[name].conditional else 0
    torch.manual_seed(4)
    flow = exactflow.build("RealNVP", features=2, context=context, depth=2, hidden=(8,), base=name)
    assert type(flow.base).__name__ == name
    _randomise(flow.base)
    flow.eval()
    path = exactflow.save(tmp_path / "flow.safetensors", flow)
    loaded = exactflow.load(path)
    assert type(loaded.base).__name__ == name
    x = torch.randn(6, 2)
    c = torch.randn(6, context) if context else None
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- Gaussian mixtures


def test_mixture_log_prob_equals_torch_mixture():
    base = _make("GaussianMixture", (2, 3))
    z = torch.randn(7, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(base.log_prob(z), base.as_torch().log_prob(z))
    cond = _make("ConditionalGaussianMixture")
    c = torch.randn(7, 2, dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(cond.log_prob(x, c), cond.as_torch(c).log_prob(x))
    assert cond.as_torch(c[0]).batch_shape == ()


def test_mixture_rsample_reparameterises_means_and_scales_not_weights():
    base = GaussianMixture(2, components=3)
    base.rsample(10).sum().backward()
    assert base.loc.grad.abs().sum() > 0 and base.log_scale.grad.abs().sum() > 0
    assert base.logits.grad is None


def test_mixture_initialisation_is_spread_and_fixed_when_not_trainable():
    torch.manual_seed(0)
    base = GaussianMixture(2, components=8, trainable=False)
    assert not list(base.parameters()) and {"logits", "loc", "log_scale"} <= set(base.state_dict())
    assert torch.cdist(base.loc, base.loc).max() > 1  # distinct components
    torch.testing.assert_close(base.weights, torch.full((8,), 1 / 8))


def test_conditional_mixture_starts_context_free_with_distinct_components():
    base = ConditionalGaussianMixture(2, context=3, components=4)
    z = torch.randn(5, 2)
    a, b = base.log_prob(z, torch.randn(5, 3)), base.log_prob(z, torch.randn(5, 3))
    torch.testing.assert_close(a, b)
    _, loc, _ = base._params(torch.randn(1, 3))
    assert torch.cdist(loc[0], loc[0]).max() > 0.1


def test_conditional_mixture_in_a_flow_samples_per_context_row():
    flow = exactflow.build("RealNVP", features=2, context=3, depth=2, hidden=(8,), base="ConditionalGaussianMixture")
    c = torch.randn(4, 3)
    assert flow.sample(5, c).shape == (5, 4, 2) and flow.sample(5, c[0]).shape == (5, 2)
    x, log_q = flow.sample_and_log_prob(5, c)
    torch.testing.assert_close(log_q, flow.log_prob(x.reshape(20, 2), c.repeat(5, 1)).reshape(5, 4),
                               rtol=1e-4, atol=1e-4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="components"):
        GaussianMixture(2, components=0)
    with pytest.raises(ValueError, match="scale"):
        GaussianMixture(2, scale=1.5)
    with pytest.raises(ValueError, match="event_shape"):
        GaussianMixture((2, 0))
    with pytest.raises(ValueError, match="context"):
        ConditionalGaussianMixture(2, context=0)
    with pytest.raises(ValueError, match="truncation"):
        ResampledBase(2, truncation=0)
    with pytest.raises(ValueError, match="momentum"):
        ResampledBase(2, momentum=0.0)
    with pytest.raises(ValueError, match="z has shape"):
        GaussianMixture(2).log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="z has shape"):
        ResampledBase(2).log_prob(torch.randn(4))
    cond = ConditionalGaussianMixture(2, context=3)
    with pytest.raises(ValueError, match="got None"):
        cond.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"expected \(4, 3\)"):
        cond.log_prob(torch.randn(4, 2), torch.randn(5, 3))
    with pytest.raises(TypeError, match="int"):
        GaussianMixture(2).rsample(2.5)
    with pytest.raises(ValueError, match=">= 0"):
        ResampledBase(2).rsample(-1)
    flow = exactflow.build("RealNVP", features=2, depth=2, hidden=(8,))
    with pytest.raises(ValueError, match="unknown base distribution 'Gaussian'"):
        set_base(flow, "Gaussian")
    with pytest.raises(ValueError, match="conditional but the flow is unconditional"):
        set_base(flow, "ConditionalGaussianMixture")
    with pytest.raises(ValueError, match="event shape"):
        set_base(flow, GaussianMixture(3))
    with pytest.raises(ValueError, match="context"):
        set_base(exactflow.build("RealNVP", features=2, context=2, depth=2), ConditionalGaussianMixture(2, 3))
    with pytest.raises(ValueError, match="torch.distributions"):
        exactflow.build("RealNVP", features=2, depth=2, base="ResampledBase").as_torch_distribution()


# ---------------------------------------------------------------- the resampled base


def _lars(truncation: int) -> ResampledBase:
    torch.manual_seed(5)
    base = ResampledBase(2, hidden=(8,), truncation=truncation).double()
    return _randomise(base).eval()


def test_resampled_base_starts_as_the_proposal():
    base = ResampledBase(2, hidden=(8,)).double().eval()
    z = torch.randn(6, 2, dtype=torch.float64)
    torch.testing.assert_close(base.log_prob(z), exactflow.StandardNormal(2).double().log_prob(z))
    assert base.normalizer.item() == 0.5


def test_resampled_density_is_the_truncated_sampler():
    """The sample mean of a strongly resampled base with T = 3 matches the truncated density's, and is more than 5
    standard errors from that of the untruncated one (pi a / Z), so the test can tell truncation apart."""
    base = _lars(3)
    points, mass = _quadrature(base, 240)
    with torch.no_grad():
        untruncated = (points.square().sum(-1).mul(-0.5).exp() * base.log_acceptance(points).exp())
    untruncated = untruncated / untruncated.sum()
    mass = mass / mass.sum()
    n = 20_000
    z = base.rsample(n)
    se = z.std(0) / math.sqrt(n)
    assert ((z.mean(0) - (points * mass[:, None]).sum(0)).abs() <= 5 * se).all()
    assert ((z.mean(0) - (points * untruncated[:, None]).sum(0)).abs() > 5 * se).any()


def _integral_of_a(base: ResampledBase) -> float:
    """Z = E_pi[a] by the midpoint rule on [-12, 12]^2 (an analytic integrand: exact to round-off at this grid)."""
    points, area = _grid(12.0, 480)
    with torch.no_grad():
        values = points.square().sum(-1).mul(-0.5).exp() / (2 * math.pi) * base.log_acceptance(points).exp()
    return values.sum().item() * area


def test_calibrate_agrees_with_quadrature_within_its_standard_error():
    """Both sizes within 5 standard errors of the quadrature; the randomised quasi-Monte Carlo error bar is far
    below plain Monte Carlo's std(a) / sqrt(n) with as many points (the docstring states 100 to 200 times in 2-D;
    10 times is asserted), and the estimate is a fixed function of the weights."""
    base = _lars(100)
    exact = _integral_of_a(base)
    z1, se1 = base.calibrate(4_096)
    z2, se2 = base.calibrate(65_536)
    assert abs(z1 - exact) <= 5 * se1 and abs(z2 - exact) <= 5 * se2, (z1, z2, exact, se1, se2)
    assert se2 < se1
    with torch.no_grad():
        a = base.log_acceptance(torch.randn(65_536, 2, dtype=torch.float64)).exp()
    assert 10 * se2 < a.std() / math.sqrt(65_536)
    assert base.calibrate(65_536) == (z2, se2)


def _sgd_step(base: ResampledBase) -> None:
    """One maximum-likelihood step (training mode) on data off the origin, large enough to move Z a lot."""
    opt = torch.optim.SGD(base.parameters(), lr=2.0)
    base.train()
    (-base.log_prob(torch.randn(256, 2, dtype=torch.float64) + 1.5).mean()).backward()
    opt.step()
    base.eval()


def _data_write(base: ResampledBase) -> None:
    for p in base.net.parameters():
        p.data.add_(0.5 * torch.randn_like(p))


def _load_other(base: ResampledBase) -> None:
    """Other weights, with the copy of weights of ``base`` and a Z of neither: a stale pair, as from a hand-edited
    state dict; the copy no longer matches the loaded weights, so Z is estimated again."""
    torch.manual_seed(7)
    state = _randomise(ResampledBase(2, hidden=(8,), truncation=10).double()).state_dict()
    state["normalizer_weights"] = base.normalizer_weights.clone()
    state["normalizer"] = base.normalizer.clone()
    base.load_state_dict(state)


@pytest.mark.parametrize("change", [_sgd_step, _data_write, _load_other], ids=["sgd", "data", "load_state_dict"])
def test_eval_log_prob_follows_the_weights(change):
    """After the weights change by any route, eval-mode log_prob integrates to 1 (the stored Z of the old weights
    would not: checked) and equals that of a freshly built base given the same weights."""
    base = _lars(10)
    stale = base.normalizer.item()
    torch.manual_seed(8)
    change(base)
    assert not base.normalizer_is_current()
    exact = _integral_of_a(base)
    coarse, fine = _quadrature(base, 240)[1].sum().item(), _quadrature(base, 480)[1].sum().item()
    assert base.normalizer_is_current()
    tol = abs(coarse - fine) + 1e-6 + _z_term(base)
    assert abs(fine - 1) <= tol, (coarse, fine)
    alpha = (1 - stale) ** 9
    assert abs(alpha + (1 - alpha) * exact / stale - 1) > 100 * tol  # what the old Z would integrate to
    fresh = ResampledBase(2, hidden=(8,), truncation=10).double().eval()
    with torch.no_grad():
        for p, q in zip(fresh.parameters(), base.parameters(), strict=True):
            p.copy_(q)
    z = torch.randn(16, 2, dtype=torch.float64)
    assert torch.equal(fresh.log_prob(z), base.log_prob(z))


def test_load_state_dict_keeps_a_matching_normaliser():
    """A state dict carries Z with the weights it belongs to: loading it reuses that Z (here a larger estimate's)."""
    base = _lars(10)
    z_big, _ = base.calibrate(2**17)
    again = ResampledBase(2, hidden=(8,), truncation=10).double().eval()
    again.load_state_dict(base.state_dict())
    z = torch.randn(8, 2, dtype=torch.float64)
    assert torch.equal(again.log_prob(z), base.log_prob(z)) and again.normalizer.item() == z_big.item()


def test_estimate_under_no_grad_inference_mode_and_dtype_moves():
    base = _lars(10)
    _data_write(base)
    z = torch.randn(8, 2, dtype=torch.float64)
    with torch.inference_mode():
        base.log_prob(z)
    assert base.normalizer_is_current() and not base.normalizer.is_inference()
    base.load_state_dict(_lars(10).state_dict())  # buffers written under inference_mode stay writable
    _data_write(base)
    with torch.no_grad():
        lp = base.log_prob(z)
    assert base.normalizer_is_current()
    single = copy.deepcopy(base).float()  # weights and their copy round alike: Z is kept
    assert single.normalizer_is_current() and copy.deepcopy(single).double().normalizer_is_current()
    tol = 64 * EPS32 * (1 + lp.abs() + z.square().sum(-1))
    assert ((single.log_prob(z.float()).double() - lp).abs() <= tol).all()


def test_state_dict_without_the_copy_of_weights_still_loads():
    """A state saved before ``normalizer_weights`` existed loads; Z is then estimated for the loaded weights."""
    base = _lars(10)
    _data_write(base)
    state = {k: v for k, v in base.state_dict().items() if k not in ("normalizer_weights", "running_normalizer")}
    again = ResampledBase(2, hidden=(8,), truncation=10).double().eval()
    again.load_state_dict(state)
    assert not again.normalizer_is_current()
    z = torch.randn(8, 2, dtype=torch.float64)
    assert torch.equal(again.log_prob(z), base.log_prob(z))


def test_training_updates_the_running_normaliser_and_eval_is_deterministic():
    base = _lars(10)
    before, stored = base.running_normalizer.clone(), base.normalizer.clone()
    z = torch.randn(32, 2, dtype=torch.float64)
    base.train()
    base.log_prob(z)
    assert base.running_normalizer != before and base.normalizer == stored
    base.eval()
    torch.testing.assert_close(base.log_prob(z), base.log_prob(z), rtol=0, atol=0)


def test_bad_calibration_sizes_are_named():
    with pytest.raises(ValueError, match="normalizer_samples"):
        ResampledBase(2, normalizer_samples=8)
    with pytest.raises(ValueError, match="calibrate's n"):
        ResampledBase(2).calibrate(10)
    with pytest.raises(ValueError, match="chunk"):
        ResampledBase(2).calibrate(64, chunk=0)


def test_log_prob_dz_is_the_derivative_in_z():
    base = _lars(10)
    z = torch.randn(5, 2, dtype=torch.float64)
    step = 1e-6
    with torch.no_grad():
        up = base.normalizer.item() + step
        low = base.normalizer.item() - step
        base.normalizer.fill_(up)
        lp_up = base.log_prob(z)
        base.normalizer.fill_(low)
        lp_low = base.log_prob(z)
        base.normalizer.fill_((up + low) / 2)
    torch.testing.assert_close(base.log_prob_dz(z), (lp_up - lp_low) / (2 * step), rtol=1e-6, atol=1e-8)


def test_truncation_one_is_the_proposal():
    base = _lars(1)
    z = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(base.log_prob(z), exactflow.StandardNormal(2).double().log_prob(z))
    assert (base.log_prob_dz(z) == 0).all()


def test_resampled_samples_carry_no_gradient():
    base = ResampledBase(2, hidden=(8,))
    assert not base.rsample(4).requires_grad
