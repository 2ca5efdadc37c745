"""The benchmark scripts run end to end on tiny settings (no timing is asserted)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_rows(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--threads", "1", "--repeats", "2", "--json", str(out)]
    run = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    cells = {(r["flow"], r["op"], r["dim"], r["batch"]) for r in rows}
    assert cells == {("realnvp", op, 2, 64) for op in ("log_prob", "train", "sample")}
    for r in rows:
        assert r["ms"]["exactflow"] > 0 and r["limit_ms"] > 0
        assert len(set(r["params"].values())) == 1  # every library built the same size of network
    assert "| RealNVP | log_prob | 2 | 64 |" in run.stdout


def test_bad_option_is_refused(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.speed import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--flows", "glow"])
    assert "unknown glow" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_column_times_every_operation_of_a_coupling_flow(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--compile", "--libs", "exactflow", "--threads", "1",
           "--repeats", "2", "--json", str(out)]
    run = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = {r["op"]: r for r in json.loads(out.read_text())["rows"]}
    for op in ("log_prob", "train", "sample"):
        assert rows[op]["ms"]["exactflow+compile"] > 0 and rows[op]["compile_s"] > 0
    assert "compiled vs best peer" in run.stdout


def test_incremental_sampler_is_left_eager_in_the_compiled_column(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.speed import compiled_sampler

    assert compiled_sampler("nsf-cp", 64, 4096) and compiled_sampler("maf", 1, 4096)
    assert compiled_sampler("maf", 8, 64)
    assert not compiled_sampler("maf", 8, 4096) and not compiled_sampler("maf", 2, 4096)
    assert compiled_sampler("nsf-ar", 8, 16) and not compiled_sampler("nsf-ar", 8, 64)


def test_eager_floor_script_runs():
    cmd = [sys.executable, "benchmarks/eager_floor.py", "--repeats", "1", "--threads", "1"]
    run = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "maf train step" in run.stdout and "realnvp train step" in run.stdout



@pytest.mark.parametrize("task", ["linear-gaussian", "mixture", "two-moons", "hetero-t"])
def test_conditional_tasks_sample_their_stated_density(task, monkeypatch):
    """For one context, the true density integrates to 1 on a grid around the simulator's draws, and its mean
    there matches the mean of 20000 draws (within 5 standard errors)."""
    monkeypatch.syspath_prepend(str(ROOT))
    import torch

    from benchmarks.conditional import TASKS

    t = TASKS[task]
    g = torch.Generator().manual_seed(0)
    c = t.prior(1, g)
    x = t.given(c.expand(20000, -1), g).double()
    lo, hi = x.min(0).values - 0.5, x.max(0).values + 0.5
    axes = [torch.linspace(float(lo[i]), float(hi[i]), 801, dtype=torch.float64) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    p = t.log_prob(grid.float(), c.expand(len(grid), -1)).double().exp()
    cell = float((axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0]))
    mass = float(p.sum()) * cell
    assert abs(mass - 1) < 0.02, mass
    mean = (p[:, None] * grid).sum(0) * cell / mass
    se = x.std(0) / len(x) ** 0.5
    assert ((mean - x.mean(0)).abs() < 5 * se + 1e-3).all(), (mean, x.mean(0))


def test_conditional_benchmark_runs_on_a_tiny_setting(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.conditional import main

    argv = ["--budget", "0.1", "--seeds", "0", "--tasks", "mixture", "--train", "256",
            "--models", "exactflow auto", "exactflow NSF", "zuko MAF", "nflows NSF", "--out", str(tmp_path / "r.jsonl")]
    table = main(argv)
    assert table.splitlines()[0].startswith("| model | mixture |")
    assert len(table.splitlines()) == 6
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 4
    assert main(argv) == table  # the runs in --out are reused, not run again
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 4


def test_conditional_sweep_runs_on_a_tiny_setting(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.conditional_sweep import main

    argv = ["--budget", "0.1", "--seeds", "0", "--tasks", "mixture", "hetero-t", "--train", "256",
            "--candidates", "nsf-d3", "maf-res-d3", "--out", str(tmp_path / "s.jsonl")]
    table = main(argv)
    assert table.splitlines()[0] == "| candidate | mixture | hetero-t | mean over tuning tasks | seeds |"
    assert len(table.splitlines()) == 4 and len((tmp_path / "s.jsonl").read_text().splitlines()) == 4
    assert main([*argv, "--table"]) == table


def test_density_tasks_have_splits_and_true_densities(monkeypatch):
    """Every task loads standardised splits; a known density is a density: the standard normal's test NLL is not
    below the true entropy (KL >= 0, up to Monte Carlo error), and the 2-D rings integrate to 1 on a grid."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.tasks import ALL, HELD_OUT, TUNING, Rings, load

    assert not set(TUNING) & set(HELD_OUT)
    normal = torch.distributions.Normal(0.0, 1.0)
    for name in ALL:
        task = load(name, seed=0, sizes={"train": 400, "valid": 50, "test": 2000})
        assert task.train.dtype == torch.float32 and task.valid.shape[1] == task.test.shape[1] == task.features
        assert torch.allclose(task.train.mean(0), torch.zeros(task.features), atol=1e-4)
        if task.log_prob is not None:
            gaussian_nll = -normal.log_prob(task.test.double()).sum(-1).mean().item()
            assert math.isfinite(task.entropy()) and gaussian_nll > task.entropy() - 0.1, name
    grid = torch.linspace(-5, 5, 801, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    mass = Rings().log_prob(points).exp().sum() * (grid[1] - grid[0]) ** 2
    assert mass.item() == pytest.approx(1.0, rel=1e-3)


def test_defaults_sweep_runs_one_stage(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.defaults_sweep import main

    text = main(["--budget", "0.1", "--tasks", "moons", "--seeds", "0", "--stages", "preset", "--out",
                 str(tmp_path / "sweep")])
    assert "### preset" in text and "**(won)**" in text and "**Winner**" in text
    assert (tmp_path / "sweep.md").read_text() == text and len((tmp_path / "sweep.jsonl").read_text().splitlines()) == 4


def test_defaults_sweep_appends_a_later_stage_from_auto(monkeypatch, tmp_path):
    """``--start auto --append``: the stage starts from the first sweep's winner, its report becomes a section of
    the existing markdown (kept once on a rerun), and the held-out table compares the start with the winner."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.defaults_sweep import AUTO, main

    (tmp_path / "sweep.md").write_text("the first sweep\n")
    argv = ["--budget", "0.1", "--tasks", "moons", "--seeds", "0", "--stages", "tails-confirm", "--start", "auto",
            "--append", "--out", str(tmp_path / "sweep"), "--held-out", "8gaussians"]
    for _ in range(2):
        text = main(argv)
    md = (tmp_path / "sweep.md").read_text()
    assert md.startswith("the first sweep\n") and md.count("## Stages tails-confirm from auto, 0.1 s, seeds 0") == 1
    assert json.dumps(AUTO) in text and "| start (auto before) | winner |" in text and text.strip() in md


def test_equal_time_table_runs(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.equal_time import main

    text = main(["--budget", "0.1", "--tasks", "moons", "funnel-4d", "--seeds", "0", "--out", str(tmp_path / "eq")])
    assert "| moons | tuning |" in text and "| funnel-4d | tuning |" in text
    assert text.count(" steps, 1 seeds]") == 8  # four libraries on two tasks


def test_families_benchmark_runs_every_group_on_a_tiny_setting(monkeypatch):
    """Every group of benchmarks/families.py trains and scores its rows (2 steps, a 64-point test set); the
    equal-CPU phase brings every model up to the group's budget; the report has one row per model."""
    monkeypatch.syspath_prepend(str(ROOT))
    import math
    from types import SimpleNamespace

    import torch

    from benchmarks import families
    from exactflow.data import registry

    moons = registry["moons"]()
    data = SimpleNamespace(train=moons.train[:512], test=moons.test[:64])
    records = []
    for group, makers in families.groups(list(families.GROUPS)).items():
        out = families.run_group(makers, data, seed=0, steps=2, batch=32, lr=1e-3, calibrate=1000)
        assert set(out) == set(makers)
        for model, r in out.items():
            assert r["steps"] == 2 and r["time_steps"] >= 2 and r["time_cpu"] >= r["budget"]
            assert torch.isfinite(torch.tensor([r["steps_nll"], r["time_nll"]])).all(), model
            records.append({"group": group, "data": "moons", "seed": 0, "model": model, "steps": 2, **r})
            if model.startswith("Pyro Sylvester"):  # a normalised density keeps its grid mass near 1 (2 steps in)
                assert abs(r["steps_mass_autograd"] - 1) < 0.05 and math.isfinite(r["steps_nll_autograd"])
            if group == "residual":  # exactflow's bound holds exactly (float32 rounding); 2 steps from init
                assert abs(r["steps_mass"] - 1) < 0.05
                if model.startswith("exactflow"):
                    assert r["steps_max_sigma"] <= 0.97 * (1 + 1e-6)
    text = families.report(records)
    assert {"residual", "sylvester", "splines", "bases"} <= {r["group"] for r in records}
    assert text.count("| moons |") == len(records)
    assert "| moons | 0 | 2 |" in families.pyro_report(records)
    assert "| moons | exactflow ResidualFlow | 0 | 2 |" in families.residual_report(records)


def test_families_benchmark_refuses_an_unknown_group(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.families import groups

    with pytest.raises(ValueError, match="unknown group 'glow'"):
        groups(["glow"])


def test_dead_units_benchmark_runs_on_a_tiny_setting(monkeypatch, tmp_path):
    """Every coupling network of `auto` (two affine, four spline) is measured, each of its two hidden layers."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.dead_units import main

    text = main(["--tasks", "banana", "--seeds", "0", "--steps", "5", "--recipes", "default", "cosine",
                 "--json", str(tmp_path / "d.json")])
    assert "| banana | 5 | default |" in text and "| banana | 5 | cosine |" in text
    rows = json.loads((tmp_path / "d.json").read_text())
    assert [n["kind"] for n in rows[0]["nets"]] == ["AffineCoupling"] * 2 + ["RQSplineCoupling"] * 4
    assert all(len(n["dead"]) == 2 and all(0.0 <= d <= 1.0 for d in n["dead"]) for r in rows for n in r["nets"])
