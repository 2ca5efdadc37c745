"""Flow matching beyond the basic loss: minibatch OT couplings, the adaptive (dopri5) solver, reflow."""

import pytest
import torch

from exactflow import fit
from exactflow.flows import registry as flows
from exactflow.objectives import FlowMatching
from exactflow.transforms.continuous import CNF, flow_matching_loss, ot_pairing, reflow, straightness


def _moons(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * torch.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], -1) * 1.5 + 0.05 * torch.randn(n, 2, generator=g)


def test_ot_pairing_is_a_permutation_that_shortens_paths():
    torch.manual_seed(0)
    x1 = _moons(256)
    x0 = torch.randn_like(x1)
    paired = ot_pairing(x0, x1)
    assert torch.equal(paired.sort(0).values, x0.sort(0).values)  # a reordering of the noise, nothing else
    independent = (x1 - x0).square().sum(-1).mean()
    ot = (x1 - paired).square().sum(-1).mean()
    assert ot < 0.5 * independent, (float(ot), float(independent))


def test_ot_pairing_keeps_data_order_with_context():
    torch.manual_seed(1)
    x, c = torch.randn(32, 2), torch.randn(32, 3)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, xt, t, context):
            seen["context"] = context
            return torch.zeros_like(xt)

    cnf = flows["CNF"](features=2, context=3, hidden=(8,)).transform
    cnf.velocity = Spy()
    flow_matching_loss(cnf, x, c, coupling="ot")
    assert seen["context"] is c  # each data row keeps its context; only the noise is reordered


def test_unknown_coupling_is_refused():
    with pytest.raises(ValueError, match="coupling"):
        FlowMatching(torch.randn(8, 2), coupling="sinkhorn")
    with pytest.raises(ValueError, match="coupling"):
        flow_matching_loss(flows["CNF"](features=2, hidden=(8,)), torch.randn(8, 2), coupling="nope")


@pytest.mark.parametrize("context", [0, 1])
def test_ot_flow_matching_trains_through_fit(context):
    torch.manual_seed(0)
    x = _moons(512)
    c = (x[:, :1] > 0.75).float() if context else None
    flow = flows["CNF"](features=2, context=context, hidden=(32, 32), steps=8)
    train = (x, c) if context else x
    objective = FlowMatching(train, coupling="ot")
    before = objective.score(flow) if objective.valid is not None else None
    with torch.no_grad():
        nll0 = -flow.log_prob(x[:128], *([c[:128]] if context else [])).mean().item()
    history = fit(flow, objective=objective, steps=150, batch_size=128, lr=3e-3, eval_every=150)
    assert history.status != "diverged"
    with torch.no_grad():
        nll = -flow.log_prob(x[:128], *([c[:128]] if context else [])).mean().item()
    assert before is None
    assert nll < nll0 - 0.3, (nll0, nll)


def _random_cnf(solver, rtol=1e-5, atol=1e-5, **kwargs):
    torch.manual_seed(0)
    flow = flows["CNF"](features=3, hidden=(16, 16), **kwargs)
    flow.transform.solver, flow.transform.rtol, flow.transform.atol = solver, rtol, atol  # the preset takes no solver
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)
    return flow


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_dopri5_log_prob_agrees_with_many_step_rk4(trace):
    rk4 = _random_cnf("rk4", steps=64, trace=trace)
    dopri = _random_cnf("dopri5", rtol=1e-7, atol=1e-7, trace=trace)
    x = torch.randn(16, 3, dtype=torch.float64)
    rk4.double(), dopri.double()
    torch.manual_seed(3)
    with torch.no_grad():
        ref = rk4.log_prob(x)
    torch.manual_seed(3)  # the same Hutchinson probe
    with torch.no_grad():
        lp = dopri.log_prob(x)
    assert torch.allclose(lp, ref, atol=1e-5), (lp - ref).abs().max()
    assert rk4.transform.nfe == 4 * 64
    assert 0 < dopri.transform.nfe < 4 * 64  # adaptive: reported, and fewer than the fixed grid here


def test_dopri5_round_trip_and_gradients():
    flow = _random_cnf("dopri5", rtol=1e-6, atol=1e-6)
    cnf = flow.transform
    x = torch.randn(32, 3)
    z, ladj = cnf(x)
    forward_nfe = cnf.nfe
    assert forward_nfe > 0
    back, ladj_back = cnf.inverse(z)
    assert torch.allclose(back, x, atol=1e-3)
    assert torch.allclose(ladj, -ladj_back, atol=1e-3)
    (z.square().sum() + ladj.sum()).backward()  # plain backprop through the dopri5 steps
    grads = [p.grad for p in cnf.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_dopri5_rows_depend_on_the_batch_only_to_tolerance():
    flow = _random_cnf("dopri5", rtol=1e-5, atol=1e-5)
    x = torch.randn(64, 3)
    with torch.no_grad():
        alone, together = flow.log_prob(x[:4]), flow.log_prob(x)[:4]
    assert torch.allclose(alone, together, atol=1e-3)


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="solver"):
        CNF(2, solver="euler")
    with pytest.raises(ValueError, match="rtol"):
        CNF(2, solver="dopri5", rtol=0.0)


def test_reflow_straightens_the_paths():
    torch.manual_seed(0)
    flow = flows["CNF"](features=2, hidden=(32, 32), steps=8)
    fit(flow, objective=FlowMatching(_moons(1024)), steps=300, batch_size=256, lr=3e-3, eval_every=300,
        progress=False)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(5))
    before = straightness(flow, z, steps=16)
    history = reflow(flow, 1024, steps=300, batch_size=256, lr=1e-3, progress=False)
    after = straightness(flow, z, steps=16)
    assert history.status != "diverged"
    assert after < 0.5 * before, (float(before), float(after))


def test_reflow_with_context_keeps_each_pair_under_its_row():
    torch.manual_seed(0)
    flow = flows["CNF"](features=2, context=1, hidden=(8,), steps=4)
    c = torch.randint(0, 2, (64, 1)).float()
    history = reflow(flow, 64, context=c, steps=3, batch_size=16, progress=False)
    assert len(history.train) > 0
    with pytest.raises(ValueError, match="rows"):
        reflow(flow, 32, context=c, steps=1)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_sample_skips_the_divergence_and_equals_rsample(solver):
    torch.manual_seed(0)
    flow = flows["CNF"](features=3, context=1, hidden=(8,), steps=4, solver=solver, rtol=1e-6, atol=1e-6)
    for p in flow.parameters():
        torch.nn.init.normal_(p, std=0.5)
    c = torch.tensor([[0.5], [-1.0]])
    torch.manual_seed(1)
    fast = flow.sample(5, c)
    nfe = flow.transform.nfe
    torch.manual_seed(1)
    full = flow.rsample(5, c).detach()
    assert fast.shape == (5, 2, 3) and nfe > 0
    # the same solve without the log-det state; dopri5 then steps on x alone, so it agrees to the tolerance
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-6 if solver == "rk4" else 1e-4)
