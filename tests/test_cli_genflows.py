"""The command-line paths of TarFlow's recipe and of flow matching, end to end on tiny settings: training noise
recorded in the run and denoised samples, the Jacobi sampler, class-conditional training with guided samples,
the OT coupling and reflow; the same options through `exactflow.fit`."""

import json

import numpy as np
import pytest
import torch

import exactflow
from exactflow import checkpoint, fit
from exactflow.cli import main
from exactflow.data import registry as datasets

PNG = b"\x89PNG\r\n\x1a\n"
TINY_TARFLOW = ["--flow", "TarFlow", "--depth", "2", "--flow-arg", "channels=8", "--flow-arg", "heads=2",
                "--flow-arg", "layers_per_block=1", "--flow-arg", "patch=4", "--batch-size", "32", "--steps", "2",
                "--eval-every", "2", "--quiet"]


def _sample(run, *options) -> torch.Tensor:
    out = run.parent / "s.npy"
    assert main(["sample", str(run), "-n", "3", *options, "-o", str(out)]) == 0
    return torch.from_numpy(np.load(out))


def test_digits_labels_are_the_digits_of_the_same_split():
    plain, labelled = datasets["digits"](), datasets["digits"](labels=True)
    assert plain.context is None and torch.equal(plain.test, labelled.test)
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32)).flatten(1)
    for x, y in zip((labelled.train, labelled.test), (labelled.context[0], labelled.context[2]), strict=True):
        idx = [int((images == row).all(1).nonzero()[0, 0]) for row in x[:20].flatten(1)]
        assert y.shape == (len(x), 1) and torch.equal(y[:20, 0], torch.from_numpy(raw.target[idx]).float())


def test_class_conditional_tarflow_with_noise_trains_and_samples_by_every_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits", *TINY_TARFLOW, "--noise", "0.05", "--data-arg", "labels=true",
                 "--flow-arg", "classes=10", "--out", str(run)]) == 0
    assert "bits/dim" in capsys.readouterr().out
    assert (run / "samples.png").read_bytes()[:8] == PNG  # one row per class
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["kwargs"]["noise"] == 0.05 and config["spec"]["kwargs"]["classes"] == 10
    flow = checkpoint.load(run)
    assert flow.noise == 0.05 and not flow.training

    assert main(["sample", str(run), "-n", "3", "-o", str(tmp_path / "x.npy")]) == 2
    assert "class-conditional (10 classes): pass --label K" in capsys.readouterr().err
    guided = _sample(run, "--label", "3", "--guidance", "2")
    torch.manual_seed(0)
    torch.testing.assert_close(guided, flow.sample(3, label=3, guidance=2.0), rtol=0, atol=1e-6)
    raw = _sample(run, "--label", "3", "--no-denoise")
    torch.manual_seed(0)
    torch.testing.assert_close(raw, flow.sample(3, label=3, denoise=False), rtol=0, atol=1e-6)
    assert not torch.allclose(raw, _sample(run, "--label", "3"))  # denoised by default
    # Jacobi's default tolerance is 84 eps per block; 1e-4 bounds the difference after the logit's inverse
    torch.testing.assert_close(_sample(run, "--label", "3", "--sampler", "jacobi", "--segments", "2"),
                               _sample(run, "--label", "3"), rtol=0, atol=1e-4)


def test_recipe_options_are_refused_where_they_do_not_apply(tmp_path, capsys):
    base = ["--steps", "2", "--quiet", "--no-plots", "--data-arg", "train=64", "--data-arg", "valid=16",
            "--data-arg", "test=16", "--hidden", "8", "--depth", "2"]
    assert main(["train", "moons", *base, "--noise", "0.1", "--out", str(tmp_path / "a")]) == 2
    assert "--noise is for flows trained with noise" in capsys.readouterr().err
    assert main(["train", "moons", *base, "--reflow", "3", "--out", str(tmp_path / "b")]) == 2
    assert "--reflow apply to --objective flow-matching" in capsys.readouterr().err
    assert main(["train", "moons", *base, "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "c"), "-n", "2", "--no-denoise", "-o", str(tmp_path / "s.npy")]) == 2
    assert "--no-denoise is for TarFlow" in capsys.readouterr().err


def test_flow_matching_with_ot_coupling_and_reflow_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "fm"
    assert main(["train", "moons", "--flow", "CNF", "--objective", "flow-matching", "--coupling", "ot", "--reflow",
                 "3", "--hidden", "8", "--flow-arg", "steps=4", "--steps", "4", "--eval-every", "2", "--batch-size",
                 "32", "--data-arg", "train=128", "--data-arg", "valid=32", "--data-arg", "test=32", "--quiet",
                 "--no-plots", "--out", str(run)]) == 0
    assert "test NLL" in capsys.readouterr().out
    header = checkpoint.info(run / "model.safetensors")["info"]
    assert header["reflow"] == {"steps": 3, "pairs": 128} and header["options"]["coupling"] == "ot"


def test_fit_takes_the_coupling_by_keyword():
    x = datasets.build("moons", train=128, valid=32, test=32)
    torch.manual_seed(0)
    flow = exactflow.build("CNF", features=2, hidden=[8], steps=4)
    history = fit(flow, x, objective="flow-matching", coupling="ot", steps=4, batch_size=32, eval_every=2,
                  progress=False)
    assert history.status == "finished" and history.objective == "flow-matching"
    with pytest.raises(ValueError, match="coupling='ot' is an option of objective='flow-matching'"):
        fit(flow, x, objective="likelihood", coupling="ot", steps=1)
    with pytest.raises(ValueError, match="coupling must be one of"):
        fit(flow, x, objective="flow-matching", coupling="sinkhorn", steps=1)
