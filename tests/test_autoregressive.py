"""Autoregressive structure (MADE, MAF/IAF, spline layers, BNAF) beyond the generic contract."""

import copy

import pytest
import torch

from exactflow import Inverse
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
    """``layout="params"`` and ``"rows"`` are the default output in another memory order, with or without autograd."""
    made = randomize_(MADE(5, 3, (16, 16), context=2), 0.5)
    x, c = torch.randn(7, 5), torch.randn(7, 2)
    with torch.set_grad_enabled(grad):
        ref = made(x, c)
        by_params = made(x, c, layout="params")
        rows = made(x, c, layout="rows")
    assert by_params.shape == ref.shape and by_params.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(by_params, ref)
    torch.testing.assert_close(rows, ref.permute(2, 1, 0).reshape(3, -1))
    with pytest.raises(ValueError, match="layout"):
        made(x, c, layout="columns")


def test_wide_maf_log_prob_without_grad_matches_the_graph():
    """The parameter-major no-grad forward (d >= PARAM_MAJOR_MIN_FEATURES, large batches) equals the autograd path."""
    from exactflow.transforms import autoregressive as ar

    flow = randomize_(flows["MAF"](features=ar.PARAM_MAJOR_MIN_FEATURES, transforms=2, hidden=(32, 32)), 0.3)
    x = torch.randn(ar.PARAM_MAJOR_MIN_SIZE // ar.PARAM_MAJOR_MIN_FEATURES, ar.PARAM_MAJOR_MIN_FEATURES)
    with torch.no_grad():
        fast = flow.log_prob(x)
    torch.testing.assert_close(fast, flow.log_prob(x.requires_grad_()).detach(), rtol=1e-5, atol=1e-4)


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


def test_cached_masked_weights_follow_every_parameter_change():
    layer = MaskedAffineAutoregressive(FEATURES, hidden=(16,), order="random", seed=1).double()
    x = torch.randn(8, FEATURES, dtype=torch.float64)

    def outputs():
        with torch.no_grad():
            cached = layer(x)[0]
        return cached, layer(x)[0].detach()

    def optimiser_step():  # an SGD step, in place as torch.optim does it (building an optimiser costs seconds)
        layer(x)[1].sum().backward()
        with torch.no_grad():
            torch._foreach_add_([p for p in layer.parameters()], [p.grad for p in layer.parameters()], alpha=-0.1)

    def load_other():
        layer.load_state_dict(randomize_(copy.deepcopy(layer)).state_dict())

    def to_float():
        nonlocal x
        layer.float()
        x = x.float()

    for change in (lambda: randomize_(layer), load_other, optimiser_step, to_float):
        before, _ = outputs()
        change()
        cached, fresh = outputs()  # equal up to rounding: without autograd the kernel runs in place
        torch.testing.assert_close(cached, fresh, rtol=1e-12 if cached.dtype == torch.float64 else 1e-6, atol=0)
        assert cached.dtype != before.dtype or not torch.equal(cached, before)


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


def test_iaf_samples_in_one_pass_per_layer_and_maf_scores_in_one():
    maf = flows["MAF"](features=FEATURES, transforms=3, hidden=(8,))
    iaf = flows["IAF"](features=FEATURES, transforms=3, hidden=(8,))
    x = torch.randn(10, FEATURES)
    assert _count_made_calls(iaf, lambda: iaf.sample(10)) == 3
    assert _count_made_calls(iaf, lambda: iaf.sample_and_log_prob(10)) == 3
    assert _count_made_calls(maf, lambda: maf.log_prob(x)) == 3
    assert _count_made_calls(maf, lambda: maf.sample(1000)) == 0  # incremental sampler: no full MADE pass
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



def test_fused_affine_kernel_matches_autograd_and_gradcheck(monkeypatch):
    """Above ``FUSED_AFFINE_MIN_SIZE`` the affine kernel runs as one autograd node with a hand-written backward:
    same values and gradients as the plain autograd graph, ``gradcheck`` and ``gradgradcheck`` in float64."""
    import exactflow.transforms.autoregressive as ar

    kernel = ar.AffineUnivariate(scale_bound=2.0)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    p = (2 * torch.randn(7, 3, 2, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ar._BoundedAffine.apply(a, b, 2.0), (x, p))
    assert torch.autograd.gradgradcheck(lambda a, b: ar._BoundedAffine.apply(a, b, 2.0), (x, p))

    layer = MaskedAffineAutoregressive(16, context=2, hidden=(32, 32)).double()
    randomize_(layer)
    x = torch.randn(1200, 16, dtype=torch.float64)  # 19200 elements: above the threshold
    c = torch.randn(1200, 2, dtype=torch.float64)
    assert x.numel() >= ar.FUSED_AFFINE_MIN_SIZE
    results = []
    for threshold in (ar.FUSED_AFFINE_MIN_SIZE, 10**12):
        monkeypatch.setattr(ar, "FUSED_AFFINE_MIN_SIZE", threshold)
        xg = x.clone().requires_grad_(True)
        z, ladj = layer(xg, c)
        (z.square().sum() + ladj.sum()).backward()
        results.append([z, ladj, xg.grad, *[q.grad.clone() for q in layer.parameters()]])
        layer.zero_grad()
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)


def test_fast_paths_keep_the_general_behaviour():
    """The no-grad and fused fast paths fall back or follow every change where the plain code would."""
    import pickle

    from exactflow.nets import MLP, MaskedLinear

    # spline constants first made in inference mode are plain tensors: a later training step works
    nsf = flows["NSF"](features=4, transforms=2, hidden=(16, 16))
    with torch.inference_mode():
        nsf.sample(10)
    nsf.log_prob(torch.randn(8, 4)).mean().backward()

    # the fused affine kernel steps aside inside torch.func transforms (it has no vmap rule or jvp)
    layer = MaskedAffineAutoregressive(4, hidden=(8, 8))
    randomize_(layer, 0.3)
    x = torch.randn(5000, 4)  # above FUSED_AFFINE_MIN_SIZE
    params = dict(layer.named_parameters())
    buffers = dict(layer.named_buffers())

    def loss(p):
        z, ladj = torch.func.functional_call(layer, {**p, **buffers}, (x,))
        return (z.square().sum() + ladj.sum()) / len(x)

    grads = torch.func.grad(loss)(params)
    reference = torch.autograd.grad(loss(params), list(params.values()))
    for g, r in zip(grads.values(), reference):
        torch.testing.assert_close(g, r)

    # refresh() after writes through .data reaches the MADE's no-grad cache and the sampler's plan
    z = torch.randn(300, 4)
    with torch.no_grad():
        layer(x[:300]), layer.inverse(z)  # build both caches
        for m in (*layer.net.layers, layer.net.out):
            m.weight.data.mul_(1.5)
        layer.net.refresh()
        torch.testing.assert_close(layer(x[:300])[0], layer(x[:300].clone().requires_grad_())[0].detach())
        torch.testing.assert_close(layer.inverse(z)[0], layer._inverse_passes(z, None)[0], rtol=1e-4, atol=1e-4)

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

    # a compiled module still pickles (the caches are dropped, nn.Module's own state handling kept)
    compiled = MADE(3, 2, (8,))
    compiled.compile()
    pickle.dumps(compiled)
    pickle.dumps(layer)
