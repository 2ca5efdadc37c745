"""Circular splines and flows on the torus: what the generic contract cannot see (periodicity, the seam, the base,
normalisation on the torus, the backend leaving them alone)."""

import math

import pytest
import torch

import exactflow
from exactflow import backend
from exactflow.core import Compose
from exactflow.distributions import CircularUniform, Flow
from exactflow.flows import CircularNSF, CircularNSFAutoregressive
from exactflow.testing import randomize_
from exactflow.transforms.splines_circular import (
    CircularMADE,
    CircularRQSpline,
    CircularSplineAutoregressive,
    CircularSplineCoupling,
    wrap,
)

PI = math.pi


def _derivative(spline: CircularRQSpline, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(spline.forward(x, p)[0].sum(), x)
    return g


@pytest.mark.parametrize("rotation", [True, False])
def test_the_circular_spline_is_a_diffeomorphism_of_the_circle(rotation):
    gen = torch.Generator().manual_seed(0)
    spline = CircularRQSpline(bins=6, rotation=rotation)
    p = 1.5 * torch.randn(spline.n_params, generator=gen, dtype=torch.float64)
    grid = torch.linspace(-PI, PI, 20001, dtype=torch.float64)
    y, logd = spline.forward(grid, p.expand(len(grid), -1))
    # onto the circle once, increasing: the unwrapped image rises by exactly 2 pi
    steps = wrap(y.diff())
    assert (steps > 0).all()
    torch.testing.assert_close(steps.sum(), torch.tensor(2 * PI, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # the two ends of [-pi, pi] are the same point with the same slope: continuous derivative at the seam
    ends = torch.tensor([-PI, PI], dtype=torch.float64)
    y_ends, logd_ends = spline.forward(ends, p.expand(2, -1))
    assert abs(float(wrap(y_ends[1] - y_ends[0]))) < 1e-12
    torch.testing.assert_close(logd_ends[0], logd_ends[1], rtol=1e-12, atol=1e-12)
    eps = 1e-10  # autograd's derivative is exact: the two sides differ by O(eps f'')
    near = torch.tensor([-PI + eps, PI - eps], dtype=torch.float64)
    slopes = _derivative(spline, near, p.expand(2, -1))
    torch.testing.assert_close(slopes[0], slopes[1], rtol=1e-5, atol=1e-12)  # a jump would be O(1)
    # periodic in the input
    x = torch.rand(50, generator=gen, dtype=torch.float64) * 2 * PI - PI
    for k in (-2, 1, 3):
        torch.testing.assert_close(spline.forward(x + 2 * PI * k, p.expand(50, -1))[0],
                                   spline.forward(x, p.expand(50, -1))[0], rtol=0, atol=1e-12)
    # the rotation moves -pi when asked for
    if rotation:
        assert abs(float(wrap(y_ends[0] + PI))) > 1e-3


def test_the_circular_spline_starts_as_the_identity_and_refuses_wrong_parameters():
    spline = CircularRQSpline(bins=4)
    x = torch.linspace(-PI, PI - 1e-3, 11, dtype=torch.float64)
    z, logd = spline.forward(x, torch.zeros(11, spline.n_params, dtype=torch.float64))
    torch.testing.assert_close(z, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logd, torch.zeros_like(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="expected 13"):
        spline.forward(x, torch.zeros(11, 12, dtype=torch.float64))


def _layers():
    torch.manual_seed(0)
    coupling = randomize_(CircularSplineCoupling(4, context=2, hidden=(16,), bins=5), 0.5).double()
    autoregressive = randomize_(CircularSplineAutoregressive(3, context=2, hidden=(16, 16), bins=5,
                                                             identity_init=False), 0.5).double()
    return {"coupling": coupling, "autoregressive": autoregressive}


@pytest.mark.parametrize("kind", ["coupling", "autoregressive"])
def test_the_layers_are_periodic_in_every_angle_with_a_continuous_jacobian_at_the_seam(kind):
    layer = _layers()[kind].eval()
    d = 4 if kind == "coupling" else 3
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, d, generator=gen, dtype=torch.float64) * 2 * PI - PI
    c = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    z, ladj = layer(x, c)
    for i in range(d):
        shifted = x.clone()
        shifted[:, i] += 2 * PI * (i + 1)
        zs, ls = layer(shifted, c)
        torch.testing.assert_close(wrap(zs - z), torch.zeros_like(z), rtol=0, atol=1e-10)
        torch.testing.assert_close(ls, ladj, rtol=0, atol=1e-10)
        # the Jacobian just left and just right of the seam of angle i agree
        eps = 1e-10
        left, right = x[:1].clone(), x[:1].clone()
        left[0, i], right[0, i] = PI - eps, -PI + eps
        jac = [torch.autograd.functional.jacobian(lambda v: layer(v, c[:1])[0], point)[0, :, 0]
               for point in (left, right)]
        torch.testing.assert_close(jac[0], jac[1], rtol=1e-5, atol=1e-9)


def test_circular_made_gives_both_features_of_an_angle_its_degree():
    net = CircularMADE(3, params=2, hidden=(9, 9), context=1, zero_last=False).double()
    x, c = torch.rand(1, 3, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: net(v, c).sum(-1), x)[0, :, 0]  # (D outputs, D inputs)
    assert torch.equal(jac.triu() != 0, torch.zeros(3, 3, dtype=torch.bool))  # output i sees angles before i only
    assert (jac.tril(-1)[1:] != 0).any()


def test_the_backend_leaves_the_circular_layers_to_their_reference_maths():
    layers = _layers()
    x = torch.rand(5, 4, dtype=torch.float64) * 2 * PI - PI
    c = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        assert backend.run(layers["autoregressive"], "forward", x[:, :3], c) is None
        assert backend.run(layers["autoregressive"], "inverse", x[:, :3], c) is None
        assert backend.run(layers["coupling"], "step", x[:, :2], x[:, 2:], c, False) is None


def test_a_circular_flow_is_normalised_on_the_torus():
    torch.manual_seed(0)
    flow = randomize_(CircularNSF(2, depth=2, hidden=(16,), bins=5), 0.2).double().eval()
    n = 300
    grid = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * PI - PI
    points = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        mass = flow.log_prob(points).exp().sum() * (2 * PI / n) ** 2
    # midpoint rule on a 300 x 300 grid: its error is O(h^2 f''), about 1e-5 for this smooth a density
    torch.testing.assert_close(mass, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-4)
    samples = flow.sample(200)
    assert samples.shape == (200, 2) and bool(samples.abs().max() <= PI)


def test_the_presets_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match="features >= 2.*CircularNSFAutoregressive"):
        CircularNSF(1)
    flow = CircularNSFAutoregressive(1, depth=2, hidden=(8, 8), bins=4)  # one angle: a learned circle map
    assert flow.log_prob(torch.zeros(3, 1)).shape == (3,)


def test_circular_uniform_base():
    base = CircularUniform(3).double()
    z = base.rsample(1000)
    assert z.dtype == torch.float64 and bool(z.abs().max() <= PI)
    lp = base.log_prob(torch.tensor([[0.0, 1.0, -3.0], [0.0, 4.0, 0.0]], dtype=torch.float64))
    assert lp[0].item() == pytest.approx(-3 * math.log(2 * PI)) and lp[1].item() == -math.inf
    torch.testing.assert_close(base.as_torch().log_prob(z), base.log_prob(z))


def test_a_composed_circular_flow_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    flow = randomize_(Flow(Compose(CircularSplineCoupling(3, hidden=(8,), bins=4),
                                   CircularSplineCoupling(3, hidden=(8,), bins=4, flip=True)),
                           CircularUniform(3)), 0.3)
    loaded = exactflow.load(exactflow.save(tmp_path / "t.safetensors", flow))
    x = torch.rand(6, 3) * 2 * PI - PI
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("preset", [CircularNSF, CircularNSFAutoregressive])
def test_samples_stay_on_the_torus_and_score_as_sampled(preset):
    torch.manual_seed(0)
    flow = randomize_(preset(3, depth=2, hidden=(16, 16), bins=5), 0.5)
    with torch.no_grad():
        x = flow.sample(3000)
        assert x.dtype == torch.float32 and bool(x.abs().max() <= torch.tensor(PI, dtype=torch.float32))
        assert torch.isfinite(flow.log_prob(x)).all()
        # in float64 the sampler's density is the density of its samples (this peaked a flow magnifies float32's
        # roundings of x by |d log p / dx| ~ 1e5); also across the seam of an angle
        flow.double()
        x, log_q = flow.sample_and_log_prob(3000)
        lp = flow.log_prob(x)
        torch.testing.assert_close(log_q, lp, rtol=0, atol=1e-8)
        x[:, -1] += 2 * PI
        torch.testing.assert_close(flow.log_prob(x), lp, rtol=0, atol=1e-8)
