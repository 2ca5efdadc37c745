"""Tails: NSF's affine couplings (``affine=``) and the Student-t base, what the generic contracts cannot see."""

import math

import pytest
import torch

from exactflow.bases import StudentT
from exactflow.flows import NSF, describe, rebuild
from exactflow.testing import check_flow, randomize_
from exactflow.transforms.coupling import AffineCoupling
from exactflow.transforms.splines import RQSplineCoupling


@pytest.mark.parametrize("affine, first, count", [("ends", AffineCoupling, 2), ("interleaved", AffineCoupling, 3)])
def test_nsf_affine_couplings_are_placed_and_pass_the_flow_checks(affine, first, count):
    torch.manual_seed(0)
    flow = randomize_(NSF(3, context=2, depth=3, hidden=(8,), bins=4, bound=2.0, affine=affine), 0.2)
    layers = list(flow.transform.bijections)
    assert type(layers[0]) is first and type(layers[-1]) is RQSplineCoupling
    assert sum(type(m) is AffineCoupling for m in layers) == count
    assert sum(type(m) is RQSplineCoupling for m in layers) == 3
    x = 1.5 * torch.randn(8, 3, dtype=torch.float64)
    x[0] = torch.tensor([4.0, -6.0, 9.0], dtype=torch.float64)  # beyond the splines' interval: the affine maps act
    check_flow(flow, x, torch.randn(8, 2, dtype=torch.float64), atol=1e-5, name=f"NSF[affine={affine}]")
    again = rebuild(describe(flow))
    again.load_state_dict(flow.state_dict())
    c = torch.zeros(8, 2)
    torch.testing.assert_close(again.log_prob(x.float(), c), flow.log_prob(x.float(), c))


def test_nsf_affine_none_is_the_plain_flow_and_bad_values_are_named():
    assert not any(isinstance(m, AffineCoupling) for m in NSF(3, depth=2, hidden=(8,)).modules())
    with pytest.raises(ValueError, match="unknown affine 'all'"):
        NSF(3, affine="all")


def test_student_t_log_prob_is_torch_student_t_at_small_degrees_of_freedom():
    base = StudentT((2, 3), df=1.5).double()
    with torch.no_grad():
        base.log_df.add_(0.4 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    z = 10 * torch.randn(5, 2, 3, dtype=torch.float64)
    want = torch.distributions.StudentT(base.df).log_prob(z).flatten(1).sum(-1)
    torch.testing.assert_close(base.log_prob(z), want, rtol=1e-12, atol=1e-12)


def test_student_t_tails_fall_as_a_power_of_nu_plus_one():
    """log p(z) ~ -(nu + 1) log|z| far out: the slope between |z| = 1e3 and 1e4 is -(nu + 1) up to O(nu / z^2)."""
    base = StudentT(1, df=2.5).double()
    z = torch.tensor([[1e3], [1e4]], dtype=torch.float64)
    lp = base.log_prob(z)
    slope = (lp[1] - lp[0]) / math.log(10)
    assert abs(slope + 3.5) < 1e-5


def test_student_t_learns_its_degrees_of_freedom_and_can_be_fixed():
    base = StudentT(2)
    assert torch.allclose(base.df, torch.full((2,), 30.0))
    base.log_prob(torch.randn(4, 2)).sum().backward()
    assert base.log_df.grad is not None and torch.isfinite(base.log_df.grad).all()
    fixed = StudentT(2, df=4.0, trainable=False)
    assert not list(fixed.parameters()) and "log_df" in fixed.state_dict()
    with pytest.raises(ValueError, match="df"):
        StudentT(2, df=0.0)
    with pytest.raises(ValueError, match="z has shape"):
        StudentT(2).log_prob(torch.randn(4, 3))
