"""The incremental autoregressive sampler (about one MADE pass of work) equals the D-pass sampler."""

import copy

import pytest
import torch

from exactflow import backend
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
        with backend.reference():
            x_slow, ladj_slow = layer.inverse(z, c)
        x_fast, ladj_fast = backend.incremental_inverse(layer, z, c)
    torch.testing.assert_close(x_fast, x_slow, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ladj_fast, ladj_slow, atol=1e-10, rtol=1e-10)
    z_back, ladj_back = layer(x_fast, c)  # and it really inverts the layer
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ladj_back, -ladj_fast, atol=1e-9, rtol=1e-9)


def test_float32_incremental_sampling_matches_the_float64_reference():
    layer = RQSplineAutoregressive(6, hidden=(32, 32), bins=8)
    randomize_(layer, 0.3)
    z = torch.randn(1000, 6)
    with torch.no_grad():
        x_fast, _ = layer.inverse(z)  # no gradients, 6 * 1000 values: the incremental path
        with backend.reference():
            x_ref, _ = copy.deepcopy(layer).double().inverse(z.double())
    # float32 against float64: 6 sequential passes of a 2-layer network and a spline, each a few hundred
    # roundings of 6e-8 at most, amplified by the spline's slopes (below 1e3 here): 1e-4 of the scale
    torch.testing.assert_close(x_fast.double(), x_ref, rtol=1e-4, atol=1e-4 * x_ref.abs().max().item())


def test_gradients_and_residual_made_take_the_d_pass_sampler():
    layer = MaskedAffineAutoregressive(4, hidden=(8, 8))
    randomize_(layer, 0.3)
    x, _ = layer.inverse(torch.randn(3, 4))  # gradients on: differentiable D passes
    assert x.requires_grad
    residual = MaskedAffineAutoregressive(4, hidden=(8, 8), residual=True).double()
    randomize_(residual, 0.3)
    z = torch.randn(500, 4, dtype=torch.float64)
    with torch.no_grad():
        with backend.reference():
            want = residual.inverse(z)[0]
        torch.testing.assert_close(residual.inverse(z)[0], want)


@pytest.mark.parametrize("name", ["MAF", "NSFAutoregressive"])
def test_flow_sample_equals_the_differentiable_sampler(name):
    flow = flows[name](features=5, depth=2, hidden=(16, 16))
    randomize_(flow, 0.2)
    flow = flow.double()
    torch.manual_seed(7)
    fast = flow.sample(500)  # no gradients, 5 * 500 values: incremental
    torch.manual_seed(7)
    slow = flow.rsample(500).detach()  # gradients on: D passes
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)


def test_sampler_follows_parameter_changes():
    """The incremental sampler cuts its weight blocks from the current weights on every call: in-place updates,
    ``load_state_dict`` and dtype changes are seen by the next call."""
    layer = MaskedAffineAutoregressive(6, context=2, hidden=(16, 16)).double()
    randomize_(layer, 0.4)
    z, c = torch.randn(400, 6, dtype=torch.float64), torch.randn(400, 2, dtype=torch.float64)

    def check(module):
        with torch.no_grad():
            fast = module.inverse(z, c)[0]
            with backend.reference():
                torch.testing.assert_close(fast, module.inverse(z, c)[0])

    check(layer)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    check(layer)
    for p in layer.parameters():
        p.data.mul_(0.5)
    check(layer)
    other = randomize_(MaskedAffineAutoregressive(6, context=2, hidden=(16, 16)).double(), 0.4)
    layer.load_state_dict(other.state_dict())
    check(layer)
    with torch.no_grad():
        torch.testing.assert_close(layer.inverse(z, c)[0], other.inverse(z, c)[0])
