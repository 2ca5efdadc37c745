"""The generic contract, parametrised over every registry entry: plain, inverted, conditional."""

import math
import warnings

import pytest
import torch

from exactflow import Inverse, backend
from exactflow.flows import registry as flows
from exactflow.testing import check_bijection, check_flow, randomize_, warm_up
from exactflow.transforms import registry as transforms

# on randomised parameters every parameter must move the output: a zero gradient here is a wiring error
pytestmark = pytest.mark.filterwarnings("error::exactflow.testing.DeadParameterWarning")

CONTEXT = 3
DEFAULT_SIZE = {"vector": {"features": 5}, "image": {"shape": (4, 4, 4)}}


def _cases(registry, invert: bool):
    for name, entry in sorted(registry.items()):
        marks = [pytest.mark.slow] if entry.slow else []
        for ctx in (0, CONTEXT) if entry.conditional else (0,):
            for inv in (False, True) if invert else (False,):
                tag = f"{name}[{'ctx' if ctx else 'plain'}]{'/inv' if inv else ''}"
                yield pytest.param(name, ctx, inv, id=tag, marks=marks)


def _wide_cases():
    """Vector entries with a fast path, at the width from which the backend takes its feature-count routes."""
    for name, entry in sorted(transforms.items()):
        if entry.input == "vector" and backend.covers(entry(**{"features": WIDE, **entry.test_kwargs})):
            for ctx in (0, CONTEXT) if entry.conditional else (0,):
                yield pytest.param(name, ctx, id=f"{name}[{'ctx' if ctx else 'plain'}]/wide")


WIDE = backend.PARAM_MAJOR_MIN_FEATURES


def _build(registry, name: str, ctx: int, device, features: int | None = None):
    entry = registry[name]
    kwargs = {**DEFAULT_SIZE[entry.input], **entry.test_kwargs, "context": ctx}
    if features is not None:
        kwargs["features"] = features
    obj = entry(**kwargs).to(device=device, dtype=torch.float64)
    shape = (kwargs["features"],) if entry.input == "vector" else tuple(kwargs["shape"])
    if entry.domain == "unit":
        x = 0.05 + 0.9 * torch.rand(16, *shape, dtype=torch.float64, device=device)
    elif entry.domain == "circle":
        x = math.pi * (2 * torch.rand(16, *shape, dtype=torch.float64, device=device) - 1)
    else:
        x = 0.8 * torch.randn(16, *shape, dtype=torch.float64, device=device) + 0.3
    context = torch.randn(16, ctx, dtype=torch.float64, device=device) if ctx else None
    return entry, obj, x, context


@pytest.mark.parametrize("name,ctx,inv", list(_cases(transforms, invert=True)))
def test_transform_contract(name, ctx, inv, device):
    entry, b, x, context = _build(transforms, name, ctx, device)
    warm_up(b, x, context)
    randomize_(b)
    if inv:
        z, _ = b(x, context)  # points in the inverse's domain
        b, x = Inverse(b), z.detach()
    check_bijection(b, x, context, atol=entry.tolerance, name=f"{name}{'/inv' if inv else ''}")


@pytest.mark.parametrize("name,ctx", list(_wide_cases()))
def test_transform_contract_wide(name, ctx, device):
    entry, b, x, context = _build(transforms, name, ctx, device, features=WIDE)
    warm_up(b, x, context)
    randomize_(b)
    check_bijection(b, x, context, atol=entry.tolerance, name=f"{name}/wide")


@pytest.mark.parametrize("name,ctx,inv", list(_cases(flows, invert=False)))
def test_flow_contract(name, ctx, inv, device):
    entry, flow, x, context = _build(flows, name, ctx, device)
    warm_up(flow, x, context)
    randomize_(flow, 0.2)
    check_flow(flow, x, context, atol=entry.tolerance, name=name)


def test_every_factory_builds_unconditional_and_rejects_bad_context():
    for entry in transforms.values():
        kwargs = DEFAULT_SIZE[entry.input]
        assert entry(**kwargs, context=0) is not None
    for entry in flows.values():
        if not entry.conditional:
            with pytest.raises(ValueError):
                entry(**DEFAULT_SIZE[entry.input], context=2)


def test_check_bijection_works_on_a_copy():
    """The module given keeps its dtype, train/eval mode and parameters."""
    b = transforms["MaskedAffineAutoregressive"](features=3, hidden=(8, 8))
    randomize_(b)
    b.train()
    before = {k: v.clone() for k, v in b.state_dict().items()}
    check_bijection(b, torch.randn(8, 3, dtype=torch.float64))
    assert b.training and all(p.dtype == torch.float32 for p in b.parameters())
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())


@pytest.mark.parametrize("name", ["MAF", "IAF", "RealNVP", "NSF", "NSFAutoregressive"])
def test_the_readme_recipe_holds_for_default_size_flows(name):
    """Issue 15, defect 15: randomise-then-check on a default-size flow does not false-alarm (the float32 inverse
    is judged by its residual in the latent space, not by the inverse's condition number)."""
    flow = randomize_(flows[name](features=4), 0.1)
    check_flow(flow, torch.randn(16, 4, dtype=torch.float64))


def test_a_dead_relu_network_warns_but_the_maths_still_checks():
    """A trained coupling whose hidden ReLU units are all off has zero gradients for those weights: the check warns
    (naming the parameter) and goes on; the contract above turns that warning into an error."""
    from exactflow.testing import DeadParameterWarning
    from exactflow.transforms.coupling import AffineCoupling

    layer = randomize_(AffineCoupling(2, hidden=(8,)), 0.3)
    with torch.no_grad():
        layer.net[0].bias.fill_(-100.0)  # every hidden unit off for inputs of order 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_bijection(layer, torch.randn(16, 2, dtype=torch.float64))
    dead = [str(w.message) for w in caught if issubclass(w.category, DeadParameterWarning)]
    assert any("net.0.weight" in m for m in dead) and not any("net.2.bias" in m for m in dead), dead

