"""Householder and Sylvester flows (issue 17): worked numbers the generic contract cannot see, and that the
contract covers every new entry."""

import importlib
import math

import pytest
import torch
from test_contract import CONTEXT, _cases

import exactflow
from exactflow import flows
from exactflow.testing import check_flow, randomize_
from exactflow.transforms import registry as transforms
from exactflow.transforms.householder import Householder, reflect
from exactflow.transforms.sylvester import (
    EPS,
    HouseholderSylvester,
    Sylvester,
    TriangularSylvester,
    solve_triangular_tanh,
)

NEW = {"Householder": False, "Sylvester": True, "HouseholderSylvester": True, "TriangularSylvester": True}


def _preset():
    """The preset module, imported here rather than at collection (see test_the_preset_is_exported_by_flows)."""
    return importlib.import_module("exactflow.flows.sylvester").Sylvester


def test_a_householder_reflection_of_a_known_vector():
    # H = I - 2 v v^T / |v|^2 with v = (1, 1): (3, 4) -> (3, 4) - 7 (1, 1) = (-4, -3)
    torch.testing.assert_close(reflect(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 1.0]])),
                               torch.tensor([[-4.0, -3.0]]))


def test_householder_applies_h1_first_and_inverts_in_reverse_order():
    layer = Householder(2, reflections=2).double()
    with torch.no_grad():
        layer.vectors.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))  # H_1 flips x_1, H_2 mirrors in x_1 = -x_2
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    z, ladj = layer(x)
    torch.testing.assert_close(z, torch.tensor([[-4.0, 3.0]], dtype=torch.float64))  # H_2 H_1 x; H_1 H_2 x = (4, -3)
    assert ladj.tolist() == [0.0]
    torch.testing.assert_close(layer.inverse(z)[0], x)
    torch.testing.assert_close(layer.matrix(), torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))
    q = Householder(5).double().matrix()
    torch.testing.assert_close(q.T @ q, torch.eye(5, dtype=torch.float64))


def _one_feature(layer, r: float, rt_r: float, b: float):
    """Set a 1-feature layer's R = r, R~ R = rt_r, b."""
    with torch.no_grad():
        layer.rho.fill_(math.log(r))
        layer.gamma.fill_(math.log(math.expm1(rt_r + 1 - EPS)))  # -1 + EPS + softplus(gamma) = rt_r
        layer.bias.fill_(b)
    return layer


@pytest.mark.parametrize("cls, q", [(Sylvester, 1.0), (TriangularSylvester, 1.0), (HouseholderSylvester, -1.0)])
def test_a_one_feature_sylvester_layer_by_hand(cls, q):
    # D = M = 1: x = z + q r tanh(rt q z + b), log|det dx/dz| = log(1 + rt r (1 - tanh^2(u))); here r = 2,
    # rt = 0.25 (rt r = 0.5), b = 0.3, z = 0.7; Q = 1, except Q = -1 for the single reflection (1 - 2 = -1)
    layer = _one_feature(cls(1).double(), r=2.0, rt_r=0.5, b=0.3)
    u = 0.25 * q * 0.7 + 0.3
    x_want = 0.7 + q * 2.0 * math.tanh(u)
    ladj_want = math.log(1 + 0.5 * (1 - math.tanh(u) ** 2))
    x, ladj = layer.inverse(torch.tensor([[0.7]], dtype=torch.float64))
    assert x.item() == pytest.approx(x_want, abs=1e-14) and ladj.item() == pytest.approx(ladj_want, abs=1e-14)
    z, ladj_fwd = layer(x)
    assert z.item() == pytest.approx(0.7, abs=1e-14) and ladj_fwd.item() == pytest.approx(-ladj_want, abs=1e-14)


def test_a_two_feature_sylvester_layer_against_the_full_jacobian_formula():
    # det(I + A diag(h') B) = prod_i (1 + R~_ii R_ii h'_i): the identity the layer relies on, with B A = R~ R
    layer = randomize_(Sylvester(4, rank=2).double(), 0.5)
    q, r, rt, b, diag = layer.params()
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(torch.diagonal(rt @ r), diag)
    z = torch.randn(3, 4, dtype=torch.float64)
    x, ladj = layer.inverse(z)
    for i in range(3):
        u = rt @ q.T @ z[i] + b
        full = torch.eye(4, dtype=torch.float64) + q @ r @ torch.diag(1 - torch.tanh(u) ** 2) @ rt @ q.T
        torch.testing.assert_close(x[i], z[i] + q @ r @ torch.tanh(u))
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(full)[1])


def test_the_diagonal_constraint_keeps_every_layer_invertible():
    """R~_ii R_ii >= -1 + EPS for any raw value, so 1 + R~_ii R_ii h' > 0 and the layer stays bijective."""
    layer = Sylvester(3).double()
    with torch.no_grad():
        layer.gamma.fill_(-1000.0)  # softplus underflows to 0: the product is exactly -1 + EPS
        layer.rho.fill_(5.0)
    diag = layer.params()[4]
    assert torch.all(diag >= -1 + EPS - 1e-15)
    x = torch.randn(8, 3, dtype=torch.float64)
    z, ladj = layer(x)
    assert torch.isfinite(ladj).all()
    torch.testing.assert_close(layer.inverse(z)[0], x)


def test_the_triangular_solver():
    c = torch.tensor([[0.5, 1.0, -2.0], [0.0, -0.9, 0.3], [0.0, 0.0, 3.0]], dtype=torch.float64)
    y = torch.randn(10, 3, dtype=torch.float64) * 3
    u = solve_triangular_tanh(c, y)
    torch.testing.assert_close(u + torch.tanh(u) @ c.T, y, atol=1e-14, rtol=0)
    cb = c.expand(10, 3, 3)  # one matrix per row (amortised parameters)
    torch.testing.assert_close(solve_triangular_tanh(cb, y), u, atol=1e-14, rtol=0)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="rank"):
        Sylvester(3, rank=4)
    with pytest.raises(ValueError, match="reflections"):
        Householder(3, reflections=0)
    with pytest.raises(ValueError, match="unconditional"):
        transforms["Householder"](features=3, context=2)
    with pytest.raises(ValueError, match="kind"):
        _preset()(3, kind="planar")
    with pytest.raises(ValueError, match="rank"):
        _preset()(3, kind="triangular", rank=2)


def test_the_generic_contract_covers_the_new_transforms():
    ids = {p.id for p in _cases(transforms, invert=True)}
    for name, conditional in NEW.items():
        assert transforms[name].conditional is conditional
        tags = ("plain", "ctx") if conditional else ("plain",)
        want = {f"{name}[{tag}]{inv}" for tag in tags for inv in ("", "/inv")}
        assert want <= ids, name


@pytest.mark.parametrize("kind, kwargs", [("orthogonal", {"rank": 3}), ("householder", {"reflections": 2}),
                                          ("triangular", {})])
@pytest.mark.parametrize("ctx", [0, CONTEXT])
def test_the_preset_passes_the_flow_contract(kind, kwargs, ctx):
    flow = randomize_(_preset()(features=5, context=ctx, depth=3, kind=kind, **kwargs), 0.2)
    x = 0.8 * torch.randn(16, 5, dtype=torch.float64) + 0.3
    context = torch.randn(16, ctx, dtype=torch.float64) if ctx else None
    check_flow(flow, x, context, atol=1e-5, name=f"Sylvester[{kind}]")


def test_the_preset_saves_and_loads(tmp_path):
    flow = randomize_(_preset()(features=3, depth=2, kind="householder"), 0.2).double()
    loaded = exactflow.load(exactflow.save(tmp_path / "s.safetensors", flow))
    assert loaded.spec == flow.spec
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


def test_the_preset_is_exported_by_flows():
    assert "Sylvester" in flows.__all__ and flows.Sylvester is flows.registry["Sylvester"].factory


def test_householder_sylvester_uses_the_householder_matrix():
    """Q of a Householder Sylvester layer is H_k ... H_1, the matrix of a Householder layer with the same vectors."""
    layer = HouseholderSylvester(4, reflections=3).double()
    vectors = layer.q_raw[0].detach()
    h = [torch.eye(4, dtype=torch.float64) - 2 * torch.outer(v, v) / v.dot(v) for v in vectors]
    householder = Householder(4, reflections=3).double()
    with torch.no_grad():
        householder.vectors.copy_(vectors)
    torch.testing.assert_close(householder.matrix(), h[2] @ h[1] @ h[0])
    torch.testing.assert_close(layer.params()[0], h[2] @ h[1] @ h[0])
