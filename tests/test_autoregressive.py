"""Autoregressive structure (MADE, MAF/IAF, spline layers, BNAF) beyond the generic contract."""

import copy

import pytest
import torch

import exactflow
from exactflow import Inverse, backend
from exactflow.distributions import ConditionalDiagNormal
from exactflow.flows import registry as flows
from exactflow.nets import MADE
from exactflow.testing import check_flow, randomize_, warm_up
from exactflow.transforms import registry as transforms
from exactflow.transforms.autoregressive import MaskedAffineAutoregressive
from exactflow.transforms.bnaf import BNAF

FEATURES, CONTEXT = 5, 3


def declared_order(b):
    """The autoregressive order a transform declares (``Inverse`` keeps its bijection's), or None."""
    order = getattr(b, "order", None)
    if order is None and isinstance(b, Inverse):
        order = getattr(b.bijection, "order", None)
    return order


def _build(name, ctx):
    entry = transforms[name]
    kwargs = {"features": FEATURES, **entry.test_kwargs, "context": ctx}
    b = entry(**kwargs).double()
    d = kwargs["features"]
    x = 0.8 * torch.randn(4, d, dtype=torch.float64) + 0.3
    c = torch.randn(4, ctx, dtype=torch.float64) if ctx else None
    warm_up(b, x, c)
    randomize_(b)  # also puts noise on every masked-out weight: the masks must still hold
    return b, x, c


ORDERED = sorted(n for n, e in transforms.items()
                 if e.input == "vector" and declared_order(_build(n, 0)[0]) is not None)


def test_autoregressive_entries_declare_their_order():
    for name in ("MaskedAffineAutoregressive", "IAF", "RQSplineAutoregressive", "RQSplineCoupling", "BNAF"):
        assert name in ORDERED


def assert_triangular(jac: torch.Tensor, order: torch.Tensor, what: str) -> None:
    j = jac[order][:, order]
    upper = torch.triu(j, diagonal=1)
    assert upper.abs().max() == 0, f"{what}: output depends on later inputs in its order:\n{j}"
    assert (torch.diagonal(j) != 0).all(), f"{what}: zero on the diagonal"


@pytest.mark.parametrize("ctx", [0, CONTEXT])
@pytest.mark.parametrize("name", ORDERED)
def test_jacobian_is_triangular_in_declared_order(name, ctx):
    b, x, c = _build(name, ctx)
    order = declared_order(b)
    z, _ = b(x, c)
    for i in range(2):
        ci = None if c is None else c[i : i + 1]
        fwd = torch.autograd.functional.jacobian(lambda v, ci=ci: b(v[None], ci)[0][0], x[i])
        inv = torch.autograd.functional.jacobian(lambda v, ci=ci: b.inverse(v[None], ci)[0][0], z[i].detach())
        assert_triangular(fwd, order, f"{name} forward")
        assert_triangular(inv, order, f"{name} inverse")


MADE_CONFIGS = [
    dict(order="natural"),
    dict(order="reversed"),
    dict(order="random", seed=3),
    dict(order=torch.tensor([2, 0, 4, 1, 3])),
    dict(order="random", residual=True, hidden=(12, 12)),
    dict(order="natural", hidden=(7, 9, 11)),
]


@pytest.mark.parametrize("ctx", [0, CONTEXT])
@pytest.mark.parametrize("config", MADE_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_made_connectivity_with_and_without_grad(config, ctx):
    config = {"hidden": (16, 16), "activation": "tanh", **config}  # tanh: no dead units hiding a connection
    made = randomize_(MADE(FEATURES, 3, context=ctx, **config).double(), 0.5)
    order = made.order
    x = torch.randn(6, FEATURES, dtype=torch.float64)
    c = torch.randn(6, ctx, dtype=torch.float64) if ctx else None
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None], c[:1] if ctx else None)[0], x[0])  # (D, P, D)
    for pos, i in enumerate(order.tolist()):
        allowed = order[:pos]
        mask = torch.zeros(FEATURES, dtype=torch.bool)
        mask[allowed] = True
        assert jac[i][:, ~mask].abs().max() == 0, f"output {i} depends on a later input"
        if pos:
            assert jac[i][:, mask].abs().max() > 0, f"output {i} ignores all earlier inputs"
    # the cached (no-grad) path keeps the structure and agrees with the grad path
    with torch.no_grad():
        base = made(x, c)
        for j in range(FEATURES):
            xp = x.clone()
            xp[:, j] += 1.0
            changed = (made(xp, c) - base).abs().amax(dim=(0, 2)) > 0
            later = made.input_degrees > made.input_degrees[j]
            assert not (changed & ~later).any(), f"perturbing input {j} changed an earlier output"
    torch.testing.assert_close(base, made(x, c), rtol=1e-12, atol=1e-12)  # same maths, summed in another order


@pytest.mark.parametrize("grad", [False, True])
def test_made_layouts_hold_the_same_numbers(grad):
    """The backend's ``"params"`` and ``"rows"`` layouts are the MADE's output in another memory order."""
    made = randomize_(MADE(5, 3, (16, 16), context=2).double(), 0.5)
    x, c = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    with backend.reference():
        ref = made(x, c)
    with torch.set_grad_enabled(grad):
        by_params = backend.made_params(made, x, c, "params")
        rows = backend.made_params(made, x, c, "rows")
    assert by_params.shape == ref.shape and by_params.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(by_params, ref)
    torch.testing.assert_close(rows, ref.permute(2, 1, 0).reshape(3, -1))


def test_the_reproducers_of_stale_no_grad_results_give_zero_difference():
    """Issue 14: a weight update through ``.data`` after a no-grad call is seen by the next no-grad call."""
    for name in ("MAF", "IAF", "NSFAutoregressive"):
        f = exactflow.build(name, features=4)
        randomize_(f, 0.1)
        f.eval()
        x = torch.randn(64, 4)
        with torch.no_grad():
            f.log_prob(x), f.sample(300)
        for p in f.parameters():
            p.data.mul_(0.5)
        g = exactflow.build(name, features=4)
        g.load_state_dict(f.state_dict())
        g.eval()
        with torch.no_grad():
            assert torch.equal(f.log_prob(x), g.log_prob(x)), name
            torch.manual_seed(1)
            a = f.sample(300)
            torch.manual_seed(1)
            assert torch.equal(a, g.sample(300)), name


def test_flows_built_or_loaded_in_inference_mode_run_there_and_later():
    """Issue 14: a MAF, IAF or NSFAutoregressive made inside ``torch.inference_mode()`` (a serving process)
    scores and samples there and later under ``no_grad``, with the numbers of the flow it was loaded from."""
    for name in ("MAF", "IAF", "NSFAutoregressive"):
        source = randomize_(exactflow.build(name, features=4), 0.1).eval()
        x = torch.randn(300, 4)
        want = source.log_prob(x).detach()
        with torch.inference_mode():
            served = exactflow.build(name, features=4).eval()
            served.load_state_dict(source.state_dict())
            torch.testing.assert_close(served.log_prob(x), want)
            served.sample(300)
        with torch.no_grad():
            torch.testing.assert_close(served.log_prob(x), want)
            served.sample(300)


def test_made_context_reaches_every_output_and_degrees_are_exposed():
    made = randomize_(MADE(FEATURES, 2, hidden=(10, 10), context=CONTEXT).double())
    x, c = torch.randn(1, FEATURES, dtype=torch.float64), torch.randn(1, CONTEXT, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(x, v), c)[0]  # (D, P, 1, C)
    assert (jac.abs().sum(dim=(-1, -2)) > 0).all()
    assert len(made.hidden_degrees) == 2
    for deg in made.hidden_degrees:
        assert deg.min() == 0 and deg.max() == FEATURES - 1
    for deg in MADE(FEATURES, 2, hidden=(10, 10)).hidden_degrees:
        assert deg.min() == 1 and deg.max() == FEATURES - 1
    assert sorted(made.input_degrees.tolist()) == list(range(1, FEATURES + 1))


def test_no_grad_results_follow_every_parameter_change():
    """Without autograd the layer is evaluated from the current weights: after a ``.data`` write, an optimiser
    step, ``load_state_dict`` and a dtype move, the no-grad output equals the reference maths at once."""
    layer = MaskedAffineAutoregressive(FEATURES, hidden=(16,), order="random", seed=1).double()
    x = torch.randn(8, FEATURES, dtype=torch.float64)

    def outputs():
        with torch.no_grad():
            fast = layer(x)[0]
        with backend.reference():
            return fast, layer(x)[0].detach()

    def optimiser_step():
        layer(x)[1].sum().backward()
        torch.optim.SGD(layer.parameters(), lr=0.1).step()

    def load_other():
        layer.load_state_dict(randomize_(copy.deepcopy(layer)).state_dict())

    def to_float():
        nonlocal x
        layer.float()
        x = x.float()

    def write_data():
        for p in layer.parameters():
            p.data.mul_(0.5)

    for change in (lambda: randomize_(layer), write_data, load_other, optimiser_step, to_float):
        before, _ = outputs()
        change()
        fast, reference = outputs()
        # the same sums in another order: a few roundings of the output's size apart
        eps = torch.finfo(fast.dtype).eps
        torch.testing.assert_close(fast, reference, rtol=64 * eps, atol=64 * eps * reference.abs().max().item())
        assert fast.dtype != before.dtype or not torch.equal(fast, before)


def test_random_order_survives_state_dict_into_a_differently_seeded_model():
    a = randomize_(MaskedAffineAutoregressive(FEATURES, hidden=(16,), order="random", seed=1).double())
    b = MaskedAffineAutoregressive(FEATURES, hidden=(16,), order="random", seed=2).double()
    assert not torch.equal(a.order, b.order)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, FEATURES, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0]) and torch.equal(a.order, b.order)


def _count_made_calls(flow, fn):
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in flow.modules() if isinstance(m, MADE)]
    fn()
    for h in hooks:
        h.remove()
    return len(calls)


def test_iaf_samples_in_one_pass_per_layer_and_maf_scores_in_one(monkeypatch):
    maf = flows["MAF"](features=FEATURES, depth=3, hidden=(8,))
    iaf = flows["IAF"](features=FEATURES, depth=3, hidden=(8,))
    x = torch.randn(10, FEATURES)
    with backend.reference():  # the maths: one MADE pass per layer one way, D the other
        assert _count_made_calls(iaf, lambda: iaf.sample(10)) == 3
        assert _count_made_calls(iaf, lambda: iaf.sample_and_log_prob(10)) == 3
        assert _count_made_calls(maf, lambda: maf.log_prob(x)) == 3
        assert _count_made_calls(maf, lambda: maf.sample(10)) == 3 * FEATURES
    passes = []
    made_params = backend.made_params
    monkeypatch.setattr(backend, "made_params", lambda *a: passes.append(1) or made_params(*a))
    iaf.sample(10)  # the backend's route: still one pass a layer
    assert len(passes) == 3
    assert _count_made_calls(maf, lambda: maf.sample(1000)) == 0 and len(passes) == 3  # incremental: no full pass
    assert _count_made_calls(maf, lambda: maf.rsample(10)) == 3 * FEATURES  # differentiable: D passes a layer


@pytest.mark.parametrize("name", ["MAF", "IAF", "NSF", "NSFAutoregressive", "BNAF"])
def test_conditional_base_and_batched_context_sampling(name):
    entry = flows[name]
    kwargs = {"features": 3, **entry.test_kwargs, "context": CONTEXT, "conditional_base": True}
    flow = entry(**kwargs).double()
    assert isinstance(flow.base, ConditionalDiagNormal)
    x = torch.randn(8, kwargs["features"], dtype=torch.float64)
    c = torch.randn(8, CONTEXT, dtype=torch.float64)
    warm_up(flow, x, c)
    randomize_(flow, 0.2)
    check_flow(flow, x, c, atol=entry.tolerance, name=f"{name}+ConditionalDiagNormal")
    assert flow.sample(4, c[:5]).shape == (4, 5, kwargs["features"])


def test_conditional_diag_normal_errors():
    base = ConditionalDiagNormal(2, context=3)
    with pytest.raises(ValueError, match="needs a context"):
        base.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match="expected"):
        base.rsample(4, torch.randn(5, 3))
    with pytest.raises(ValueError, match="context >= 1"):
        ConditionalDiagNormal(2, context=0)
    with pytest.raises(ValueError, match="conditional_base"):
        flows["MAF"](features=2, conditional_base=True)


def test_bnaf_is_onto_and_its_inverse_gradients_are_the_implicit_ones():
    b = randomize_(BNAF(3, hidden=(4,)).double(), 0.3)
    z = torch.tensor([[-40.0, 0.0, 60.0], [5.0, -7.0, 0.5]], dtype=torch.float64)
    x, _ = b.inverse(z)
    assert torch.allclose(b(x)[0], z, atol=1e-9)
    # d/dtheta of sum(inverse(z)) against a central finite difference
    p = b.layers[0].raw
    grad = torch.autograd.grad(b.inverse(z)[0].sum(), p)[0]
    eps, k = 1e-6, (2, 0)
    with torch.no_grad():
        p[k] += eps
        up = b.inverse(z)[0].sum()
        p[k] -= 2 * eps
        down = b.inverse(z)[0].sum()
        p[k] += eps
    assert torch.allclose(grad[k], (up - down) / (2 * eps), rtol=1e-4, atol=1e-7)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="order"):
        MADE(3, 2, order="sideways")
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 2, order=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="equal hidden widths"):
        MADE(3, 2, hidden=(8, 16), residual=True)
    with pytest.raises(ValueError, match="permutation"):
        flows["MAF"](features=3, permutation="shuffle")
    with pytest.raises(ValueError, match="alpha"):
        BNAF(3, alpha=0.0)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("MAF", {"batch_norm": True, "permutation": "random"}),
        ("MAF", {"residual": True, "permutation": "lu", "hidden": (8, 8)}),
        ("IAF", {"residual": True, "scale_bound": None}),
        ("NSFAutoregressive", {"residual": True, "hidden": (8, 8), "permutation": "random"}),
        ("NSF", {"mask": "alternating", "permutation": "reverse"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_preset_options_keep_the_contract(name, kwargs):
    entry = flows[name]
    flow = entry(**{"features": 4, **entry.test_kwargs, "context": CONTEXT, **kwargs}).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    c = torch.randn(16, CONTEXT, dtype=torch.float64)
    warm_up(flow, x, c)
    randomize_(flow, 0.2)
    check_flow(flow, x, c, atol=entry.tolerance, name=f"{name}{kwargs}")



def test_fast_paths_keep_the_general_behaviour():
    """The backend steps aside, or follows every change, where the plain code would."""
    import pickle

    from exactflow.nets import MLP, MaskedLinear

    # spline constants first made in inference mode are plain tensors: a later training step works
    nsf = flows["NSF"](features=4, depth=2, hidden=(16, 16))
    with torch.inference_mode():
        nsf.sample(10)
    nsf.log_prob(torch.randn(8, 4)).mean().backward()

    # torch.func transforms: gradients by torch.func.grad and vmap without autograd equal the plain ones
    layer = MaskedAffineAutoregressive(4, hidden=(8, 8))
    randomize_(layer, 0.3)
    x = torch.randn(5000, 4)
    params = dict(layer.named_parameters())
    buffers = dict(layer.named_buffers())

    def loss(p):
        z, ladj = torch.func.functional_call(layer, {**p, **buffers}, (x,))
        return (z.square().sum() + ladj.sum()) / len(x)

    grads = torch.func.grad(loss)(params)
    reference = torch.autograd.grad(loss(params), list(params.values()))
    for g, r in zip(grads.values(), reference, strict=True):
        torch.testing.assert_close(g, r)
    with torch.no_grad():
        batched = torch.func.vmap(lambda v: layer(v)[0])(x.view(10, 500, 4))
    torch.testing.assert_close(batched.reshape(5000, 4), layer(x)[0].detach())

    # a conditional layer called without its context fails clearly, at every batch size
    conditional = MaskedAffineAutoregressive(4, context=2, hidden=(8, 8))
    for n in (3, 300):
        with torch.no_grad(), pytest.raises(ValueError, match="context"):
            conditional.inverse(torch.randn(n, 4))

    # inputs F.linear accepts keep working without autograd: no bias, 1-D and 3-D inputs
    with torch.no_grad():
        masked = MaskedLinear(3, 2, torch.ones(2, 3), bias=False)
        torch.testing.assert_close(masked(torch.ones(4, 3)), torch.ones(4, 3) @ masked.weight.t())
        mlp = MLP(3, 2, (8,), zero_last=False)
        for shape in ((3,), (4, 5, 3)):
            v = torch.randn(shape)
            torch.testing.assert_close(mlp(v), torch.nn.Sequential(*mlp)(v))

    # a parametrised weight (weight norm) goes through the MADE's no-grad path
    made = MADE(4, 2, (8, 8))
    torch.nn.utils.parametrizations.weight_norm(made.layers[0])
    with torch.no_grad():
        v = torch.randn(6, 4)
        torch.testing.assert_close(made(v), made(v.clone().requires_grad_()).detach())

    # a compiled module still pickles
    compiled = MADE(3, 2, (8,))
    compiled.compile()
    pickle.dumps(compiled)
    pickle.dumps(layer)
