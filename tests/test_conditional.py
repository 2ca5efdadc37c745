"""Conditional density estimation: the context pipeline (standardisation, embedding network), batched sampling
for many contexts, log_prob grids, saving and loading, and the errors for wrong context shapes."""

import importlib

import pytest
import torch
from torch import nn

import exactflow as ef
from exactflow.distributions import Flow, StandardNormal
from exactflow.flows import MAF, NSF, RealNVP, describe, rebuild
from exactflow.nets import ContextEmbedding, context_embedding
from exactflow.testing import check_flow, randomize_
from exactflow.transforms.coupling import AffineCoupling

torch.set_num_threads(1)


class TwoLayer(nn.Module):
    """An embedding network of the user's own (not registered): context -> 4 features."""

    def __init__(self, context: int) -> None:
        super().__init__()
        self.a = nn.Linear(context, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(c)))


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x | c ~ N(3 c_0 (1, -1), 0.3^2 I), with a context far from standard (mean 10, scale 4 and 0.01)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 2, generator=g) * torch.tensor([4.0, 0.01]) + 10.0
    u = (c[:, :1] - 10.0) / 4.0
    x = 3 * u * torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(n, 2, generator=g)
    return x, c


def test_the_transforms_see_the_embedded_context():
    flow = MAF(3, context=2, depth=2, hidden=(8, 8), embedding=[16, 5])
    assert flow.embedded_features == 5 and isinstance(flow.embedding, ContextEmbedding)
    assert all(layer.context_features == 5 for layer in flow.transform.bijections)
    flow = NSF(3, context=2, depth=2, hidden=(8,), bins=4, embedding=TwoLayer(2), conditional_base=True)
    assert flow.embedded_features == 4 and flow.base.context_features == 4


@pytest.mark.parametrize("embedding", [[16, 5], TwoLayer(2)], ids=["widths", "module"])
def test_the_embedding_is_trained_jointly(embedding):
    x, c = _data()
    flow = MAF(2, context=2, depth=2, hidden=(16, 16), embedding=embedding)
    before = [p.detach().clone() for p in flow.embedding.parameters()]
    loss = -flow.log_prob(x[:32], c[:32]).mean()
    loss.backward()
    # the conditioners' last layers start at zero, so the first gradients reach them, later ones the embedding
    assert all(p.grad is not None for p in flow.embedding.parameters())
    ef.fit(flow, (x, c), steps=20, batch_size=64, progress=False)
    assert all(not torch.equal(p, q) for p, q in zip(flow.embedding.parameters(), before, strict=True))


def test_the_embedding_runs_once_per_call():
    flow = NSF(2, context=2, depth=2, hidden=(8,), bins=4, embedding=[8, 3])
    rows: list[int] = []
    flow.embedding.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    flow.log_prob(torch.randn(50, 2), torch.randn(2))  # one context shared by 50 points
    flow.sample(40, torch.randn(6, 2))  # 40 draws for each of 6 contexts
    flow.log_prob(torch.randn(40, 6, 2), torch.randn(6, 2))  # the grid
    assert rows == [1, 6, 6]


def test_context_standardisation_is_fitted_at_fit_and_saved(tmp_path):
    x, c = _data()
    flow = ef.build("NSF", features=2, context=2, depth=2, hidden=(16,), bins=4, embedding=[8, 3])
    assert flow.standardizes_context and not bool(flow.context_fitted)
    ef.fit(flow, (x, c), steps=5, batch_size=64, progress=False)
    assert bool(flow.context_fitted)
    torch.testing.assert_close(flow.context_loc, c.double().mean(0).float())
    torch.testing.assert_close(flow.context_scale, c.double().std(0).float())
    assert {"context_loc", "context_scale", "context_fitted"} <= set(flow.state_dict())
    ef.save(tmp_path / "f.safetensors", flow)
    loaded = ef.load(tmp_path / "f.safetensors")
    flow.eval()
    assert torch.equal(loaded.context_scale, flow.context_scale)
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)


def test_a_checkpoint_from_before_context_standardisation_loads_with_fixed_identity_statistics(tmp_path):
    x, c = _data(32)
    old = randomize_(ef.build("MAF", features=2, context=2, depth=1, hidden=(8, 8), standardize_context=False))
    del old.spec["kwargs"]["standardize_context"]  # what such a checkpoint records: no word of it
    ef.save(tmp_path / "old.safetensors", old)
    loaded = ef.load(tmp_path / "old.safetensors")
    assert loaded.standardizes_context and bool(loaded.context_fitted)  # fit will not refit them
    torch.testing.assert_close(loaded.log_prob(x, c), old.eval().log_prob(x, c), rtol=0, atol=0)


def test_a_fitted_flow_keeps_its_statistics_and_fit_context_refits():
    x, c = _data()
    flow = MAF(2, context=2, depth=1, hidden=(8, 8))
    flow.fit_context(c)
    loc = flow.context_loc.clone()
    ef.fit(flow, (x, c + 100.0), steps=2, batch_size=16, progress=False)  # fitted already: kept
    assert torch.equal(flow.context_loc, loc)
    flow.fit_context(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))  # a constant column keeps scale 1
    torch.testing.assert_close(flow.context_loc, torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(flow.context_scale, torch.tensor([2**0.5, 1.0]))


def test_the_density_is_that_of_the_standardised_context():
    """log p(x | c) of a standardising flow equals the same flow without it at (c - mu) / sigma."""
    x, c = _data(32)
    flow = randomize_(RealNVP(2, context=2, depth=2, hidden=(8,)))
    plain = RealNVP(2, context=2, depth=2, hidden=(8,), standardize_context=False)
    plain.load_state_dict({k: v for k, v in flow.state_dict().items() if not k.startswith("context_")})
    flow.fit_context(c)
    torch.testing.assert_close(flow.log_prob(x, c), plain.log_prob(x, (c - c.mean(0)) / c.std(0)))


def test_a_user_embedding_is_saved_by_its_weights_and_given_again_at_load(tmp_path):
    x, c = _data(64)
    flow = MAF(2, context=2, depth=2, hidden=(8, 8), embedding=TwoLayer(2))
    randomize_(flow)
    flow.fit_context(c)
    assert describe(flow)["kwargs"]["embedding"] == {"user_module": "TwoLayer"}
    ef.save(tmp_path / "f.safetensors", flow)
    with pytest.raises(ValueError, match=r"embedding network of your own \(TwoLayer\).*embedding=TwoLayer"):
        ef.load(tmp_path / "f.safetensors")
    loaded = ef.load(tmp_path / "f.safetensors", embedding=TwoLayer(2))
    torch.testing.assert_close(loaded.log_prob(x, c), flow.eval().log_prob(x, c), rtol=0, atol=0)
    plain = MAF(2, context=2, depth=2, hidden=(8, 8), embedding=[8, 4])
    ef.save(tmp_path / "g.safetensors", plain)
    with pytest.raises(ValueError, match="has none of your own"):
        ef.load(tmp_path / "g.safetensors", embedding=TwoLayer(2))


def test_a_flow_built_by_hand_with_an_embedding_is_described_and_rebuilt():
    flow = Flow(AffineCoupling(2, 3, hidden=(8,)), StandardNormal(2), context=2, embedding=[8, 3],
                standardize_context=True)
    spec = describe(flow)
    assert spec["kwargs"] == {"context": 2, "embedding": [8, 3], "standardize_context": True}
    again = rebuild(spec)
    again.load_state_dict(flow.state_dict())
    x, c = _data(16)
    torch.testing.assert_close(again.log_prob(x, c), flow.log_prob(x, c))


@pytest.mark.parametrize("name,embedding", [("MAF", [8, 4]), ("NSF", [8, 4]), ("RealNVP", TwoLayer(3)),
                                            ("NSFAutoregressive", None)],
                         ids=["MAF-widths", "NSF-widths", "RealNVP-module", "NSFAutoregressive-none"])
def test_the_flow_contract_holds_with_the_context_pipeline(name, embedding):
    small = {"MAF": {"hidden": (16, 16)}, "NSF": {"hidden": (16,), "bins": 4}, "RealNVP": {"hidden": (16,)},
             "NSFAutoregressive": {"hidden": (16, 16), "bins": 4}}[name]
    flow = ef.build(name, features=4, context=3, depth=2, embedding=embedding, **small)
    g = torch.Generator().manual_seed(1)
    c = torch.randn(16, 3, generator=g, dtype=torch.float64) * 3 + 1
    flow.fit_context(c.float())
    randomize_(flow, 0.2)
    check_flow(flow, 0.8 * torch.randn(16, 4, generator=g, dtype=torch.float64), c, name=f"{name}+context")


def test_many_draws_for_many_contexts_in_one_pass():
    flow = randomize_(NSF(3, context=2, depth=2, hidden=(8,), bins=4, embedding=[8, 4]))
    contexts = torch.randn(5, 2)
    torch.manual_seed(0)
    s = flow.sample(7, contexts)
    assert s.shape == (7, 5, 3)
    torch.manual_seed(0)
    z = torch.randn(35, 3).reshape(7, 5, 3)  # the base draws, in the order sample takes them
    for j in range(5):  # column j is the map of its latents under context j
        torch.testing.assert_close(s[:, j], flow.from_latent(z[:, j], contexts[j]))
    x, log_q = flow.sample_and_log_prob(7, contexts)
    assert x.shape == (7, 5, 3) and log_q.shape == (7, 5)
    torch.testing.assert_close(flow.log_prob(x, contexts), log_q, rtol=1e-4, atol=1e-4)
    assert flow.sample(4, contexts[0]).shape == (4, 3)
    assert flow.sample(0, contexts).shape == (0, 5, 3)


def test_samples_follow_their_context():
    """After a short fit on x | c ~ N(3 u (1, -1), 0.3^2) (u the standardised first context column), the mean of
    the draws for each context is near 3 u (1, -1): the standard error of 400 draws is 0.015, the fit's own bias
    is what the tolerance allows for."""
    torch.manual_seed(0)
    x, c = _data(2048)
    flow = MAF(2, context=2, depth=2, hidden=(32, 32), embedding=[16, 8])
    ef.fit(flow, (x, c), steps=400, batch_size=256, lr=3e-3, progress=False)
    contexts = torch.tensor([[2.0, 10.0], [10.0, 10.0], [18.0, 10.0]])
    means = flow.sample(400, contexts).mean(0)
    u = (contexts[:, 0] - 10.0) / 4.0
    torch.testing.assert_close(means, 3 * u[:, None] * torch.tensor([1.0, -1.0]), rtol=0, atol=0.3)


def test_wrong_context_shapes_are_named():
    flow = MAF(2, context=3, depth=1, hidden=(8, 8), embedding=[8, 4])
    with pytest.raises(ValueError, match=r"context has shape \(5, 2\): expected \(batch, 3\)"):
        flow.sample(4, torch.randn(5, 2))
    with pytest.raises(ValueError, match="context has 4 rows but x has 6"):
        flow.log_prob(torch.randn(6, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"grid of 7 points for each of 5 context rows, but the context has 4 rows"):
        flow.log_prob(torch.randn(7, 5, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="needs context"):
        flow.sample(3)
    with pytest.raises(ValueError, match=r"fit_context needs context rows of shape \(n >= 2, 3\)"):
        MAF(2, context=3, depth=1, hidden=(8, 8)).fit_context(torch.randn(10, 2))
    with pytest.raises(ValueError, match="does not standardise its context"):
        MAF(2, context=3, depth=1, hidden=(8, 8), standardize_context=False).fit_context(torch.randn(10, 3))


def test_bad_embeddings_are_refused():
    with pytest.raises(ValueError, match="needs a conditional flow"):
        MAF(2, depth=1, hidden=(8, 8), embedding=[8, 4])
    with pytest.raises(ValueError, match="non-empty sequence of positive layer widths"):
        context_embedding(3, [8, 0])
    with pytest.raises(ValueError, match=r"must map a context of shape \(batch, 3\) to \(batch, features\)"):
        context_embedding(3, nn.Flatten(0))
    with pytest.raises(ValueError, match=r"failed on a context of shape \(2, 3\)"):
        context_embedding(3, nn.Linear(5, 4))


def test_auto_builds_the_measured_conditional_default_and_keeps_the_unconditional_one():
    auto = importlib.import_module("exactflow.flows.auto")  # the module (exactflow.flows.auto is the function)

    flow = ef.build("auto", features=2, context=3)
    assert flow.spec["flow"] == auto.CONDITIONAL_PRESET and flow.standardizes_context
    assert {k: flow.spec["kwargs"][k] for k in auto.CONDITIONAL_SIZE} == auto.CONDITIONAL_SIZE
    assert flow.spec["auto"]["recipe"] == auto.CONDITIONAL_RECIPE
    assert auto.recipe(flow) == {**auto.CLASSIC, **auto.CONDITIONAL_RECIPE}  # what fit takes
    assert describe(rebuild(describe(flow))) == describe(flow)  # what a checkpoint does
    assert ef.build("auto", features=2, context=3, bound=5.0).spec["kwargs"]["bound"] == 5.0  # overrides win
    plain = ef.build("auto", features=2)
    assert plain.spec["flow"] == auto.PRESET and {k: plain.spec["kwargs"][k] for k in auto.SIZE} == auto.SIZE
    with pytest.raises(ValueError, match="context >= 1"):
        auto.conditional(2, 0)


def test_fit_trains_the_conditional_auto_flow_with_its_recipe():
    x, c = _data(512)
    flow = ef.build("auto", features=2, context=2, depth=2, hidden=(16,))
    before = flow.log_prob(x, c).mean()
    history = ef.fit(flow, (x[:448], c[:448]), (x[448:], c[448:]), steps=40, eval_every=20, progress=False)
    assert history.lr[-1] == flow.spec["auto"]["recipe"]["lr"]  # constant lr 1e-2: the recipe, not CLASSIC's
    assert bool(flow.context_fitted) and flow.log_prob(x, c).mean() > before
