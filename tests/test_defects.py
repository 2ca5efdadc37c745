"""Regression tests for the defects of issue 15: each bad input gets one clear error (or warning), never a
traceback or a silently wrong result."""

import inspect
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import exactflow
from exactflow import checkpoint, plots
from exactflow.cli import build_parser, main
from exactflow.data import registry as datasets
from exactflow.training import fit, standardize

SMALL = ["--hidden", "8", "--depth", "2", "--batch-size", "64", "--quiet", "--no-plots"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exactflow", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def tiny_flow(features: int = 2):
    return exactflow.build("RealNVP", features=features, depth=2, hidden=[8])


def test_testing_module_is_reachable_after_import_exactflow():
    code = "import exactflow; print(exactflow.testing.check_bijection.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "check_bijection", done.stderr


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_train_refuses_zero_or_negative_steps(tmp_path, capsys, steps):
    assert main(["train", "moons", "--steps", steps, "--out", str(tmp_path / "run"), *SMALL]) == 2
    assert f"--steps must be a positive integer, got {steps}" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_bad_flow_option_values_name_the_option_and_the_config_file(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "moons", "--flow-arg", "depth=abc", "--out", out, *SMALL[:2]]) == 2
    err = error_line(capsys)
    assert "depth must be a positive integer, got 'abc'" in err and "--flow-arg" in err
    config = tmp_path / "run.toml"
    config.write_text('data = "moons"\nflow_args = { depth = "abc" }\n')
    assert main(["train", "--config", str(config), "--out", out]) == 2
    err = error_line(capsys)
    assert "depth" in err and str(config) in err
    for line, option in (('steps = "abc"', "steps"), ("steps = 2.5", "steps"), ('schedule = "linear"', "schedule"),
                         ('hidden = "a,b"', "hidden"), ('plots = "no"', "plots")):
        config.write_text(f'data = "moons"\n{line}\n')
        assert main(["train", "--config", str(config), "--out", out]) == 2, line
        err = error_line(capsys)
        assert err.startswith(f"exactflow: error: {config}: option {option} = "), err
    config.write_text('data = "moons"\nsteps = 0\n')
    assert main(["train", "--config", str(config), "--out", out]) == 2
    assert "--steps must be a positive integer" in (err := error_line(capsys)) and str(config) in err


@pytest.mark.parametrize("text, problem", [("", "no rows"), ("a,b\n", "only a header line")])
def test_empty_or_header_only_csv_is_one_clear_error(tmp_path, text, problem):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "input contained no data" must not escape
        with pytest.raises(ValueError, match=f"holds no data \\({problem}\\)"):
            datasets.build("tabular", path=str(path))
    done = run_cli("train", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"exactflow: error: {path}: the table holds no data ({problem})"


def test_divergence_before_the_first_checkpoint_says_none_was_written(tmp_path, capsys):
    path = tmp_path / "run" / "ck.safetensors"
    with pytest.warns(RuntimeWarning, match="diverged at step 1") as record:
        h = fit(tiny_flow(), torch.full((64, 2), 1e30), steps=10, progress=False, checkpoint=path)
    assert h.status == "diverged" and h.message.endswith("no checkpoint was written")
    assert "kept" not in str(record[0].message) and not path.exists()
    np.save(tmp_path / "huge.npy", np.full((200, 2), 1e30))
    assert main(["train", str(tmp_path / "huge.npy"), "--no-standardize", "--out", str(tmp_path / "h"), *SMALL]) == 1
    assert error_line(capsys).endswith("no checkpoint was written")


def _numeric_defaults(command: str):
    """``(option, default in the help, real default)`` for every option whose help states a numeric default."""
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    parser = sub.choices[command]
    for action in parser._actions:
        text = " ".join((action.help or "").split())
        if action.default is None or action.help is None:
            continue
        match = re.search(r"default:? (-?[\d.e+-]+)\b", text % {"default": action.default})
        if match:
            yield action.option_strings[0], float(match.group(1)), action.default


@pytest.mark.parametrize("command", ["train", "demo"])
def test_help_states_the_real_defaults(command):
    checked = list(_numeric_defaults(command))
    for option, shown, real in checked:
        assert shown == float(real), f"{command} {option}: help says {shown}, default is {real}"
    if command == "demo":
        assert {"--steps", "--threads"} <= {option for option, _, _ in checked}


def test_help_states_the_real_training_recipe():
    """Batch size, learning rate and the rest default to the flow's recipe; the help's figures are the real ones."""
    from exactflow.commands.train import RECIPE_HELP
    from exactflow.flows.auto import CLASSIC

    text = " ".join(RECIPE_HELP.split())
    stated = {key: float(re.search(rf"\b{key} ([\d.e+-]+)", text).group(1)) for key in ("batch", "lr", "clip")}
    assert stated == {"batch": CLASSIC["batch_size"], "lr": CLASSIC["lr"], "clip": CLASSIC["clip_grad"]}
    assert CLASSIC["schedule"] in text


def test_data_arg_help_names_keywords_the_loaders_take():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    action = next(a for a in sub.choices["train"]._actions if a.dest == "data_args")
    keys = set(re.findall(r"(\w+)=", action.help))
    accepted = {*inspect.signature(datasets["moons"].factory).parameters,
                *inspect.signature(datasets["tabular"].factory).parameters}
    assert keys and keys <= accepted, keys - accepted


def test_a_float64_flow_comes_back_float64(tmp_path):
    flow = tiny_flow().double()
    path = checkpoint.save(tmp_path / "m.safetensors", flow)
    loaded = exactflow.load(path)
    assert checkpoint.info(path)["dtype"] == "float64"
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    x = torch.randn(8, 2, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(x), flow.eval().log_prob(x))
    assert next(exactflow.load(checkpoint.save(tmp_path / "f.safetensors", tiny_flow())).parameters()).dtype \
        == torch.float32


def _rewrite_header(src, dst, edit, checksum: bool = False) -> None:
    """Copy checkpoint ``src`` to ``dst`` with ``edit(header)`` applied to its JSON header (and, with
    ``checksum``, a matching checksum, as a deliberate forger would write)."""
    tensors = load_file(src)
    raw = src.read_bytes()
    meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    header = json.loads(meta[checkpoint.HEADER])
    edit(header)
    meta[checkpoint.HEADER] = json.dumps(header)
    if checksum:
        meta[checkpoint.CHECKSUM] = checkpoint._digest(meta[checkpoint.HEADER], tensors)
    save_file(tensors, dst, metadata=meta)


def test_the_checksum_covers_the_header_and_missing_keys_are_named(tmp_path):
    path = checkpoint.save(tmp_path / "m.safetensors", tiny_flow())
    bad = tmp_path / "bad.safetensors"
    _rewrite_header(path, bad, lambda h: h["spec"]["kwargs"].update(scale_bound=1.0))
    with pytest.raises(ValueError, match="checksum mismatch"):
        exactflow.load(bad)
    _rewrite_header(path, bad, lambda h: h.pop("spec"))
    with pytest.raises(ValueError, match="checksum mismatch"):
        exactflow.load(bad)
    _rewrite_header(path, bad, lambda h: h.pop("spec"), checksum=True)
    with pytest.raises(ValueError, match="lacks 'spec'"):
        exactflow.load(bad)
    _rewrite_header(path, bad, lambda h: h.update(format=1))
    with pytest.raises(ValueError, match="format 1 .*reads format 2 only"):
        exactflow.load(bad)
    assert isinstance(exactflow.load(path), exactflow.Flow)


def test_load_on_an_unknown_or_absent_device_is_a_value_error(tmp_path, monkeypatch):
    path = checkpoint.save(tmp_path / "m.safetensors", tiny_flow())
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        exactflow.load(path, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device is available"):
        exactflow.load(path, device="cuda")


@pytest.mark.parametrize("name, kwargs, message", [
    ("RealNVP", {"depth": 0}, "depth must be a positive integer"),
    ("RealNVP", {"context": -1}, "context must be a non-negative integer"),
    ("RealNVP", {"hidden": [0]}, "hidden must be a sequence of positive layer widths"),
    ("RealNVP", {"features": 0}, "features must be a positive integer"),
    ("NICE", {"depth": -1}, "depth must be a positive integer"),
    ("MAF", {"hidden": [8, 0]}, "hidden must be"),
    ("IAF", {"context": -2}, "context must be"),
    ("NSF", {"bins": 0}, "bins must be a positive integer"),
    ("NSFAutoregressive", {"depth": 0}, "depth must be"),
    ("BNAF", {"hidden": [0]}, "hidden must be"),
    ("CNF", {"features": 0}, "features must be a positive integer"),
    ("CNF", {"steps": 0}, "steps must be a positive integer"),
    ("Planar", {"depth": 0}, "depth must be a positive integer"),
    ("Radial", {"context": -1}, "context must be"),
])
def test_degenerate_sizes_of_vector_flows_are_refused(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        exactflow.flows.registry[name](**{"features": 2, **kwargs})


def test_check_with_no_points_is_an_error(tmp_path, capsys):
    path = checkpoint.save(tmp_path / "m.safetensors", tiny_flow())
    assert main(["check", str(path), "-n", "0"]) == 2
    assert "-n must be a positive number of points, got 0" in error_line(capsys)


def test_fit_and_evaluate_take_numpy_arrays():
    x = np.random.default_rng(0).normal(size=(256, 2))
    flow = tiny_flow()
    history = fit(flow, x, x[:64], steps=3, batch_size=32, eval_every=3, progress=False)
    assert history.status == "finished" and len(history.valid) == 1
    assert np.isfinite(exactflow.evaluate(flow, x)["nll"])
    with pytest.raises(TypeError, match="train must be a torch.Tensor or a numpy array, got list"):
        fit(flow, x.tolist())


def test_save_removes_temporary_files_of_killed_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".m.safetensors.{dead.pid}.a1b2.tmp", tmp_path / ".m.safetensors.x7k2q9.tmp"]
    live = [tmp_path / f".m.safetensors.{os.getpid()}.c3d4.tmp", tmp_path / f".other.safetensors.{dead.pid}.e5.tmp"]
    for p in stale + live:
        p.write_bytes(b"partial")
    checkpoint.save(tmp_path / "m.safetensors", tiny_flow())
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live)  # a live writer's file, and another checkpoint's, are left alone


def test_standardizing_a_constant_column_warns_naming_it(tmp_path, capsys):
    x = torch.randn(100, 3)
    x[:, 1] = 7.0
    with pytest.warns(UserWarning, match=r"constant column\(s\) 1 \('b'\)"):
        standardize(tiny_flow(3), x, columns=["a", "b", "c"])
    with pytest.warns(UserWarning, match=r"constant column\(s\) 1:"):
        standardize(tiny_flow(3), x)
    np.savetxt(tmp_path / "t.csv", x.numpy(), delimiter=",", header="a,b,c", comments="")
    assert datasets.build("tabular", path=str(tmp_path / "t.csv")).info["columns"] == ["a", "b", "c"]
    assert main(["train", str(tmp_path / "t.csv"), "--steps", "2", "--out", str(tmp_path / "run"), *SMALL]) == 0
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("exactflow: warning: standardizing constant column(s) 1 ('b')") and "\n" not in warning


def test_the_last_morph_panel_and_frame_are_titled_samples(tmp_path, monkeypatch):
    titles = {"_panel": [], "_frame": []}
    for name, original in [("_panel", plots._panel), ("_frame", plots._frame)]:
        monkeypatch.setattr(plots, name,
                            lambda *args, _name=name, _f=original: titles[_name].append(args[-1]) or _f(*args))
    plots.morph(tiny_flow(), tmp_path / "morph.png", gif=tmp_path / "morph.gif", n=50, frames_per_layer=1)
    assert titles["_panel"][0] == "base draws" and titles["_panel"][-1] == "samples"
    assert titles["_frame"][-1] == "samples" and "data" not in titles["_panel"] + titles["_frame"]
