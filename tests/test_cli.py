"""The command line end to end on tiny settings: every subcommand, config files, errors as one line,
resume after kill -9, and a 2-process DistributedDataParallel run against a single process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import exactflow
from exactflow import checkpoint
from exactflow.cli import main
from exactflow.data import registry as datasets
from exactflow.flows.auto import PRESET, RECIPE

SMALL = ["--hidden", "8", "--depth", "2", "--batch-size", "64", "--quiet"]
TINY = ["--data-arg", "train=512", "--data-arg", "valid=64", "--data-arg", "test=64", *SMALL]
PNG, GIF = b"\x89PNG\r\n\x1a\n", b"GIF8"



def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def weights_close(a, b, atol):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol, rtol=0) for k in sa)


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--resume" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("RealNVP", "Standardize", "moons", "swissroll", "tabular"))


def test_train_eval_sample_plot_check_on_2d_data(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "8gaussians", *TINY, "--steps", "20", "--eval-every", "10", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test NLL" in out and str(run / "model.safetensors") in out
    for name in ("density.png", "samples.png", "morph.png", "curves.png"):
        assert (run / name).read_bytes()[:8] == PNG, name
    assert (run / "morph.gif").read_bytes()[:4] == GIF
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["flow"] == PRESET and config["data"]["info"]["sizes"] == [512, 64, 64]
    assert config["spec"]["auto"]["recipe"] == RECIPE  # no --flow: the measured default, its recipe recorded

    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nll"] == pytest.approx(config["test"]["nll"]) and result["n"] == 64

    assert main(["sample", str(run), "-n", "50", "-o", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    assert main(["sample", str(run), "-n", "7", "-o", str(tmp_path / "s.csv")]) == 0
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (7, 2)
    assert main(["sample", str(run), "-n", "100", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG

    assert main(["plot", str(run / "model.safetensors"), "--out", str(tmp_path / "pics")]) == 0
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == [
        "curves.png", "density.png", "morph.gif", "morph.png", "samples.png"]

    capsys.readouterr()
    assert main(["check", str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {PRESET} passed")


def test_csv_with_toml_and_yaml_config_standardised_inside_the_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * [100.0, 0.01, 5.0] + [1000.0, 0.0, -3.0]
    np.savetxt(tmp_path / "t.csv", x, delimiter=",", header="a,b,c", comments="")
    (tmp_path / "run.toml").write_text(
        f'data = "{tmp_path / "t.csv"}"\nflow = "RealNVP"\nsteps = 30\neval-every = 15\n'
        'hidden = [8]\nflow_args = { depth = 2, batch_norm = true }\n'
        "plots = false\nquiet = true\n"
    )
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "a"), "--steps", "20"]) == 0
    options = json.loads((tmp_path / "a" / "config.json").read_text())["options"]
    assert options["steps"] == 20 and options["hidden"] == [8]  # the command line wins over the file
    flow = exactflow.load(tmp_path / "a")
    assert flow.spec["preprocess"][0]["transform"] == "Standardize" and flow.spec["kwargs"]["batch_norm"] is True
    # the reported NLL is in the table's own units: the same as scoring the raw test rows
    ds = datasets.build("tabular", path=str(tmp_path / "t.csv"))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "a"), "--json"]) == 0
    nll = json.loads(capsys.readouterr().out)["nll"]
    assert nll == pytest.approx(-flow.log_prob(ds.test).mean().item(), rel=1e-5)
    assert 4 < nll < 12  # a near-Gaussian with log-scales (4.6, -4.6, 1.6): about 5.9 nats at best

    (tmp_path / "run.yaml").write_text(f"data: {tmp_path / 't.csv'}\nsteps: 10\nhidden: [8]\nplots: false\n"
                                       "quiet: true\nstandardize: false\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "b")]) == 0
    assert exactflow.load(tmp_path / "b").spec["preprocess"] == []


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "absent")]) == 2
    assert "does not exist" in error_line(capsys)
    assert main(["train", "moons", "--flow", "Nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown flow 'Nope'" in error_line(capsys)
    assert main(["train", "moons", "--flow", "Radial", "--hidden", "8", "--out", str(tmp_path / "x")]) == 2
    assert "has no option 'hidden'" in error_line(capsys)
    (tmp_path / "c.toml").write_text("stepz = 3\n")
    assert main(["train", "moons", "--config", str(tmp_path / "c.toml")]) == 2
    assert "unknown option(s) stepz" in error_line(capsys)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["check", str(tmp_path / "broken.safetensors")]) == 2
    assert "corrupted or truncated" in error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no checkpoint" in error_line(capsys)
    np.save(tmp_path / "huge.npy", np.full((200, 2), 1e30))
    assert main(["train", str(tmp_path / "huge.npy"), "--no-standardize", "--out", str(tmp_path / "h"), *SMALL]) == 1
    assert "training diverged at step 1 (loss = inf)" in error_line(capsys)


@pytest.mark.parametrize(("base", "base_args"), [("GaussianMixture", ["components=3"]),
                                                  ("ResampledBase", ["hidden=[8]", "truncation=5"])])
def test_train_with_a_learned_base_and_reuse_the_run(tmp_path, capsys, base, base_args):
    """--base/--base-arg give the flow a registered base; the run records it, and eval/sample rebuild it."""
    run = tmp_path / "run"
    flags = [item for arg in base_args for item in ("--base-arg", arg)]
    assert main(["train", "moons", *TINY, "--steps", "10", "--eval-every", "5", "--no-plots", "--base", base, *flags,
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["base"]["base"] == base and config["options"]["base"] == base
    flow = exactflow.load(run)
    assert type(flow.base).__name__ == base
    key, value = base_args[0].split("=")
    assert config["spec"]["base"]["kwargs"][key] == json.loads(value) == checkpoint.info(run)["spec"]["base"][
        "kwargs"][key]
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(config["test"]["nll"])
    assert main(["sample", str(run), "-n", "20", "-o", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20, 2)


def test_base_errors_are_one_clear_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x"), *TINY, "--steps", "1"]
    assert main(["train", "moons", "--base", "Nope", *out]) == 2
    assert "unknown base distribution 'Nope'" in error_line(capsys)
    assert main(["train", "moons", "--base", "GaussianMixture", "--base-arg", "colours=3", *out]) == 2
    assert "base 'GaussianMixture'" in error_line(capsys)
    assert main(["train", "moons", "--base-arg", "components=3", *out]) == 2
    assert "--base-arg needs --base" in error_line(capsys)
    assert main(["train", "moons", "--base", "ConditionalGaussianMixture", *out]) == 2
    assert "conditional but the flow is unconditional" in error_line(capsys)


def test_demo_prints_paths_and_test_nll(tmp_path, capsys):
    assert main(["demo", "--steps", "10", "--hidden", "8", "--depth", "2", "--no-plots", "--quiet",
                 "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert f"trained auto ({PRESET}) on moons" in out and "test NLL" in out and str(tmp_path / "demo") in out


def console_script() -> str:
    script = Path(sys.executable).with_name("exactflow")
    return str(script) if script.exists() else None


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    run, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoint.safetensors"
    args = ["train", "8gaussians", *TINY, "--schedule", "constant", "--eval-every", "5", "--no-plots"]
    launcher = [console_script()] if console_script() else [sys.executable, "-m", "exactflow"]
    proc = subprocess.Popen([*launcher, *args, "--steps", "1000000", "--out", str(run)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (ckpt.exists() and checkpoint.info(ckpt)["info"]["training_state"]["step"] >= 10):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reached = checkpoint.info(ckpt)["info"]["training_state"]["step"]
    steps = str(reached + 12)
    assert main(["train", "--out", str(run), "--resume", "--steps", steps]) == 0
    assert main([*args, "--steps", steps, "--out", str(tmp_path / "straight")]) == 0
    resumed, straight = exactflow.load(run), exactflow.load(tmp_path / "straight")
    assert weights_close(resumed, straight, atol=1e-6)
    h = checkpoint.info(run)["info"]["history"]
    assert h["step"] == list(range(1, reached + 13))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    args = ["train", "8gaussians", *TINY, "--steps", "6", "--eval-every", "3", "--no-plots", "--device", "cpu"]
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "exactflow", *args, "--out", str(tmp_path / "ddp")],
                              env={**env(), "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    assert b"test NLL" in outs[0][0] and outs[1][0] == b""  # only rank 0 reports and writes
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    ddp, single = exactflow.load(tmp_path / "ddp"), exactflow.load(tmp_path / "single")
    assert weights_close(ddp, single, atol=1e-5)
    a = checkpoint.info(tmp_path / "ddp")["info"]["test"]["nll"]
    b = checkpoint.info(tmp_path / "single")["info"]["test"]["nll"]
    assert a == pytest.approx(b, abs=1e-5)


def test_train_for_a_time_budget(tmp_path, capsys):
    run = tmp_path / "timed"
    assert main(["train", "8gaussians", *TINY, "--time", "0.5s", "--eval-every", "10", "--out", str(run),
                 "--no-plots"]) == 0
    assert "time budget" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "time budget" and config["options"]["time"] == 0.5


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("60s", 60.0), ("2m", 120.0), ("1.5m", 90.0),
                                               ("1h", 3600.0)])
def test_durations(text, seconds):
    from exactflow.commands.train import duration

    assert duration(text) == seconds


def test_a_bad_duration_is_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "moons", "--time", "soon"])
    assert "expected a positive duration such as 90, 60s, 2m or 1.5m, got 'soon'" in capsys.readouterr().err
