"""Rational-quadratic spline edge cases: tails, knots, float32 sampling, the inverse's discriminant."""

import copy

import pytest
import torch

from exactflow import backend
from exactflow.flows import registry as flows
from exactflow.testing import randomize_
from exactflow.transforms.splines import RQSpline, RQSplineCoupling

BOUND = 3.0


def random_params(shape, spline, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = scale * torch.randn(*shape, spline.n_params, generator=g, dtype=torch.float64)
    return p.to(dtype).requires_grad_(True)


def finite_grads(*tensors):
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_far_out_of_range_is_identity_with_finite_gradients(direction):
    spline = RQSpline(bins=6, bound=BOUND)
    v = torch.tensor([-1e4, -50.0, -BOUND - 1e-9, 0.3, BOUND + 1e-9, 7.0, 1e4], dtype=torch.float64, requires_grad=True)
    p = random_params(v.shape, spline)
    out, logd = getattr(spline, direction)(v, p)
    outside = v.abs() > BOUND
    assert torch.isfinite(out).all() and torch.isfinite(logd).all()
    assert torch.equal(out[outside], v[outside]) and (logd[outside] == 0).all()
    (out.sum() + logd.sum()).backward()
    finite_grads(v, p)
    assert torch.equal(v.grad[outside], torch.ones(int(outside.sum()), dtype=torch.float64))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_batch_entirely_out_of_range(direction):
    spline = RQSpline(bins=4, bound=BOUND)
    v = torch.cat([torch.full((5, 2), -1e4), torch.full((5, 2), 10.0)]).requires_grad_(True)
    p = random_params(v.shape, spline, dtype=torch.float32)
    out, logd = getattr(spline, direction)(v, p)
    assert torch.equal(out, v.detach()) and (logd == 0).all()
    (out.sum() + logd.sum()).backward()
    finite_grads(v, p)
    assert (p.grad == 0).all()


def test_inputs_exactly_on_knots():
    spline = RQSpline(bins=5, bound=BOUND)
    p = random_params((4,), spline)
    xs, ys, ds = (t.detach() for t in spline.knots(p))
    x = xs.T.clone().requires_grad_(True)  # (K + 1, 4): every knot of every element, the ends included
    pk = p.detach().expand(x.shape[0], -1, -1).clone().requires_grad_(True)
    y, logd = spline.forward(x, pk)
    assert torch.allclose(y, ys.T, atol=1e-12)  # knots map to knots
    assert torch.allclose(logd, ds.T.log(), atol=1e-9)  # with the knot derivatives
    (y.sum() + logd.sum()).backward()
    finite_grads(x, pk)
    back, logd_inv = spline.inverse(ys.T.clone(), pk.detach())
    assert torch.allclose(back, xs.T, atol=1e-12) and torch.allclose(logd_inv, -ds.T.log(), atol=1e-9)
    # continuous across every knot, from either side
    for eps in (1e-9, -1e-9):
        assert torch.allclose(spline.forward(x.detach() + eps, pk.detach())[0], ys.T, atol=1e-7)


def test_zero_parameters_are_the_identity_and_the_map_is_increasing():
    spline = RQSpline(bins=8, bound=BOUND)
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    y, logd = spline.forward(x, torch.zeros(1001, spline.n_params, dtype=torch.float64))
    assert torch.allclose(y, x, atol=1e-12) and logd.abs().max() < 1e-12
    y, _ = spline.forward(x, random_params((1,), spline).detach().expand(1001, -1))
    assert (y.diff() > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_discriminant_is_never_negative_beyond_rounding(dtype):
    spline = RQSpline(bins=8, bound=BOUND, min_derivative=1e-3)
    n = 100_000
    p = random_params((n,), spline, scale=4.0, dtype=dtype).detach()
    z = BOUND * (2 * torch.rand(n, dtype=dtype) - 1)
    a, b, c = spline.quadratic(z, p)
    disc = b.square() - 4 * a * c
    scale = b.square() + (4 * a * c).abs()
    assert (disc >= -8 * torch.finfo(dtype).eps * scale).all()
    x, logd = spline.inverse(z, p)
    assert torch.isfinite(x).all() and torch.isfinite(logd).all()
    # slopes here range from 1e-3 to 1e3: where f' > 1 the rounding of x itself moves f(x) by f' ulp(x), so the
    # error is measured in units of max(1, f'). The inverse and the forward each take about 20 roundings of
    # values up to the bound (knots, the quadratic's coefficients): a few tens of eps (1 + B) at the very worst
    # (4.5 to 9.5 seen in both dtypes over seeds); 64 of them leaves room on any CPU
    err = ((spline.forward(x, p)[0] - z).abs() / torch.exp(-logd).clamp_min(1)).max().item()
    assert err < 64 * torch.finfo(dtype).eps * (1 + BOUND)


@pytest.mark.parametrize("name", ["NSF", "NSFAutoregressive"])
def test_float32_sampling_100k_points(name):
    flow = flows[name](features=2, depth=3, hidden=(16,), bins=8, bound=BOUND)
    randomize_(flow, 0.15)
    flow.eval()
    with torch.no_grad():
        z = torch.randn(100_000, 2)
        x, _ = flow.transform.inverse(z)
    assert not torch.isnan(x).any()
    assert (x - z).abs().mean() > 0.1  # far from the identity
    # the float32 samples, mapped back to the latent space in float64, land on z up to what rounding x to
    # float32 alone moves them by: |dz_i| <= sum_j |dz_i/dx_j| eps |x_j| (the Jacobian in float64 at x), plus
    # a few ulps of z and of the tails' scale for the sampler's own arithmetic; 64 ulps of each leaves margin
    flow64 = copy.deepcopy(flow).double()
    x64 = x.double().requires_grad_(True)
    z_back, _ = flow64.transform(x64)
    rows = [torch.autograd.grad(z_back[:, i].sum(), x64, retain_graph=True)[0] for i in range(2)]
    moved = torch.stack([(r.abs() * x64.abs()).sum(-1) for r in rows], -1).detach()
    eps = torch.finfo(torch.float32).eps
    assert ((z_back.detach() - z.double()).abs() <= 64 * eps * (moved + z.double().abs() + BOUND)).all()


@pytest.mark.parametrize("name", ["NSF", "NSFAutoregressive"])
def test_float32_sampling_never_gives_nan_even_for_extreme_parameters(name):
    flow = flows[name](features=2, depth=3, hidden=(16,), bins=8, bound=BOUND)
    randomize_(flow, 1.0)
    with torch.no_grad():
        samples = flow.sample(10_000)
        samples[:5] = torch.tensor([1e4, -1e4])
        lp = flow.log_prob(samples)
    assert torch.isfinite(samples).all() and torch.isfinite(lp).all()


def test_bad_spline_settings_are_named():
    with pytest.raises(ValueError, match="bins"):
        RQSpline(bins=0)
    with pytest.raises(ValueError, match="bound"):
        RQSpline(bound=-1.0)
    with pytest.raises(ValueError, match="min_width"):
        RQSpline(bins=10, min_width=0.2)
    with pytest.raises(ValueError, match="min_derivative"):
        RQSpline(min_derivative=0.0)
    with pytest.raises(ValueError, match="spline parameters"):
        RQSpline(bins=4).forward(torch.zeros(3), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="mask"):
        RQSplineCoupling(1)


def test_row_kernel_equals_the_reference_spline():
    """The backend's spline on parameter rows is the reference spline in another memory order, also on the
    knots, in the tails and for one bin."""
    for bins in (1, 4):
        spline = RQSpline(bins=bins, bound=2.0)
        p = torch.randn(200, spline.n_params, dtype=torch.float64)
        v = torch.cat([torch.linspace(-3, 3, 100, dtype=torch.float64), spline.knots(p[100:])[0][:, 1]])
        for inverse in (False, True):
            want = (spline.inverse if inverse else spline.forward)(v, p)
            got = backend.spline_rows(spline, v, p.t().contiguous(), inverse)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
