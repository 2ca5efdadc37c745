"""CNF behaviour beyond the generic contract: likelihood against an independent float64 exact-trace
solve, the Hutchinson estimate, and flow-matching training."""

import math

import pytest
import torch

from exactflow.flows import registry as flows
from exactflow.testing import randomize_
from exactflow.transforms.continuous import CNF, flow_matching_loss


def _reference_log_prob(cnf: CNF, x: torch.Tensor, steps: int) -> torch.Tensor:
    """float64, row by row: RK4 on (x, l) from t = 1 to 0 with the trace of the full autograd Jacobian."""
    v = cnf.velocity.double()
    out = []
    for row in x.double():
        def f(y, t):
            jac = torch.autograd.functional.jacobian(lambda u: v(u[None], t)[0], y)
            return v(y[None], t)[0].detach(), torch.diagonal(jac).sum()
        y, lad, h = row, torch.zeros((), dtype=torch.float64), -1.0 / steps
        for n in range(steps):
            t = torch.full((1, 1), 1.0 + n * h, dtype=torch.float64)
            k1, d1 = f(y, t)
            k2, d2 = f(y + 0.5 * h * k1, t + 0.5 * h)
            k3, d3 = f(y + 0.5 * h * k2, t + 0.5 * h)
            k4, d4 = f(y + h * k3, t + h)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            lad = lad + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
        out.append(-0.5 * (y.square().sum() + y.numel() * math.log(2 * math.pi)) + lad)
    return torch.stack(out)


def test_log_prob_agrees_with_float64_exact_trace():
    flow = randomize_(flows["CNF"](features=3, hidden=(32, 32), steps=32), 0.3)
    x = torch.randn(3, 3)
    with torch.no_grad():
        lp32 = flow.log_prob(x)  # float32, exact trace from batched vector-Jacobian products
    ref = _reference_log_prob(flow.transform, x, steps=32)
    torch.testing.assert_close(lp32.double(), ref, atol=1e-4, rtol=1e-5)
    flow.double()
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x.double()), ref, atol=1e-10, rtol=1e-10)
        flow.transform.steps = 128  # the 32-step solution is converged
        torch.testing.assert_close(flow.log_prob(x.double()), ref, atol=1e-4, rtol=1e-5)


def test_hutchinson_estimate_is_unbiased():
    torch.manual_seed(1)
    exact = randomize_(CNF(3, hidden=(16,), steps=8), 0.5)
    hutch = CNF(3, hidden=(16,), steps=8, trace="hutchinson")
    hutch.load_state_dict(exact.state_dict())
    x = torch.randn(1, 3).expand(4000, 3)
    with torch.no_grad():
        _, l_exact = exact(x[:1])
        z, l_est = hutch(x)
    torch.testing.assert_close(z[0], exact(x[:1])[0][0])
    assert l_est.std() > 0  # a genuine estimate, one noise draw per row
    assert abs(l_est.mean() - l_exact[0]) < 4 * l_est.std() / 4000**0.5


def test_flow_matching_reduces_the_loss():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(512, 2, generator=g) * torch.tensor([0.3, 1.5]) + torch.tensor([2.0, -1.0])
    flow = flows["CNF"](features=2, hidden=(32, 32), steps=8)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)

    def held_out() -> tuple[float, float]:
        torch.manual_seed(123)
        with torch.no_grad():
            return flow_matching_loss(flow, data).item(), -flow.log_prob(data).mean().item()

    before, nll_before = held_out()
    for _ in range(100):
        loss = flow_matching_loss(flow, data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, nll_after = held_out()
    assert after < 0.5 * before
    assert nll_after < nll_before - 1.0


def test_maximum_likelihood_gradients_reach_the_velocity_net():
    flow = randomize_(flows["CNF"](features=2, hidden=(8,), steps=4), 0.3)
    (-flow.log_prob(torch.randn(16, 2)).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="trace"):
        CNF(2, trace="exactly")
    with pytest.raises(ValueError, match="shape"):
        CNF(2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="CNF"):
        flow_matching_loss(flows["RealNVP"](features=2), torch.randn(4, 2))
