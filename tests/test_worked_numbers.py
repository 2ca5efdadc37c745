"""Worked numbers from the literature this project follows, as exact tests."""

import math

import pytest
import torch
import torch.nn.functional as F

from exactflow import Compose, Flow, StandardNormal
from exactflow.transforms.coupling import AffineCoupling
from exactflow.transforms.elementwise import ElementwiseAffine
from exactflow.transforms.linear import Rotation
from exactflow.transforms.planar import Planar


def test_scalar_affine_flow_is_the_shifted_scaled_gaussian():
    a, b = 1.7, -0.4
    layer = ElementwiseAffine(1).double()
    with torch.no_grad():
        layer.loc.fill_(b)
        layer.log_scale.fill_(math.log(a))
    flow = Flow(layer, StandardNormal(1).double())
    x = torch.linspace(-5, 5, 41, dtype=torch.float64).unsqueeze(-1)
    expected = torch.distributions.Normal(b, a).log_prob(x).squeeze(-1)
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_affine_coupling_worked_example():
    # z = (1, 3), s = exp(0.5), t = 2 (latent -> data): x = (1, 1.649 * 3 + 2) = (1, 6.946), log|det| = 0.5
    layer = AffineCoupling(2, mask="half", hidden=()).double()
    bound = layer.scale_bound
    with torch.no_grad():
        layer.net[-1].weight.zero_()
        layer.net[-1].bias.copy_(torch.tensor([2.0, bound * math.atanh(0.5 / bound)]))
    x, ladj = layer.inverse(torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    assert x[0, 0].item() == 1.0
    assert x[0, 1].item() == pytest.approx(math.exp(0.5) * 3 + 2) and round(x[0, 1].item(), 3) == 6.946
    assert ladj.item() == pytest.approx(0.5)
    z, ladj_fwd = layer(x)
    assert round(z[0, 1].item(), 3) == 3.000 and ladj_fwd.item() == pytest.approx(-0.5)


def _planar_with_effective_u(u_eff, w, b):
    """Choose the raw u so that the invertibility reparameterisation yields exactly ``u_eff``."""
    layer = Planar(2).double()
    u_eff, w = torch.tensor(u_eff, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    target = w @ u_eff  # = m(w.u) = softplus(w.u) - 1
    wu = torch.log(torch.expm1(target + 1))  # softplus^-1
    u_raw = u_eff - (target - wu) * w / (w @ w)
    with torch.no_grad():
        layer.u.copy_(u_raw)
        layer.w.copy_(w)
        layer.b.fill_(b)
    torch.testing.assert_close(layer.effective_u(), u_eff)
    return layer


def test_planar_worked_example():
    layer = _planar_with_effective_u([1.0, 0.0], [1.0, 2.0], 0.0)
    z = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    x, ladj = layer.inverse(z)
    assert round(ladj.item(), 3) == 0.580
    # the matrix determinant lemma: det(I + u h'(.) w^T) = 1 + h'(.) w.u
    sech2 = 1 / math.cosh(-0.5) ** 2
    assert ladj.item() == pytest.approx(math.log(1 + sech2 * 1.0))
    jac = torch.autograd.functional.jacobian(lambda v: layer.inverse(v.unsqueeze(0))[0][0], z[0])
    assert torch.logdet(jac).item() == pytest.approx(ladj.item())
    z_back, _ = layer(x)
    torch.testing.assert_close(z_back, z)


def test_rotation_has_zero_log_det_and_composition_adds():
    rot = Rotation(2).double()
    with torch.no_grad():
        rot.generator.copy_(torch.tensor([[0.0, 0.7], [0.0, 0.0]]))
    q = rot.matrix()
    c, s = math.cos(0.7), math.sin(0.7)
    torch.testing.assert_close(q, torch.tensor([[c, s], [-s, c]], dtype=torch.float64))
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(rot(x)[1], torch.zeros(4, dtype=torch.float64))
    scale = ElementwiseAffine(2).double()
    with torch.no_grad():
        scale.log_scale.copy_(torch.tensor([0.3, -0.1]))
    both = Compose(scale, rot, scale)
    _, ladj = both(x)
    torch.testing.assert_close(ladj, 2 * scale(x)[1] + rot(x)[1])


def test_softplus_constraint_keeps_planar_invertible():
    layer = Planar(2).double()
    with torch.no_grad():
        layer.u.copy_(torch.tensor([-3.0, 0.0]))
        layer.w.copy_(torch.tensor([2.0, 0.0]))
    assert (layer.w @ layer.effective_u()).item() >= -1
    assert F.softplus(torch.tensor(-6.0)).item() - 1 > -1
