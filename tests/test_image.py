"""Image flows: what the generic contract cannot see (worked numbers, layouts, bits/dim, loaders, grids)."""

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from exactflow import Flow, StandardNormal
from exactflow.data import registry as datasets
from exactflow.flows.glow import Glow, RealNVPImage
from exactflow.images import bits_per_dim, dequantize, quantize
from exactflow.transforms.image import (
    ImageAffineCoupling,
    InvConv1x1,
    InvConv1x1LU,
    Logit,
    Squeeze,
    Unsqueeze,
    checkerboard_mask,
)
from exactflow.transforms.multiscale import Split


def test_lu_conv_worked_number():
    # U diagonal (2, 0.5, 0.8) on 3x32x32: log|det| = 32*32*(log 2 + log 0.5 + log 0.8) = -228.5
    conv = InvConv1x1LU((3, 32, 32)).double()
    with torch.no_grad():
        conv.log_diag.copy_(torch.log(torch.tensor([2.0, 0.5, 0.8], dtype=torch.float64)))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    z, ladj = conv(x)
    assert round(ladj[0].item(), 1) == -228.5
    assert ladj[0].item() == pytest.approx(1024 * (math.log(2) + math.log(0.5) + math.log(0.8)))
    assert ladj[0].item() == pytest.approx(1024 * torch.linalg.slogdet(conv.weight())[1].item())
    torch.testing.assert_close(z, torch.einsum("ij,bjhw->bihw", conv.weight(), x))
    torch.testing.assert_close(conv.inverse(z)[0], x)


def test_lu_conv_starts_as_a_rotation_and_plain_conv_logdet():
    lu = InvConv1x1LU((6, 2, 2), seed=1).double()  # factors built in float32, evaluated in float64
    w = lu.weight()
    eye = torch.eye(6, dtype=torch.float64)
    # float32 QR of a 6x6 Gaussian, then float32 LU of the rotation (entries <= 1): each errs by <= n eps, so
    # W W^T = I to 2 (n eps + n eps) absolutely, n = 6 (the entries are of size 1, so also relatively)
    tol = 4 * 6 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(w @ w.T, eye, rtol=tol, atol=tol)
    torch.testing.assert_close(lu.inverse_weight() @ w, eye)
    plain = InvConv1x1((3, 5, 7)).double()
    with torch.no_grad():
        plain.weight.copy_(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 3.0]]))
    _, ladj = plain(torch.randn(4, 3, 5, 7, dtype=torch.float64))
    assert ladj[0].item() == pytest.approx(35 * math.log(6.0))


def test_squeeze_layout_and_round_trip():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one channel, [[a, b], [c, d]]
    z, ladj = Squeeze()(x)
    assert z.shape == (1, 4, 1, 1) and z.flatten().tolist() == [1.0, 2.0, 3.0, 4.0] and ladj.item() == 0
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6)
    z, _ = Squeeze()(x)
    for c in range(2):
        for a in range(2):
            for b in range(2):
                assert torch.equal(z[0, 4 * c + 2 * a + b], x[0, c, a::2, b::2])  # moves entries: exact
    assert torch.equal(Squeeze().inverse(z)[0], x) and torch.equal(Unsqueeze()(z)[0], x)
    with pytest.raises(ValueError, match="divisible by 2"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_checkerboard_coupling_keeps_its_masked_pixels():
    mask = checkerboard_mask(4, 4)
    assert mask[0, 0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    layer = ImageAffineCoupling((2, 4, 4), mask="checkerboard", flip=True, hidden=8)
    torch.nn.init.normal_(layer.net[-1].weight)
    x = torch.randn(3, 2, 4, 4)
    z, _ = layer(x)
    kept = (1 - mask).bool().expand_as(x)
    assert torch.equal(z[kept], x[kept]) and not torch.allclose(z[~kept], x[~kept])
    with pytest.raises(ValueError, match="unknown mask"):
        ImageAffineCoupling((2, 4, 4), mask="stripes")


def test_logit_with_logistic_base_is_uniform_so_bits_per_dim_is_log2_levels():
    # If x = logit(y) and x is standard logistic, y is uniform on (0, 1): log p(y) = 0, so the
    # dequantised discrete data get exactly log2(levels) bits/dim; this needs the logit's log-det.
    class Logistic(StandardNormal):
        def log_prob(self, z, context=None):
            return (-z - 2 * torch.nn.functional.softplus(-z)).flatten(1).sum(-1)

    flow = Flow(Logit(alpha=0.0), Logistic((1, 8, 8))).double()
    y = dequantize(torch.randint(17, (5, 1, 8, 8)).double(), 17)
    log_p = flow.log_prob(y)
    torch.testing.assert_close(log_p, torch.zeros(5, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(bits_per_dim(log_p, (1, 8, 8), 17), torch.full((5,), math.log2(17), dtype=torch.float64))
    assert bits_per_dim(torch.tensor([0.0]), (3, 32, 32), 256).item() == pytest.approx(8.0)


def test_logit_at_default_alpha_and_rejects_raw_levels():
    # (the generic harness runs Logit at alpha=0.3: its batch check shifts a row by +0.5)
    y = (0.01 + 0.98 * torch.rand(8, 1, 4, 4, dtype=torch.float64)).requires_grad_(True)
    x, ladj = Logit()(y)
    (slope,) = torch.autograd.grad(x.sum(), y)  # elementwise: the Jacobian is diag(slope)
    torch.testing.assert_close(ladj, slope.log().flatten(1).sum(-1))
    y_back, ladj_back = Logit().inverse(x)
    torch.testing.assert_close(y_back, y)
    torch.testing.assert_close(ladj_back, -ladj)
    with pytest.raises(ValueError, match="needs inputs in"):
        Logit()(torch.full((1, 1, 2, 2), 16.0))
    with pytest.raises(ValueError, match="alpha"):
        Logit(alpha=0.5)


def test_quantize_inverts_dequantize():
    k = torch.randint(17, (50, 1, 8, 8)).float()
    assert torch.equal(quantize(dequantize(k, 17), 17), k)


def test_glow_structure_temperature_and_bad_shapes():
    torch.manual_seed(0)
    flow = Glow((1, 8, 8), levels=2, depth=1, hidden=8)
    y = dequantize(datasets.build("digits").train[:32], 17)
    bpd = bits_per_dim(flow.log_prob(y), (1, 8, 8), 17)
    assert bpd.shape == (32,) and torch.isfinite(bpd).all()
    splits = [m for m in flow.modules() if isinstance(m, Split)]
    assert len(splits) == 1 and splits[0].keep == 2  # level 1: 4 channels at 4x4, half factored out
    torch.manual_seed(1)
    cold = flow.sample(6, temperature=0.5)
    torch.manual_seed(1)
    z = 0.5 * torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(cold, flow.transform.inverse(z)[0])
    with pytest.raises(ValueError, match="temperature"):
        flow.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match="divisible by 8"):
        Glow((1, 8, 12), levels=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        RealNVPImage((1, 6, 6), levels=3)


def test_digits_loader_shapes_levels_and_fixed_split():
    data = datasets.build("digits")
    assert data.kind == "image" and data.levels == 17 and data.shape == (1, 8, 8)
    assert (len(data.train), len(data.valid), len(data.test)) == (1258, 180, 359)
    assert data.train.dtype == torch.float32 and data.train.min() == 0 and data.train.max() == 16
    assert torch.equal(data.train, torch.round(data.train))
    assert torch.equal(datasets.build("digits").test, data.test)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_idx_loader(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (20, 5, 6)), rng.integers(0, 256, (4, 5, 6))
    _write_idx(tmp_path / "train-images-idx3-ubyte", train)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    data = datasets.build("idx_images", path=str(tmp_path / "train-images-idx3-ubyte"),
                          test_path=str(tmp_path / "t10k-images-idx3-ubyte.gz"), valid=0.25)
    assert data.kind == "image" and data.levels == 256 and data.shape == (1, 5, 6)
    assert (len(data.train), len(data.valid), len(data.test)) == (15, 5, 4)
    torch.testing.assert_close(data.test[:, 0], torch.from_numpy(test).float())
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([data.train, data.valid])}
    assert rows == {tuple(r.flatten().tolist()) for r in torch.from_numpy(train).float()}
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(ValueError, match="header says|IDX"):
        datasets.build("idx_images", path=str(tmp_path / "bad"))
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.build("idx_images", path=str(tmp_path / "text"))


def test_npy_loader(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "hwc.npy", rng.integers(0, 4, (10, 6, 6, 3)))
    data = datasets.build("npy_images", path=str(tmp_path / "hwc.npy"), channels_last=True, levels=4)
    assert data.shape == (3, 6, 6) and data.levels == 4
    assert (len(data.train), len(data.valid), len(data.test)) == (8, 1, 1)
    np.save(tmp_path / "gray.npy", rng.integers(0, 17, (10, 8, 8)).astype(np.float64))
    assert datasets.build("npy_images", path=str(tmp_path / "gray.npy")).shape == (1, 8, 8)
    np.save(tmp_path / "float.npy", rng.random((10, 8, 8)))
    with pytest.raises(ValueError, match="integer levels"):
        datasets.build("npy_images", path=str(tmp_path / "float.npy"))
    with pytest.raises(ValueError, match="does not fit levels"):
        datasets.build("npy_images", path=str(tmp_path / "hwc.npy"), channels_last=True, levels=2)
    with pytest.raises(ValueError, match="not found"):
        datasets.build("npy_images", path=str(tmp_path / "missing.npy"))


def test_split_prior_scores_x2_under_its_conditional_gaussian():
    split = Split((4, 2, 2), prior=True, scale_bound=None).double()
    torch.nn.init.normal_(split.prior.weight, std=0.3)
    x = torch.randn(5, 4, 2, 2, dtype=torch.float64)
    u, ladj = split(x)
    mu, logs = split._mu_logs(x[:, :2], None)
    normal = torch.distributions.Normal(mu, torch.exp(logs))
    expected = normal.log_prob(x[:, 2:]).flatten(1).sum(-1)
    got = StandardNormal((2, 2, 2)).double().log_prob(u[:, 2:]) + ladj
    torch.testing.assert_close(got, expected)
    assert torch.equal(u[:, :2], x[:, :2])


@pytest.mark.filterwarnings("ignore:torch.lu is deprecated")  # inside normflows
def test_glow_digits_benchmark_runs_on_tiny_settings(tmp_path):
    pytest.importorskip("normflows")  # the `bench` extra
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "glow_digits.py"))
    argv = ["--steps", "4", "--flow-steps", "1", "--hidden", "8", "--draws", "1", "--out", str(tmp_path)]
    results = script["main"](argv)
    assert set(results) == {"exactflow", "normflows"}
    assert all(math.isfinite(r["test_bits_per_dim"]) for r in results.values())
    assert (tmp_path / "exactflow_samples.png").is_file() and (tmp_path / "results.json").is_file()
