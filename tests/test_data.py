"""Data sets: fixed-seed 2-D shapes and tabular files with recorded splits."""

import numpy as np
import pytest
import torch

from exactflow.data import registry as datasets
from exactflow.data import toy

TOY = ["moons", "circles", "8gaussians", "checkerboard", "spirals", "pinwheel", "rings", "swissroll"]


@pytest.mark.parametrize("name", TOY)
def test_toy_sets_are_2d_finite_seeded_and_recorded(name):
    a = datasets.build(name, train=300, valid=50, test=70)
    b = datasets.build(name, train=300, valid=50, test=70)
    c = datasets.build(name, train=300, valid=50, test=70, seed=1)
    assert a.train.shape == (300, 2) and a.valid.shape == (50, 2) and a.test.shape == (70, 2)
    assert torch.isfinite(a.train).all() and a.kind == "vector" and a.info["sizes"] == [300, 50, 70]
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:50], a.valid)  # splits come from different seeds
    assert a.train.abs().max() < 10


def test_shapes_look_like_their_names():
    r = toy.circles(4000, noise=0.0).norm(dim=-1)
    assert torch.allclose(torch.sort(torch.unique(r.round(decimals=3)))[0], torch.tensor([1.5, 3.0]))
    r = toy.rings(4000, noise=0.0).norm(dim=-1)
    counts = torch.stack([((r - 0.9 * k).abs() < 1e-4).sum() for k in (1, 2, 3, 4)])
    assert counts.sum() == 4000 and (counts[1:] > counts[:-1]).all()  # more points on longer rings
    arms = toy.pinwheel(5000, radial_std=0.0, tangential_std=0.0)
    assert torch.allclose(arms.norm(dim=-1), torch.full((5000,), 3.0), atol=1e-5)


def test_tabular_csv_with_header_and_npy(tmp_path):
    x = np.arange(300, dtype=np.float64).reshape(100, 3)
    np.savetxt(tmp_path / "t.csv", x, delimiter=",", header="a,b,c", comments="")
    np.save(tmp_path / "t.npy", x)
    a = datasets.build("tabular", path=str(tmp_path / "t.csv"), valid=0.2, test=0.1, seed=3)
    b = datasets.build("tabular", path=str(tmp_path / "t.npy"), valid=0.2, test=0.1, seed=3)
    assert a.info["sizes"] == [70, 20, 10] and a.info["seed"] == 3 and len(a.info["sha256"]) == 64
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    rows = torch.cat([a.train, a.valid, a.test])
    assert torch.equal(torch.sort(rows[:, 0])[0], torch.from_numpy(x[:, 0]).float())  # a partition of the rows


def test_tabular_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.build("tabular", path=str(tmp_path / "none.csv"))
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(ValueError, match="not a numeric CSV"):
        datasets.build("tabular", path=str(tmp_path / "bad.csv"))
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n" * 10)
    with pytest.raises(ValueError, match="NaN"):
        datasets.build("tabular", path=str(tmp_path / "nan.csv"))
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match=".csv or .npy"):
        datasets.build("tabular", path=str(tmp_path / "x.txt"))
    np.save(tmp_path / "few.npy", np.ones((2, 2)))
    with pytest.raises(ValueError, match="too few"):
        datasets.build("tabular", path=str(tmp_path / "few.npy"))
