"""Linear, quadratic and cubic splines: what the generic contract cannot see (identity at zero, monotone onto
[-B, B], smoothness at the knots, the inverses' accuracy and gradients, the NSF presets' spline= option)."""

import pytest
import torch

from exactflow import backend
from exactflow.flows import NSF, NSFAutoregressive
from exactflow.flows.autoregressive import SPLINES
from exactflow.testing import check_flow, randomize_
from exactflow.transforms.splines_polynomial import (
    CubicSpline,
    CubicSplineAutoregressive,
    LinearSpline,
    QuadraticSpline,
    QuadraticSplineCoupling,
)

KERNELS = {"linear": LinearSpline, "quadratic": QuadraticSpline, "cubic": CubicSpline}
BOUND = 2.0


def _kernel_and_params(name: str, n: int, scale: float = 2.0, seed: int = 0):
    kernel = KERNELS[name](bins=5, bound=BOUND)
    gen = torch.Generator().manual_seed(seed)
    p = scale * torch.randn(kernel.n_params, generator=gen, dtype=torch.float64)
    return kernel, p.expand(n, -1)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_zero_parameters_give_the_identity(name):
    kernel = KERNELS[name](bins=4, bound=BOUND)
    x = torch.linspace(-3, 3, 25, dtype=torch.float64)
    z, logd = kernel.forward(x, torch.zeros(25, kernel.n_params, dtype=torch.float64))
    torch.testing.assert_close(z, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logd, torch.zeros_like(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_the_spline_is_increasing_onto_the_interval_and_smooth_as_promised(name):
    kernel, p = _kernel_and_params(name, 40001, scale=1.0)
    x = torch.linspace(-BOUND, BOUND, 40001, dtype=torch.float64)
    y, logd = kernel.forward(x, p)
    assert (y.diff() > 0).all() and torch.isfinite(logd).all()
    torch.testing.assert_close(y[[0, -1]], torch.tensor([-BOUND, BOUND], dtype=torch.float64), rtol=0, atol=1e-12)
    # the log-derivative just left and right of every interior knot: a jump for the linear spline only
    if name == "linear":
        widths = torch.full((kernel.bins,), 1 / kernel.bins, dtype=torch.float64)
    else:
        widths = kernel._sizes(p[0, : kernel.bins], kernel.min_width)
    knots = -BOUND + 2 * BOUND * torch.cumsum(widths, 0)[:-1]
    side = 1e-9
    left, right = (kernel.forward(knots + shift, p[: len(knots)])[1] for shift in (-side, side))
    if name == "linear":
        assert (left - right).abs().min() > 1e-3
    else:  # continuous: the two sides differ by O(side * |d log f' / dx|), far below 1e-4 here
        torch.testing.assert_close(left, right, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_inverse_returns_to_the_point(name, dtype):
    kernel, p = _kernel_and_params(name, 2000)
    z = torch.linspace(-2.5, 2.5, 2000, dtype=torch.float64)
    x, logd_inv = kernel.inverse(z.to(dtype), p.to(dtype))
    xd = x.double().requires_grad_(True)
    zz, logd = kernel.forward(xd, p)
    # d log f' / dx (zero for the linear spline, whose log-derivative does not depend on x)
    slope_of_logd = torch.autograd.grad(logd.sum(), xd)[0] if logd.requires_grad else torch.zeros_like(z)
    zz, logd, eps = zz.detach(), logd.detach(), torch.finfo(dtype).eps
    # the residual in z: a few roundings of the values, magnified by the largest slope of the spline
    torch.testing.assert_close(zz, z, rtol=0, atol=16 * eps * 3.5 * logd.exp().max().item())
    # the log-derivative: its own roundings, and the error of the knots and of x (~ eps B) times d log f' / dx
    error = (logd_inv.double() + logd).abs()
    assert (error <= 16 * eps * (1 + logd.abs() + BOUND * slope_of_logd.abs())).all()


@pytest.mark.parametrize("name", ["quadratic", "cubic"])
def test_the_inverse_carries_exact_gradients(name):
    kernel, p = _kernel_and_params(name, 6, scale=1.0, seed=3)
    z = torch.linspace(-1.7, 1.9, 6, dtype=torch.float64).requires_grad_(True)
    p = p.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z, p: kernel.inverse(z, p), (z, p))


def test_the_cubic_uses_steffens_derivatives_and_stays_monotone_for_any_parameters():
    kernel = CubicSpline(bins=6, bound=BOUND)
    gen = torch.Generator().manual_seed(5)
    p = 6 * torch.randn(200, kernel.n_params, generator=gen, dtype=torch.float64)  # extreme shapes
    x = torch.linspace(-BOUND, BOUND, 2001, dtype=torch.float64)
    y, logd = kernel.forward(x.expand(200, -1), p.unsqueeze(1).expand(-1, 2001, -1))
    assert (y.diff(dim=-1) >= 0).all() and torch.isfinite(logd).all()
    # an interior knot between two bins of equal width: Steffen's derivative min(2 s_0, 2 s_1, (s_0 + s_1) / 2)
    two = CubicSpline(bins=2, bound=1.0)
    raw = torch.tensor([[0.0, 0.0, 0.0, 1.4, 0.0, 0.0]], dtype=torch.float64)
    s = two._sizes(raw[0, 2:4], two.min_height) / 0.5
    at_knot = two.forward(torch.tensor([0.0], dtype=torch.float64), raw)[1].exp()
    expected = torch.minimum(2 * s.min(), s.mean())
    assert s.mean() > 2 * s.min()  # the case where the limiter acts
    torch.testing.assert_close(at_knot, expected.reshape(1))


def test_the_backend_leaves_the_new_layers_to_their_reference_maths():
    layer = CubicSplineAutoregressive(3, hidden=(8, 8), bins=4, bound=BOUND, identity_init=False)
    coupling = QuadraticSplineCoupling(4, hidden=(8,), bins=4, bound=BOUND)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert backend.run(layer, "forward", x[:, :3], None) is None
        assert backend.run(layer, "inverse", x[:, :3], None) is None
        assert backend.run(coupling, "step", x[:, :2], x[:, 2:], None, False) is None


@pytest.mark.parametrize("preset", [NSF, NSFAutoregressive])
def test_the_nsf_presets_take_every_spline(preset):
    """Each spline's layers in the preset; the whole flow contract on one spline per preset (the layers themselves
    are in the generic contract)."""
    hidden = (8,) if preset is NSF else (8, 8)
    for spline, (coupling, autoregressive) in SPLINES.items():
        flow = preset(3, context=2, depth=2, hidden=hidden, bins=4, bound=BOUND, spline=spline)
        kind = coupling if preset is NSF else autoregressive
        assert flow.spec["kwargs"]["spline"] == spline
        assert sum(type(m) is kind for m in flow.modules()) == 2
    torch.manual_seed(0)
    spline = "cubic" if preset is NSF else "quadratic"
    flow = randomize_(preset(3, context=2, depth=2, hidden=hidden, bins=4, bound=BOUND, spline=spline), 0.2)
    x = 0.8 * torch.randn(8, 3, dtype=torch.float64)
    check_flow(flow, x, torch.randn(8, 2, dtype=torch.float64), atol=1e-5, name=f"{preset.__name__}[{spline}]")


def test_an_unknown_spline_is_named():
    with pytest.raises(ValueError, match="unknown spline 'bezier'.*'cubic'"):
        NSF(3, spline="bezier")
