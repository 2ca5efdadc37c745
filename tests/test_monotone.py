"""NAF, UNAF and SOS beyond the generic contract: monotonicity, the inverse's stated accuracy, the DSF log-det far
out, the quadratures against numerical integration, no backend route, checkpoints and bad arguments."""

import pytest
import torch

import exactflow
from exactflow import backend
from exactflow.flows import registry as flows
from exactflow.testing import randomize_
from exactflow.transforms.monotone import (
    DSF,
    UMNN,
    NAFAutoregressive,
    SOSAutoregressive,
    SOSPolynomial,
    UNAFAutoregressive,
)

F64 = torch.float64


def kernels():
    return {
        "DSF": DSF(components=5),
        "UMNN": UMNN(embed=3, hidden=(16,), nodes=17, bound=3.0).double(),
        "SOS": SOSPolynomial(squares=2, degree=2),
    }


def params(kernel, shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, kernel.n_params, generator=g, dtype=F64)


@pytest.mark.parametrize("name", ["DSF", "UMNN", "SOS"])
def test_kernels_are_strictly_increasing_with_the_slope_they_report(name):
    kernel = kernels()[name]
    x = torch.linspace(-12, 12, 4001, dtype=F64)  # beyond UMNN's grid too
    for seed in range(4):
        p = params(kernel, (1,), seed=seed).expand(len(x), -1)
        y, logd = kernel.forward(x, p)
        assert torch.isfinite(y).all() and torch.isfinite(logd).all()
        assert (y.diff() > 0).all(), f"{name} is not increasing (seed {seed})"
        # the reported slope is the map's: a central difference of y agrees with exp(logd) at the midpoints
        mid_slope = kernel.forward(0.5 * (x[1:] + x[:-1]), p[1:])[1].exp()
        assert torch.allclose(y.diff() / x.diff(), mid_slope, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("name", ["DSF", "UMNN", "SOS"])
@pytest.mark.parametrize("iters", [12, 30])
def test_bisection_meets_its_stated_accuracy(name, iters):
    """|x - x*| <= (hi - lo) 2^-iters on the kernel's own bracket, which always contains the root."""
    kernel = kernels()[name]
    kernel.iters = iters
    x_true = torch.cat([torch.randn(300, dtype=F64) * 3, torch.tensor([-40.0, -8.0, 8.0, 40.0], dtype=F64)])
    p = params(kernel, x_true.shape, scale=1.5, seed=1)
    coeffs = kernel.coefficients(p)
    z = kernel.evaluate(x_true, coeffs)[0]
    lo, hi = kernel.bracket(z, coeffs)
    assert ((lo <= x_true) & (x_true <= hi)).all(), "the bracket misses a root"
    x, ladj = kernel.inverse(z, p)
    resolution = 4 * torch.finfo(F64).eps * (1 + x_true.abs())
    assert ((x - x_true).abs() <= (hi - lo) * 2.0**-iters + resolution).all()
    assert torch.allclose(ladj, -kernel.evaluate(x, coeffs)[1])


def test_dsf_log_det_is_stable_far_out():
    dsf = DSF(components=6)
    x = torch.tensor([-1e4, -1e3, -100.0, -30.0, 30.0, 100.0, 1e3, 1e4], dtype=F64, requires_grad=True)
    p = params(dsf, x.shape, scale=2.0, seed=3)
    y, logd = dsf.forward(x, p)
    assert torch.isfinite(y).all() and torch.isfinite(logd).all()
    (slope,) = torch.autograd.grad(y.sum(), x)  # exact derivative of the (stable) map
    assert torch.allclose(logd, slope.log(), rtol=1e-10, atol=1e-10)
    # 0 < dy/dx <= max_j a_j everywhere (Jensen: sum_j w_j s_j (1 - s_j) <= S (1 - S))
    a = dsf.coefficients(p)[0].exp()
    assert torch.all(slope > 0) and torch.all(slope <= a.amax(-1) * (1 + 1e-9))
    y32, logd32 = dsf.forward(x.detach().float(), p.float())
    assert torch.isfinite(y32).all() and torch.isfinite(logd32).all()
    # float32 rounds u = a x + b at 6e-8 |u|; each log-sigmoid term carries that error into the log-det
    tol = 8 * torch.finfo(torch.float32).eps * (1 + x.detach().abs() * a.amax(-1))
    assert ((logd32.double() - logd).abs() <= tol).all()
    assert torch.allclose(dsf.inverse(y.detach(), p)[0], x.detach(), rtol=1e-12)


def test_umnn_map_is_the_exact_integral_of_its_interpolant_and_approximates_the_network():
    umnn = UMNN(embed=2, hidden=(16,), nodes=401, bound=3.0).double()
    p = params(umnn, (3,), seed=4)
    x = torch.tensor([-2.5, 0.7, 2.9], dtype=F64)
    y, logd = umnn.forward(x, p)
    for i in range(3):  # int_0^x f by a fine trapezoid rule: the grid's O(dt^2) error, dt = 0.015
        t = torch.linspace(0, x[i].item(), 20001, dtype=F64)
        f = umnn.integrand(t, p[i, :-1])
        assert torch.allclose(y[i] - p[i, -1], torch.trapezoid(f, t), rtol=1e-3)
        assert torch.allclose(logd[i], umnn.integrand(x[i : i + 1], p[i, :-1]).log()[0], rtol=1e-3)


def test_sos_closed_form_matches_the_integral_of_the_sum_of_squares():
    sos = SOSPolynomial(squares=3, degree=2, eps=0.01)
    p = params(sos, (4,), seed=5)
    x = torch.tensor([-2.0, -0.3, 0.8, 2.5], dtype=F64)
    y, logd = sos.forward(x, p)
    a = p[:, :-1].reshape(4, 3, 3).clone()
    a[..., 0] += (0.99 / 3) ** 0.5
    for i in range(4):
        t = torch.linspace(0, x[i].item(), 20001, dtype=F64)
        q = 0.01 + ((a[i][:, :, None] * t ** torch.arange(3, dtype=F64)[:, None]).sum(1) ** 2).sum(0)
        assert torch.allclose(y[i] - p[i, -1], torch.trapezoid(q, t), rtol=1e-6)
        assert torch.allclose(logd[i], q[-1].log())


def test_zero_parameters_give_the_identity():
    x = torch.linspace(-7, 7, 15, dtype=F64)
    for kernel in (DSF(4), SOSPolynomial(2, 3), UMNN(embed=2, hidden=(4,), zero_last=True).double()):
        y, logd = kernel.forward(x, torch.zeros(len(x), kernel.n_params, dtype=F64))
        assert torch.allclose(y, x) and torch.allclose(logd, torch.zeros_like(x), atol=1e-12)


def test_sos_preset_starts_as_the_identity_so_raw_data_far_out_stays_finite():
    """Default SOS layers start as the identity: log p(x) is the base's even at |x| = 6, where random degree-5
    layers overflow float32 (the preset's depth 3 multiplies the degrees to 125)."""
    flow = exactflow.build("SOS", features=2)
    x = torch.tensor([[6.0, -6.0], [0.5, 4.0]])
    base = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(flow.log_prob(x), base, rtol=1e-5)


@pytest.mark.parametrize("cls", [NAFAutoregressive, UNAFAutoregressive, SOSAutoregressive])
def test_the_backend_has_no_route_for_these_layers(cls):
    layer = cls(3, hidden=(8, 8))  # the default ReLU MADE: only the MADE's own fast path may run
    x = torch.randn(6, 3)
    assert backend.run(layer, "forward", x, None) is None
    assert backend.run(layer, "inverse", x, None) is None


@pytest.mark.parametrize("name", ["NAF", "UNAF", "SOS"])
def test_presets_build_save_and_load(name, tmp_path):
    kwargs = {"NAF": {"components": 3}, "UNAF": {"embed": 2, "integrand": (4,), "nodes": 5},
              "SOS": {"squares": 2, "degree": 1}}[name]
    flow = randomize_(exactflow.build(name, features=2, context=1, depth=2, hidden=(8,), **kwargs), 0.1)
    assert type(flow) is type(flows[name](features=2))
    x, c = torch.randn(4, 2), torch.randn(4, 1)
    path = exactflow.save(tmp_path / "flow", flow)
    loaded = exactflow.load(path)
    assert torch.equal(loaded.log_prob(x, c), flow.eval().log_prob(x, c))


@pytest.mark.parametrize("make", [lambda: DSF(0), lambda: SOSPolynomial(degree=-1), lambda: SOSPolynomial(eps=0.0),
                                  lambda: UMNN(nodes=1), lambda: UMNN(hidden=()), lambda: UMNN(bound=0.0),
                                  lambda: DSF(iters=0)])
def test_bad_arguments_are_refused(make):
    with pytest.raises(ValueError):
        make()
