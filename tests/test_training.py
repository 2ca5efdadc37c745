"""fit(), checkpoints and the Standardize bijection: exact resume, divergence, corrupted files, original units."""

import json

import pytest
import torch

import exactflow
from exactflow import checkpoint
from exactflow.core import Compose
from exactflow.data import registry as datasets
from exactflow.distributions import Flow, StandardNormal
from exactflow.training import fit, standardize
from exactflow.transforms.standardize import Standardize


@pytest.fixture
def data():
    return datasets.build("8gaussians", train=512, valid=128, test=128)


def tiny_flow(features=2):
    return exactflow.build("RealNVP", features=features, depth=2, hidden=[8])


def same_weights(a, b, atol: float | None = None) -> bool:
    """Bit for bit (``atol=None``: an exact resume repeats the same float operations), or within ``atol``."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    if atol is None:
        return all(torch.equal(sa[k], sb[k]) for k in sa)
    return all(torch.allclose(sa[k].double(), sb[k].double(), atol=atol, rtol=0) for k in sa)


def test_fit_lowers_the_nll_and_records_history(data):
    flow = tiny_flow()
    before = exactflow.evaluate(flow, data.valid)["nll"]
    h = fit(flow, data, steps=60, batch_size=64, lr=3e-3, eval_every=20, progress=False)
    assert h.status == "finished" and h.step == list(range(1, 61)) and h.valid_step == [20, 40, 60]
    assert h.best_valid == min(h.valid) < before
    assert len(h.lr) == 60 and h.lr[0] > h.lr[-1]  # cosine schedule
    assert not flow.training


def test_early_stopping_restores_the_best_weights(data):
    flow = tiny_flow()
    h = fit(flow, data, steps=400, batch_size=64, lr=0.3, schedule="constant", eval_every=5, patience=2,
            progress=False)
    assert h.status == "early stopped" and "early stopped at step" in h.message
    assert h.step[-1] < 400
    assert exactflow.evaluate(flow, data.valid)["nll"] == pytest.approx(h.best_valid, abs=1e-5)


def test_resume_continues_exactly_where_it_stopped(data, tmp_path):
    path = tmp_path / "ck.safetensors"
    reference = tiny_flow()
    fit(reference, data, steps=30, batch_size=64, eval_every=10, progress=False)
    torch.manual_seed(0)
    first = tiny_flow()

    def interrupt(step, history):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, data, steps=30, batch_size=64, eval_every=10, progress=False, checkpoint=path, callback=interrupt)
    assert checkpoint.info(path)["info"]["training_state"]["step"] == 20
    torch.manual_seed(123)  # a different initialisation and global RNG: the checkpoint must restore everything
    second = tiny_flow()
    h = fit(second, data, steps=30, batch_size=64, eval_every=10, progress=False, checkpoint=path, resume=True)
    assert h.status == "finished" and h.step == list(range(1, 31))
    assert same_weights(second, reference, atol=1e-6)


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    path = tmp_path / "ck.safetensors"
    flow = tiny_flow()
    saved = {}

    def poison(step, history):
        if step == 10:
            saved["bytes"] = path.read_bytes()
            with torch.no_grad():
                next(flow.parameters()).fill_(float("nan"))

    with pytest.warns(RuntimeWarning, match="diverged at step 11"):
        h = fit(flow, data, steps=50, batch_size=64, eval_every=5, progress=False, checkpoint=path, callback=poison)
    assert h.status == "diverged" and "last good checkpoint (step 10)" in h.message
    assert path.read_bytes() == saved["bytes"]  # not overwritten
    assert all(torch.isfinite(p).all() for p in flow.parameters())  # back at the last good state
    assert all(torch.isfinite(p).all() for p in exactflow.load(path).parameters())


def test_infinite_loss_at_the_first_step_is_reported(data):
    flow = tiny_flow()
    with pytest.warns(RuntimeWarning, match=r"diverged at step 1 \(loss = inf\)"):
        h = fit(flow, torch.full((64, 2), 1e30), steps=10, progress=False)
    assert h.status == "diverged" and h.step == []


def test_bad_arguments_are_named(data):
    flow = tiny_flow()
    with pytest.raises(ValueError, match="schedule"):
        fit(flow, data, schedule="linear")
    with pytest.raises(ValueError, match="event shape"):
        fit(flow, torch.randn(10, 3))


def test_save_load_round_trip_without_pickle(data, tmp_path):
    flow = tiny_flow()
    fit(flow, data, steps=5, batch_size=32, progress=False)
    path = checkpoint.save(tmp_path / "m.safetensors", flow, info={"note": "hi"})
    loaded = exactflow.load(path)
    assert loaded.spec == flow.spec and checkpoint.info(path)["info"] == {"note": "hi"}
    x = data.test[:16]
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert json.loads(header["__metadata__"]["exactflow"])["version"] == exactflow.__version__
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed


def test_corrupted_truncated_and_mismatched_checkpoints_fail_clearly(tmp_path):
    from safetensors.torch import save_file

    flow = tiny_flow()
    path = checkpoint.save(tmp_path / "m.safetensors", flow)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        exactflow.load(bad)
    bad.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        exactflow.load(bad)
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupted or truncated"):
        exactflow.load(bad)
    save_file({"w": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not an exactflow checkpoint"):
        exactflow.load(bad)
    header, tensors = checkpoint.read(path)
    save_file(tensors, bad, metadata={"exactflow": json.dumps({**header, "format": 99})})
    with pytest.raises(ValueError, match="format 99"):
        exactflow.load(bad)
    flow.spec = {**flow.spec, "flow": "NoSuchFlow"}
    with pytest.raises(ValueError, match="cannot rebuild.*NoSuchFlow"):
        exactflow.load(checkpoint.save(bad, flow))
    other = exactflow.build("RealNVP", features=3, depth=2, hidden=[8])
    with pytest.raises(ValueError, match="shape mismatch"):
        checkpoint.load_state(other, tensors)
    with pytest.raises(ValueError, match="missing keys"):
        checkpoint.load_state(exactflow.build("RealNVP", features=2, depth=3, hidden=[8]), tensors)
    with pytest.raises(FileNotFoundError):
        exactflow.load(tmp_path / "absent.safetensors")


def test_standardize_keeps_log_likelihoods_in_original_units(tmp_path):
    x = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([100.0, 0.01, 5.0]) + torch.tensor([1e3, 0, -3])
    flow = tiny_flow(3).double()
    inner = Flow(Compose(*flow.transform.bijections), flow.base)
    standardize(flow, x)
    std = flow.transform.bijections[0]
    assert isinstance(std, Standardize) and flow.spec["preprocess"] == [{"transform": "Standardize",
                                                                          "kwargs": {"features": 3}}]
    u = (x - x.mean(0)) / x.std(0)
    expected = inner.log_prob(u) - torch.log(x.std(0)).sum()
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-10)
    assert torch.allclose(std(x)[0], u, atol=1e-6)
    # and the standardisation survives the checkpoint
    loaded = exactflow.load(checkpoint.save(tmp_path / "s.safetensors", flow)).double()
    assert torch.allclose(loaded.log_prob(x), flow.log_prob(x), atol=1e-6)
    # with an identity flow on N(0, I), Standardize alone is exactly the Gaussian with the data's mean and std
    g = Flow(Compose(), StandardNormal(3)).double()
    standardize(g, x)
    truth = torch.distributions.Normal(x.mean(0), x.std(0)).log_prob(x).sum(-1)
    assert torch.allclose(g.log_prob(x), truth, atol=1e-8)


def test_images_are_dequantised_every_batch_and_reported_in_bits_per_dim():
    from exactflow.data import Dataset
    from exactflow.images import bits_per_dim
    from exactflow.transforms.normalization import ActNorm

    g = torch.Generator().manual_seed(0)
    k = torch.randint(4, (300, 1, 4, 4), generator=g).float()  # 4 levels per pixel
    ds = Dataset("pixels", k[:200], k[200:250], k[250:], kind="image", levels=4)
    flow = Flow(Compose(ActNorm(1)), StandardNormal((1, 4, 4)))
    h = fit(flow, ds, steps=40, batch_size=50, lr=1e-2, eval_every=20, progress=False)
    assert h.unit == "bits/dim" and len(h.valid) == 2
    result = exactflow.evaluate(flow, ds.test, levels=4)
    assert result["bits_per_dim"] == pytest.approx(float(bits_per_dim(torch.tensor(-result["nll"]), (1, 4, 4), 4)))
    assert 1.8 < result["bits_per_dim"] < 2.5  # uniform pixels over 4 levels: 2 bits/dim at best


def test_image_grid_and_2d_pictures(tmp_path):
    from exactflow import plots

    path = plots.image_grid(torch.rand(10, 1, 8, 8), tmp_path / "g.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="images must have shape"):
        plots.image_grid(torch.rand(10, 8, 8), tmp_path / "g.png")
    with pytest.raises(ValueError, match="2-D"):
        plots.density(tiny_flow(3), torch.randn(10, 3), tmp_path / "d.png")


class FakeClock:
    """A clock that advances ``tick`` seconds per reading, so a time budget ends after a known number of steps."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("ema", [None, 0.9])
def test_time_budget_stops_and_restores_the_best_weights(data, ema):
    flow = tiny_flow()
    h = fit(flow, data, steps=10**6, batch_size=64, lr=3e-3, eval_every=7, ema=ema, progress=False,
            time_budget=1.0, clock=FakeClock(0.01))
    assert h.status == "time budget" and "time budget of 1 s" in h.message
    assert 10 < h.step[-1] < 100 and h.valid_step[-1] == h.step[-1]  # the last step is evaluated
    assert exactflow.evaluate(flow, data.valid)["nll"] == pytest.approx(h.best_valid, rel=1e-6)
    assert h.lr[-1] < 0.05 * h.lr[0]  # the cosine schedule annealed over the budget


def test_time_budget_on_the_wall_clock(data):
    flow = tiny_flow()
    h = fit(flow, data, steps=10**6, batch_size=64, eval_every=10, progress=False, time_budget=0.5)
    assert h.status == "time budget" and h.step[-1] < 10**6
    assert h.best_step in h.valid_step and 0 < h.seconds < 60  # a sanity bound, not a timing
    assert exactflow.evaluate(flow, data.valid)["nll"] == pytest.approx(h.best_valid, rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), True, "60s"])
def test_a_bad_time_budget_is_refused(data, bad):
    with pytest.raises(ValueError, match="time_budget must be a positive number of seconds"):
        fit(tiny_flow(), data, steps=5, progress=False, time_budget=bad)
