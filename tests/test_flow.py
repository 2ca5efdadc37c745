"""Flow-level behaviour: normalisation, errors on bad input, sampling shapes, torch interop."""

import math

import pytest
import torch

from exactflow import DiagNormal, Flow, StandardNormal
from exactflow.flows import registry as flows
from exactflow.testing import randomize_


def test_2d_density_integrates_to_one():
    flow = flows["RealNVP"](features=2, depth=4, hidden=(16,)).double()
    randomize_(flow, 0.3)
    grid = torch.linspace(-12, 12, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], -1)
    with torch.no_grad():
        density = flow.log_prob(pts).exp()
    cell = (grid[1] - grid[0]) ** 2
    assert abs(density.sum().item() * cell.item() - 1) < 0.01


@pytest.fixture
def flow():
    return flows["RealNVP"](features=3, depth=2, hidden=(8,))


@pytest.fixture
def cflow():
    return flows["RealNVP"](features=3, context=2, depth=2, hidden=(8,))


def test_nan_is_named(flow):
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(x)


def test_inf_is_named(flow):
    x = torch.randn(4, 3)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="inf"):
        flow.log_prob(x)


def test_wrong_features_says_expected_and_got(flow):
    with pytest.raises(ValueError, match=r"expected \(batch, 3\).*got event shape \(4,\)"):
        flow.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match="expected"):
        flow.log_prob(torch.randn(3))


def test_wrong_dtype_and_non_tensor(flow):
    with pytest.raises(ValueError, match="dtype mismatch"):
        flow.log_prob(torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        flow.log_prob(torch.ones(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.Tensor"):
        flow.log_prob([[0.0, 1.0, 2.0]])


def test_context_errors(flow, cflow):
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="needs context"):
        cflow.log_prob(x)
    with pytest.raises(ValueError, match=r"expected \(batch, 2\)"):
        cflow.log_prob(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="rows"):
        cflow.log_prob(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(x, torch.randn(5, 2))
    with pytest.raises(ValueError, match="needs context"):
        cflow.sample(3)


def test_checks_can_be_switched_off(flow):
    x = torch.randn(4, 3)
    x[0, 0] = float("nan")
    flow.validate = False
    assert torch.isnan(flow.log_prob(x)[0])


def test_conditional_sampling_shape_rule(cflow):
    ctx = torch.randn(4, 2)
    assert cflow.sample(5, ctx).shape == (5, 4, 3)
    x, lq = cflow.sample_and_log_prob(5, ctx)
    assert x.shape == (5, 4, 3) and lq.shape == (5, 4)
    # row j of every draw used context row j
    torch.testing.assert_close(lq[:, 1], cflow.log_prob(x[:, 1], ctx[1:2].expand(5, 2)), atol=1e-4, rtol=1e-4)


def test_bases_follow_dtype_and_are_normalised():
    for base in (StandardNormal(2), DiagNormal(2)):
        base = base.double()
        assert base.rsample(3).dtype == torch.float64
        z = torch.randn(6, 2, dtype=torch.float64)
        torch.testing.assert_close(base.log_prob(z), base.as_torch().log_prob(z))


def test_torch_distributions_interop(flow):
    randomize_(flow, 0.2)
    dist = flow.as_torch_distribution()
    assert isinstance(dist, torch.distributions.TransformedDistribution)
    x = flow.sample(10)
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x), atol=1e-5, rtol=1e-5)
    assert dist.sample((4,)).shape == (4, 3)
    t = flow.transform.as_torch_transform()
    z = torch.randn(5, 3)
    torch.testing.assert_close(t.inv(t(z)), z, atol=1e-5, rtol=1e-5)


def test_sample_and_log_prob_is_differentiable_for_vi():
    flow = flows["Planar"](features=2, depth=3)
    x, lq = flow.sample_and_log_prob(16)
    (lq.mean() + x.square().mean()).backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_actnorm_flag_survives_reload():
    from exactflow.transforms.normalization import ActNorm

    a = ActNorm(3)
    a(torch.randn(50, 3) * 4 + 1)
    b = ActNorm(3)
    b.load_state_dict(a.state_dict())
    assert bool(b.initialized)
    before = b.loc.clone()
    b(torch.randn(50, 3))
    assert torch.equal(b.loc, before)


def test_actnorm_keeps_unit_scale_for_a_feature_constant_in_its_first_batch():
    """A first batch of one row (or a constant column) cannot tell a scale: ActNorm centres and keeps scale 1."""
    from exactflow.transforms.normalization import ActNorm

    one = ActNorm(3)
    z, ladj = one(torch.tensor([[1.0, -2.0, 3.0]]))
    assert torch.equal(one.log_scale.detach(), torch.zeros(3)) and torch.equal(ladj, torch.zeros(1))
    assert torch.equal(z, torch.zeros(1, 3))
    column = ActNorm(2)
    column(torch.stack([torch.full((64,), 7.0), 3 * torch.randn(64)], 1))
    assert column.log_scale[0].item() == 0.0 and column.log_scale[1].item() == pytest.approx(math.log(3), abs=0.3)


def test_log_prob_units_match_gaussian_log_density():
    flow = Flow(flows["RealNVP"](features=2, depth=1, hidden=(4,)).transform, StandardNormal(2))
    x = torch.zeros(1, 2)
    assert flow.log_prob(x).item() == pytest.approx(-math.log(2 * math.pi), abs=1e-6)


@pytest.mark.parametrize("name", ["RealNVP", "MAF", "NSF", "NSFAutoregressive"])
def test_scratch_buffers_of_the_no_grad_path_never_leak_into_results(name):
    """Without autograd the hidden activations live in shared per-thread scratch buffers: results must not
    alias them (a later call leaves an earlier result alone), inference mode and no_grad can alternate, and
    threads sharing one flow get their own buffers."""
    import threading

    from exactflow import backend
    from exactflow.backend import SCRATCH_MIN, scratch

    flow = flows[name](features=4, depth=3, hidden=(16, 16)).double()  # float64: equal up to reassociation
    randomize_(flow, 0.3)
    xs = [torch.randn(SCRATCH_MIN // 16 + 100, 4, dtype=torch.float64) for _ in range(4)]  # above SCRATCH_MIN
    with backend.reference():
        reference = [flow.log_prob(x).detach() for x in xs]
    scratch.clear()
    with torch.no_grad():
        first = flow.log_prob(xs[0])
        assert scratch.buffers  # the scratch path was taken
        for x in xs[1:]:
            flow.log_prob(x)
        torch.testing.assert_close(first, reference[0])
    with torch.inference_mode():
        torch.testing.assert_close(flow.log_prob(xs[1]), reference[1])
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(xs[2]), reference[2])
    results, errors = {}, []

    def run(i):
        try:
            with torch.no_grad():
                for _ in range(20):
                    results[i] = flow.log_prob(xs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        torch.testing.assert_close(results[i], reference[i])


def test_scratch_buffers_are_bounded():
    from exactflow import backend as nets

    scratch = nets.scratch
    scratch.clear()
    like = torch.zeros(1)
    for rows in range(40):  # 40 shapes of 2M elements each: more than SCRATCH_TOTAL together
        assert scratch.get(2048 + rows, 1024, like, "test") is not None
        assert scratch.held <= nets.SCRATCH_TOTAL
    assert scratch.get(10, 10, like, "test") is None  # small: the allocator recycles those anyway
    assert scratch.get(nets.SCRATCH_MAX + 1, 1, like, "test") is None
    scratch.clear()
