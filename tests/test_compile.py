"""``exactflow.compile`` gives the eager results: log-density, gradients, samples."""

import pytest
import torch

import exactflow
from exactflow.flows import registry
from exactflow.testing import randomize_


def _pair(name: str, **kwargs):
    torch.manual_seed(0)
    eager = registry[name](features=4, **kwargs)
    randomize_(eager, 0.2)
    compiled = registry[name](features=4, **kwargs)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _near(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """float32 results of two orderings of the same sums (eager kernels against a compiled graph): each entry
    within ``rtol`` of its value or of the tensor's RMS (an entry near zero that sums terms of the tensor's size
    with cancellation carries their rounding, not its own)."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.square().mean().sqrt().item() + 1e-12)


def _check_same(eager, compiled, atol: float) -> None:
    x = torch.randn(32, 4)
    lp_e, lp_c = eager.log_prob(x), compiled.log_prob(x)
    torch.testing.assert_close(lp_c, lp_e, atol=atol, rtol=1e-5)
    g_e = torch.autograd.grad(lp_e.sum(), list(eager.parameters()))
    g_c = torch.autograd.grad(lp_c.sum(), list(compiled.parameters()))
    for a, b in zip(g_c, g_e, strict=True):
        _near(a, b, 1e-4)
    torch.manual_seed(1)
    s_e, l_e = eager.sample_and_log_prob(16)
    torch.manual_seed(1)
    s_c, l_c = compiled.sample_and_log_prob(16)
    torch.testing.assert_close(s_c, s_e, atol=atol, rtol=1e-5)
    torch.testing.assert_close(l_c, l_e, atol=atol, rtol=1e-5)
    with pytest.raises(ValueError):  # the checks stay in front of the compiled code
        compiled.log_prob(torch.full((2, 4), float("nan")))


def test_compile_traces_realnvp_in_one_graph_and_matches_eager():
    torch._dynamo.reset()
    eager, compiled = _pair("RealNVP", depth=3, hidden=(16,))
    exactflow.compile(compiled, backend="aot_eager", fullgraph=True)  # fullgraph: no graph breaks, no host syncs
    _check_same(eager, compiled, 1e-6)


def test_compile_rejects_what_is_not_a_flow():
    with pytest.raises(ValueError):
        exactflow.compile(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    torch._dynamo.reset()
    eager, compiled = _pair("RealNVP", depth=3, hidden=(16,))
    exactflow.compile(compiled)
    _check_same(eager, compiled, 1e-5)


@pytest.mark.parametrize("name", ["MAF", "NSFAutoregressive"])
def test_compile_traces_masked_flows_in_one_graph_without_gradients(name):
    # the eager flow takes the backend's no-grad routes, the compiled one traces the reference maths
    torch._dynamo.reset()
    eager, compiled = _pair(name, depth=2, hidden=(16, 16))
    exactflow.compile(compiled, backend="aot_eager", fullgraph=True)
    x = torch.randn(32, 4)
    with torch.no_grad():
        torch.testing.assert_close(compiled.log_prob(x), eager.log_prob(x), atol=1e-6, rtol=1e-5)
        for flow in (eager, compiled):  # an in-place weight update must reach both
            for p in flow.parameters():
                p.mul_(0.9)
        torch.testing.assert_close(compiled.log_prob(x), eager.log_prob(x), atol=1e-6, rtol=1e-5)
    _check_same(eager, compiled, 1e-6)
