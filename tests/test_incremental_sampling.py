"""The incremental autoregressive sampler (about one MADE pass of work) equals the D-pass sampler."""

import pytest
import torch

from exactflow.flows import registry as flows
from exactflow.testing import randomize_
from exactflow.transforms.autoregressive import MaskedAffineAutoregressive
from exactflow.transforms.splines import RQSplineAutoregressive

LAYERS = {"affine": (MaskedAffineAutoregressive, {}), "spline": (RQSplineAutoregressive, {"bins": 5, "bound": 3.0})}
CASES = [  # features, context, order, hidden
    (1, 0, "natural", (8, 8)),
    (1, 2, "natural", (8,)),
    (2, 0, "reversed", (16, 16)),
    (5, 0, "random", (7, 9, 11)),  # uneven widths: blocks of several units per degree, and empty ones
    (7, 3, "random", (32, 32)),
    (16, 0, "natural", (24, 24)),
]


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("features,context,order,hidden", CASES)
def test_incremental_inverse_equals_d_passes(kind, features, context, order, hidden):
    cls, kwargs = LAYERS[kind]
    layer = cls(features, context, hidden=hidden, order=order, seed=3, **kwargs)
    randomize_(layer, 0.4)
    layer = layer.double().eval()
    z = 1.5 * torch.randn(64, features, dtype=torch.float64)
    c = torch.randn(64, context, dtype=torch.float64) if context else None
    with torch.no_grad():
        x_slow, ladj_slow = layer._inverse_passes(z, c)
        x_fast, ladj_fast = layer._inverse_incremental(z, c)
    torch.testing.assert_close(x_fast, x_slow, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ladj_fast, ladj_slow, atol=1e-10, rtol=1e-10)
    z_back, ladj_back = layer(x_fast, c)  # and it really inverts the layer
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ladj_back, -ladj_fast, atol=1e-9, rtol=1e-9)


def test_float32_incremental_sampling_matches_d_passes():
    layer = RQSplineAutoregressive(6, hidden=(32, 32), bins=8)
    randomize_(layer, 0.3)
    z = torch.randn(1000, 6)
    with torch.no_grad():
        x_fast, _ = layer.inverse(z)  # no gradients, 6 * 1000 values: the incremental path
        x_slow, _ = layer._inverse_passes(z, None)
    assert (x_fast - x_slow).abs().max().item() < 1e-4


def test_gradients_and_residual_made_take_the_d_pass_sampler():
    layer = MaskedAffineAutoregressive(4, hidden=(8, 8))
    randomize_(layer, 0.3)
    x, _ = layer.inverse(torch.randn(3, 4))  # gradients on: differentiable D passes
    assert x.requires_grad
    residual = MaskedAffineAutoregressive(4, hidden=(8, 8), residual=True)
    randomize_(residual, 0.3)
    z = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(residual.inverse(z)[0], residual._inverse_passes(z, None)[0])


@pytest.mark.parametrize("name", ["MAF", "NSFAutoregressive"])
def test_flow_sample_equals_the_differentiable_sampler(name):
    flow = flows[name](features=5, transforms=2, hidden=(16, 16))
    randomize_(flow, 0.2)
    flow = flow.double()
    torch.manual_seed(7)
    fast = flow.sample(500)  # no gradients, 5 * 500 values: incremental
    torch.manual_seed(7)
    slow = flow.rsample(500).detach()  # gradients on: D passes
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)


def test_cached_sampler_plan_follows_parameter_changes():
    """The incremental sampler caches its sorted weight blocks; in-place updates (optimiser steps,
    ``load_state_dict``), dtype changes and pickling must not leave it stale."""
    import pickle

    layer = MaskedAffineAutoregressive(6, context=2, hidden=(16, 16))
    randomize_(layer, 0.4)
    z, c = torch.randn(400, 6), torch.randn(400, 2)
    loose = {"atol": 1e-4, "rtol": 1e-4}  # float32 rounding; a stale plan is off by far more
    with torch.no_grad():
        layer._inverse_incremental(z, c)  # builds the plan
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        torch.testing.assert_close(layer._inverse_incremental(z, c)[0], layer._inverse_passes(z, c)[0], **loose)
        other = MaskedAffineAutoregressive(6, context=2, hidden=(16, 16))
        randomize_(other, 0.4)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer._inverse_incremental(z, c)[0], other._inverse_passes(z, c)[0], **loose)
        layer.double()
        zd, cd = z.double(), c.double()
        torch.testing.assert_close(layer._inverse_incremental(zd, cd)[0], layer._inverse_passes(zd, cd)[0])
        assert "_plan" not in pickle.loads(pickle.dumps(layer)).__dict__
