"""VAEs with flow posteriors: exact log q, the bounds against quadrature, likelihoods, data, the `vae` command."""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from exactflow.commands import vae as vae_command
from exactflow.testing import check_flow, randomize_
from exactflow.vae import VAE, binarize, evaluate_vae, fit_vae, load_data, load_vae


def test_diag_posterior_is_the_encoders_gaussian():
    vae = VAE(6, latent=3, hidden=(5,), posterior="diag").double()
    h = torch.randn(4, 5, dtype=torch.float64)
    z, log_q = vae.posterior.sample_and_log_prob(7, h)
    loc, log_scale = vae.posterior.base.net(h).chunk(2, -1)
    expected = torch.distributions.Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, expected)


@pytest.mark.parametrize("posterior", ["planar", "radial", "iaf"])
def test_posterior_log_q_is_exact(posterior):
    # the posterior flow (conditional layers on the encoder's Gaussian) passes the generic flow checks
    vae = VAE(6, latent=3, hidden=(5,), posterior=posterior, layers=3).double()
    randomize_(vae.posterior, 0.2)
    h = torch.randn(16, 5, dtype=torch.float64)
    z = torch.randn(16, 3, dtype=torch.float64)
    check_flow(vae.posterior, z, h, atol=1e-6, name=f"posterior[{posterior}]")


def _quadrature_log_px(vae: VAE, x: torch.Tensor, points: int = 400, box: float = 7.0) -> torch.Tensor:
    """log p(x) = log int p(x|z) N(z; 0, I) dz on a grid (2-D latent), one value per row of x."""
    g = torch.linspace(-box, box, points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_prior = -0.5 * grid.square().sum(-1) - math.log(2 * math.pi)
    out = []
    for row in x:
        log_joint = vae.log_likelihood(row.expand(len(grid), -1), grid) + log_prior
        out.append(torch.logsumexp(log_joint, 0) + 2 * math.log(g[1] - g[0]))
    return torch.stack(out)


@pytest.mark.parametrize("posterior", ["diag", "planar"])
def test_elbo_below_iwae_below_exact_marginal(posterior):
    torch.manual_seed(1)
    vae = VAE(10, latent=2, hidden=(16,), posterior=posterior, layers=2).double().eval()
    x = binarize(torch.rand(4, 10, dtype=torch.float64))
    exact = _quadrature_log_px(vae, x).mean().item()
    small = evaluate_vae(vae, x, k=5)
    large = evaluate_vae(vae, x, k=4000)
    assert small["elbo"] < small["iwae"] < large["iwae"] + 0.05
    assert large["iwae"] == pytest.approx(exact, abs=0.03)
    assert large["elbo"] < exact


def test_discretised_logistic_sums_to_one_over_levels():
    vae = VAE(3, latent=2, hidden=(8,), likelihood="logistic", levels=5).double()
    randomize_(vae.decoder, 1.0)
    z = torch.randn(1, 2, dtype=torch.float64).expand(5, 2)
    levels = torch.arange(5, dtype=torch.float64) / 4
    total = 0.0
    for a in levels:
        for b in levels:
            x = torch.stack([torch.full((5,), a), torch.full((5,), b), levels], -1)
            total += vae.log_likelihood(x, z).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-9)


def test_training_raises_the_elbo():
    torch.manual_seed(0)
    train = binarize(load_data("digits").train[:200])
    vae = VAE(64, latent=4, hidden=(32,), posterior="planar", layers=2)
    before = evaluate_vae(vae, train[:50], k=2)["elbo"]
    history = fit_vae(vae, train, steps=40, batch=50, lr=3e-3)
    after = evaluate_vae(vae, train[:50], k=2)["elbo"]
    assert len(history) == 40 and after > before + 5
    assert vae.sample(3).shape == (3, 64)


def test_a_flow_prior_is_trained_with_the_rest():
    torch.manual_seed(0)
    vae = VAE(6, latent=2, hidden=(8,), posterior="radial", layers=2, prior="Radial")
    start = [p.detach().clone() for p in vae.prior.parameters()]
    fit_vae(vae, binarize(torch.rand(20, 6)), steps=3, batch=10)
    assert any(not torch.equal(a, b) for a, b in zip(start, vae.prior.parameters(), strict=True))
    assert math.isfinite(evaluate_vae(vae, binarize(torch.rand(5, 6)), k=3)["iwae"])


def test_bad_input_raises_value_error(tmp_path):
    vae = VAE(4, latent=2, hidden=(8,))
    with pytest.raises(ValueError, match="binary"):
        evaluate_vae(vae, torch.full((3, 4), 0.3))
    with pytest.raises(ValueError, match="shape"):
        fit_vae(vae, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="posterior .nope.: unknown flow"):
        VAE(4, posterior="nope")
    with pytest.raises(ValueError, match="grid"):
        VAE(4, likelihood="logistic", levels=3).check_data(torch.full((2, 4), 0.3))
    path = tmp_path / "bad.npy"
    np.save(path, np.full((20, 4), 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_data(str(path))
    with pytest.raises(ValueError, match=".npy"):
        load_data("mnist")


def test_load_data_scales_integer_arrays_and_splits_reproducibly(tmp_path):
    path = tmp_path / "levels.npy"
    np.save(path, np.random.default_rng(0).integers(0, 4, size=(50, 2, 3)))
    first, again = load_data(str(path)), load_data(str(path))
    assert first.levels == 4 and first.shape == (6,)
    assert (len(first.train), len(first.valid), len(first.test)) == (40, 5, 5)
    assert torch.equal(first.test, again.test)
    assert set(torch.unique(first.train * 3).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="exactflow")
    vae_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_vae_command_on_a_user_array(tmp_path, capsys):
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 8, size=(60, 5)).astype(np.int64))
    out = tmp_path / "run"
    args = _parse(["vae", "--data", str(path), "--likelihood", "logistic", "--posterior", "radial", "--depth", "2",
                   "--latent", "2", "--hidden", "16", "--steps", "20", "--batch", "16", "--k", "10", "--out", str(out)])
    assert args.run(args) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["posterior"] == "radial" and record["test"] == 6
    assert record["test_elbo"] <= record["test_iwae"] + 1e-6 and math.isfinite(record["test_elbo"])
    printed = capsys.readouterr().out
    assert "IWAE" in printed and "step     20/20" in printed  # progress lines when not on a terminal
    vae = load_vae(out)  # the saved model, rebuilt from its recorded arguments
    assert vae.posterior.transform is not None and evaluate_vae(vae, load_data(str(path)).test, k=2)["k"] == 2
