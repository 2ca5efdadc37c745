"""One fit for every objective: likelihood, flow matching, reverse KL and ELBO; conditional data; EMA; divergence."""

import math

import pytest
import torch

import exactflow
from exactflow import checkpoint
from exactflow.data import registry as datasets
from exactflow.objectives import ELBO, FlowMatching, MaximumLikelihood, ReverseKL
from exactflow.targets import registry as targets
from exactflow.training import COMPILE_NOTICE, fit
from exactflow.vae import VAE, binarize, load_vae


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _likelihood():
    data = datasets.build("moons", train=256, valid=64, test=64)
    return exactflow.build("RealNVP", features=2, transforms=2, hidden=[8]), {"train": data}


def _flow_matching():
    data = datasets.build("moons", train=256, valid=64, test=64)
    cnf = exactflow.build("CNF", features=2, hidden=[16], steps=4)
    return cnf, {"train": data, "objective": "flow-matching"}


def _reverse_kl():
    flow = exactflow.build("Planar", features=2, layers=4)
    return flow, {"train": targets.build("mixture"), "objective": "reverse-kl"}


def _elbo():
    g = torch.Generator().manual_seed(0)
    x = binarize(torch.rand(200, 12, generator=g) * torch.linspace(0.2, 1.0, 12))
    vae = VAE(12, latent=2, hidden=(16,), posterior="planar", layers=2)
    return vae, {"train": x[:160], "valid": x[160:], "objective": "elbo"}


CASES = {"likelihood": _likelihood, "flow-matching": _flow_matching, "reverse-kl": _reverse_kl, "elbo": _elbo}


@pytest.mark.parametrize("name", list(CASES))
def test_one_fit_serves_every_objective(name):
    model, kwargs = CASES[name]()
    h = fit(model, **kwargs, steps=40, batch_size=64, lr=1e-2, eval_every=20, progress=False)
    assert h.status == "finished" and h.objective == name and h.step == list(range(1, 41))
    assert h.valid_step == [20, 40] and all(math.isfinite(v) for v in h.valid)
    assert sum(h.train[-10:]) < sum(h.train[:10])  # the objective went down
    assert not model.training


@pytest.mark.parametrize("name", list(CASES))
def test_every_objective_diverges_the_same_way(name, tmp_path):
    model, kwargs = CASES[name]()
    path = tmp_path / "ck.safetensors"
    seen = {}

    def poison(step, history):
        if step == 10:
            seen["bytes"] = path.read_bytes()
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.warns(RuntimeWarning, match="diverged at step 11"):
        h = fit(model, **kwargs, steps=30, batch_size=32, eval_every=5, progress=False, checkpoint=path,
                callbacks=[poison])
    assert h.status == "diverged"
    assert "the model is back at step 10; the last good checkpoint (step 10) is kept in" in h.message
    assert path.read_bytes() == seen["bytes"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_objective_instances_and_mismatches_are_named():
    flow = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    x = torch.randn(100, 2)
    h = fit(flow, objective=MaximumLikelihood(x[:80], x[80:]), steps=5, eval_every=5, progress=False)
    assert h.valid_step == [5]
    with pytest.raises(ValueError, match="needs a Flow whose transform is a CNF"):
        fit(flow, x, objective="flow-matching", steps=1)
    with pytest.raises(ValueError, match="unconditional"):
        fit(exactflow.build("Planar", features=2, context=1, layers=2), objective=ReverseKL(targets.build("u1")))
    with pytest.raises(ValueError, match="needs a VAE"):
        fit(flow, objective=ELBO(x))
    with pytest.raises(ValueError, match="unknown objective"):
        fit(flow, x, objective="score-matching")
    with pytest.raises(ValueError, match="give the data to the objective"):
        fit(flow, x, objective=FlowMatching(x))


def _conditional_data(n=600, seed=0):
    """x | c ~ N((c, -c), 0.1^2 I) for c ~ U(-2, 2): a conditional density a flow learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g) * 4 - 2
    x = torch.cat([c, -c], 1) + 0.1 * torch.randn(n, 2, generator=g)
    return x, c


def test_conditional_fit_with_context_pairs_and_early_stopping():
    x, c = _conditional_data()
    flow = exactflow.build("RealNVP", features=2, context=1, transforms=2, hidden=[16])
    before = exactflow.evaluate(flow, x[500:], context=c[500:])["nll"]
    h = fit(flow, (x[:500], c[:500]), (x[500:], c[500:]), steps=400, batch_size=64, lr=0.05, schedule="constant",
            eval_every=5, patience=2, progress=False)
    assert h.status == "early stopped" and h.step[-1] < 400
    after = exactflow.evaluate(flow, x[500:], context=c[500:])["nll"]
    assert after == pytest.approx(h.best_valid, abs=1e-5) and after < before  # best weights restored
    # the context matters: the flow scores the same x better under its own context than under another
    own = flow.log_prob(x[500:], c[500:]).mean()
    other = flow.log_prob(x[500:], -c[500:]).mean()
    assert own > other + 1.0


def test_conditional_fit_from_a_dataset_with_context_and_nan_guard(tmp_path):
    from exactflow.data import Dataset

    x, c = _conditional_data()
    ds = Dataset("cond", x[:400], x[400:500], x[500:], context=(c[:400], c[400:500], c[500:]))
    flow = exactflow.build("RealNVP", features=2, context=1, transforms=2, hidden=[8])
    path = tmp_path / "ck.safetensors"

    def poison(step, history):
        if step == 20:
            with torch.no_grad():
                next(flow.parameters()).fill_(float("inf"))

    with pytest.warns(RuntimeWarning, match="diverged at step 21"):
        h = fit(flow, ds, steps=60, batch_size=32, eval_every=10, progress=False, checkpoint=path, callback=poison)
    assert h.valid_step == [10, 20] and "last good checkpoint (step 20)" in h.message
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert math.isfinite(exactflow.evaluate(exactflow.load(path), ds.test, context=ds.context[2])["nll"])
    with pytest.raises(ValueError, match="context features"):
        fit(flow, x, steps=1)  # a conditional flow without context


def test_ema_changes_evaluation_and_is_what_is_saved(tmp_path):
    data = datasets.build("moons", train=256, valid=64, test=64)
    plain = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    averaged = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    averaged.load_state_dict(plain.state_dict())
    h0 = fit(plain, data, steps=30, batch_size=64, lr=1e-2, eval_every=10, progress=False)
    path = tmp_path / "ema.safetensors"
    h1 = fit(averaged, data, steps=30, batch_size=64, lr=1e-2, eval_every=10, progress=False, ema=0.9,
             checkpoint=path)
    assert h0.train == h1.train  # the same optimisation ...
    assert h0.valid != h1.valid  # ... evaluated on different (averaged) weights
    assert not same_weights(plain, averaged)
    assert exactflow.evaluate(averaged, data.valid)["nll"] == pytest.approx(h1.best_valid, abs=1e-5)
    saved = exactflow.load(path)  # the checkpoint's model tensors are the averaged weights of the last evaluation
    assert exactflow.evaluate(saved, data.valid)["nll"] == pytest.approx(h1.valid[-1], abs=1e-5)
    with pytest.raises(ValueError, match="ema must be a decay"):
        fit(plain, data, steps=1, ema=1.5)


def test_ema_resumes_exactly(tmp_path):
    data = datasets.build("moons", train=256, valid=64, test=64)
    torch.manual_seed(0)
    reference = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    torch.manual_seed(0)
    first = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    kwargs = {"steps": 30, "batch_size": 64, "eval_every": 10, "ema": 0.95, "progress": False}
    h_ref = fit(reference, data, **kwargs)
    path = tmp_path / "ck.safetensors"

    def interrupt(step, history):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, data, **kwargs, checkpoint=path, callbacks=[interrupt])
    assert checkpoint.info(path)["info"]["training_state"]["ema"] == 0.95
    torch.manual_seed(123)
    second = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    h = fit(second, data, **kwargs, checkpoint=path, resume=True)
    assert h.train == h_ref.train and h.valid == h_ref.valid
    assert same_weights(second, reference)
    with pytest.raises(ValueError, match="written with ema=0.95"):
        fit(second, data, **{**kwargs, "ema": None}, checkpoint=path, resume=True)


def test_vae_checkpoint_resumes_exactly_and_loads(tmp_path):
    options = {"steps": 10, "batch_size": 32, "eval_every": 5, "progress": False}
    torch.manual_seed(0)
    reference, kwargs = _elbo()
    h_ref = fit(reference, **kwargs, **options)
    torch.manual_seed(0)
    model, _ = _elbo()
    path = tmp_path / "vae.safetensors"

    def interrupt(step, history):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, **kwargs, **options, checkpoint=path, callbacks=[interrupt])
    torch.manual_seed(1)
    again, _ = _elbo()
    h = fit(again, **kwargs, **options, checkpoint=path, resume=True)
    assert h.train == h_ref.train and same_weights(again, reference)
    assert same_weights(load_vae(path), again)
    damaged = bytearray(path.read_bytes())
    damaged[-2] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_vae(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="use exactflow.load for flows"):
        load_vae(checkpoint.save(tmp_path / "flow.safetensors", exactflow.build("Planar", features=2, layers=2)))


def test_compile_prints_a_notice_before_the_first_call(monkeypatch, capsys):
    from exactflow import distributions

    calls = []
    monkeypatch.setattr(distributions, "compile_flow", lambda flow: calls.append(flow) or flow)
    flow = exactflow.build("RealNVP", features=2, transforms=2, hidden=[8])
    fit(flow, torch.randn(64, 2), steps=2, progress=False, compile=True)
    assert calls == [flow]
    assert COMPILE_NOTICE.format(name="RealNVP") in capsys.readouterr().err


# -- the command line ---------------------------------------------------------------------------------------------
TINY_CLI = ["--data-arg", "train=256", "--data-arg", "valid=64", "--data-arg", "test=64", "--batch-size", "64",
            "--quiet", "--no-plots", "--threads", "1"]


def test_cli_flow_matching_with_ema_and_compile_notice(tmp_path, monkeypatch, capsys):
    import json

    from exactflow import distributions
    from exactflow.cli import main

    monkeypatch.setattr(distributions, "compile_flow", lambda flow: flow)  # the notice, not the minute
    run = tmp_path / "fm"
    assert main(["train", "moons", "--objective", "flow-matching", "--flow", "CNF", "--hidden", "16",
                 "--flow-arg", "steps=4", "--steps", "20", "--eval-every", "10", "--ema", "0.9", "--compile",
                 *TINY_CLI, "--out", str(run)]) == 0
    captured = capsys.readouterr()
    assert COMPILE_NOTICE.format(name="CNF") in captured.err and "test NLL" in captured.out
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "finished" and config["options"]["objective"] == "flow-matching"
    assert math.isfinite(exactflow.evaluate(exactflow.load(run), torch.randn(8, 2))["nll"])


def test_cli_conditional_table_with_context_columns_then_sample_given_context(tmp_path, capsys):
    import numpy as np

    from exactflow.cli import main

    x, c = _conditional_data(300)
    table = tmp_path / "cond.csv"
    np.savetxt(table, torch.cat([x[:, :1], c, x[:, 1:]], 1).numpy(), delimiter=",", header="a,temp,b", comments="")
    run = tmp_path / "cond"
    assert main(["train", str(table), "--context-cols", "temp", "--transforms", "2", "--hidden", "8", "--steps", "20",
                 "--eval-every", "10", "--batch-size", "64", "--quiet", "--no-plots", "--out", str(run)]) == 0
    flow = exactflow.load(run)
    assert flow.context_features == 1 and flow.event_shape == (2,)
    assert exactflow.checkpoint.info(run)["info"]["data"]["info"]["context_columns"] == ["temp"]
    assert main(["sample", str(run), "-n", "7", "--context", "1.5", "-o", str(tmp_path / "s.csv")]) == 0
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (7, 2)
    np.savetxt(tmp_path / "ctx.csv", np.array([[1.0], [-1.0], [0.0]]), delimiter=",")
    assert main(["sample", str(run), "-n", "4", "--context", str(tmp_path / "ctx.csv"), "-o",
                 str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (12, 2)
    assert main(["eval", str(run)]) == 0 and "test NLL" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.npy")]) != 0
    assert "pass --context" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "4", "--context", "1,2", "-o", str(tmp_path / "t.npy")]) != 0
    assert "this flow takes 1" in capsys.readouterr().err
    assert main(["train", str(table), "--context-cols", "nope", "--steps", "1", "--out", str(tmp_path / "x")]) != 0
    assert "no context column named 'nope'" in capsys.readouterr().err


def test_cli_sample_temperature_for_image_flows(tmp_path, capsys):
    import numpy as np

    from exactflow.cli import main

    glow = exactflow.build("Glow", shape=[1, 4, 4], levels=2, steps=2, hidden=8)
    path = checkpoint.save(tmp_path / "glow.safetensors", glow)
    assert main(["sample", str(path), "-n", "4", "--temperature", "0.5", "-o", str(tmp_path / "g.npy")]) == 0
    assert np.load(tmp_path / "g.npy").shape == (4, 1, 4, 4)
    flow = checkpoint.save(tmp_path / "f.safetensors", exactflow.build("Planar", features=2, layers=2))
    assert main(["sample", str(flow), "-n", "4", "--temperature", "0.5", "-o", str(tmp_path / "f.npy")]) != 0
    assert "--temperature is for image flows" in capsys.readouterr().err
