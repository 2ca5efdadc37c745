"""Variational autoencoders whose approximate posterior (and optionally prior) is a flow.

Generative model ``p(x, z) = p(z) p(x | z)``; inference model ``q(z | x)``: an MLP encoder maps
``x`` to features ``h``; a diagonal Gaussian ``N(mu(h), diag sigma(h)^2)`` is pushed through ``K``
flow layers whose parameters also depend on ``h`` (amortised, Rezende & Mohamed 2015), so

    log q(z_K | x) = log N(z_0; mu, sigma^2) - sum_k log|det dz_k / dz_{k-1}|.

With ``log w = log p(x, z) - log q(z | x)`` for ``z ~ q(. | x)``, the bounds reported are

    ELBO = E_q[log w] <= IWAE_k = E[log (1/k) sum_i w_i] <= log p(x)   (Burda et al. 2016),

in nats per example. Likelihoods: ``"bernoulli"`` on binary data, ``"logistic"`` (discretised
logistic) on data quantised to ``levels`` values ``0, 1/(levels-1), ..., 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_state
from .core import Bijection, Compose
from .data import Dataset
from .distributions import ConditionalDiagNormal, Flow, StandardNormal
from .nets import MLP
from .objectives import ELBO
from .vi import build_flow

__all__ = ["VAE", "binarize", "evaluate_vae", "fit_vae", "load_data", "load_vae", "posterior_layers", "save_vae"]

LIKELIHOODS = ("bernoulli", "logistic")


def posterior_layers(name: str, latent: int, context: int, layers: int) -> Bijection:
    """The ``layers`` conditional flow layers of posterior ``name`` (``"diag"``: none, the identity)."""
    if name == "diag":
        return Compose()
    try:
        return build_flow(name, latent, context=context, depth=layers).transform
    except ValueError as err:
        raise ValueError(f"posterior {name!r}: {err} (or 'diag': the encoder's Gaussian alone)") from None


def binarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    """``1[x >= threshold]`` as floats: data for the Bernoulli likelihood."""
    return (x >= threshold).to(x.dtype)


class VAE(nn.Module):
    """A VAE on flat data in ``[0, 1]^features`` with a flow posterior.

    ``posterior``: ``"diag"`` (the encoder's Gaussian alone) or a conditional flow name (``"planar"``,
    ``"radial"``, ``"iaf"``, any conditional entry of the flows registry) with ``layers`` layers.
    ``prior``: ``"normal"`` (N(0, I)) or an unconditional flow name from the registry (a learned prior).
    ``likelihood``: ``"bernoulli"`` (binary data) or ``"logistic"`` (discretised logistic, ``levels`` values).
    """

    def __init__(
        self,
        features: int,
        latent: int = 8,
        hidden: Sequence[int] = (256, 256),
        posterior: str = "diag",
        layers: int = 8,
        prior: str = "normal",
        likelihood: str = "bernoulli",
        levels: int = 17,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if likelihood == "logistic" and levels < 2:
            raise ValueError(f"the discretised logistic needs levels >= 2, got {levels}")
        if not hidden:
            raise ValueError("hidden must name at least one layer width")
        self.features, self.latent, self.likelihood, self.levels = features, latent, likelihood, levels
        self.spec = {"model": "VAE", "kwargs": {"features": features, "latent": latent, "hidden": list(hidden),
                                                "posterior": posterior, "layers": layers, "prior": prior,
                                                "likelihood": likelihood, "levels": levels}}
        h = hidden[-1]
        self.encoder = nn.Sequential(MLP(features, h, hidden[:-1], activation="elu", zero_last=False), nn.ELU())
        flow_layers = posterior_layers(posterior, latent, h, layers)
        # the posterior's context is the encoder's output, not user input: no input checks (a diverging
        # encoder then gives a NaN loss, which fit's divergence policy handles, instead of a ValueError)
        self.posterior = Flow(flow_layers, ConditionalDiagNormal(latent, h, hidden=()), context=h, validate=False)
        self.prior = StandardNormal(latent) if prior == "normal" else build_flow(prior, latent)
        outputs = features if likelihood == "bernoulli" else 2 * features
        self.decoder = MLP(latent, outputs, tuple(reversed(hidden)), activation="elu", zero_last=False)

    def check_data(self, x: Tensor) -> None:
        """``x`` must be ``(batch, features)`` and valid for the likelihood (binary / on the level grid)."""
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, {self.features})")
        if self.likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
            raise ValueError("the Bernoulli likelihood needs binary data (use exactflow.vae.binarize)")
        if self.likelihood == "logistic":
            k = x * (self.levels - 1)
            if (x < 0).any() or (x > 1).any() or (k - k.round()).abs().max() > 1e-4:
                raise ValueError(f"the discretised logistic needs data on the grid 0, 1/{self.levels - 1}, ..., 1")

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z), shape ``(batch,)``; ``x`` and ``z`` have the same batch size."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        loc, log_scale = out.chunk(2, dim=-1)
        log_scale = log_scale.clamp(min=-7.0)
        half = 0.5 / (self.levels - 1)
        inv_s = torch.exp(-log_scale)
        upper, lower = inv_s * (x - loc + half), inv_s * (x - loc - half)
        cdf_diff = torch.sigmoid(upper) - torch.sigmoid(lower)
        mid = inv_s * (x - loc)
        log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(2 * half)  # fallback for tiny bins
        log_mid = torch.where(cdf_diff > 1e-5, torch.log(cdf_diff.clamp(min=1e-12)), log_pdf_mid)
        log_first = upper - F.softplus(upper)  # log sigmoid(upper): the bin (-inf, half]
        log_last = -F.softplus(lower)  # log(1 - sigmoid(lower)): the bin [1 - half, inf)
        logp = torch.where(x < half, log_first, torch.where(x > 1 - half, log_last, log_mid))
        return logp.sum(-1)

    def log_weights(self, x: Tensor, k: int = 1) -> Tensor:
        """``log p(x, z_i) - log q(z_i | x)`` for ``k`` reparameterised draws per row: shape ``(k, batch)``."""
        h = self.encoder(x)
        z, log_q = self.posterior.sample_and_log_prob(k, h)  # (k, b, latent), (k, b)
        flat = z.reshape(-1, self.latent)
        log_px = self.log_likelihood(x.repeat(k, 1), flat)
        return (log_px + self.prior.log_prob(flat)).reshape(k, -1) - log_q

    def elbo(self, x: Tensor) -> Tensor:
        """A one-sample estimate of the ELBO of every row, shape ``(batch,)``."""
        return self.log_weights(x, 1)[0]

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` decoded samples: Bernoulli probabilities, or the logistic's location clamped to [0, 1]."""
        z = self.prior.rsample(n)
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out.chunk(2, -1)[0].clamp(0, 1)


def fit_vae(vae: VAE, train: Tensor, steps: int = 2000, batch: int = 100, lr: float = 1e-3,
            clip_grad: float | None = 100.0, generator: torch.Generator | None = None, valid: Tensor | None = None,
            **options: Any) -> list[float]:
    """Maximise the one-sample ELBO on minibatches of ``train``: `exactflow.fit` with the
    `ELBO` objective and a constant learning rate; returns the mean ELBO per step.

    The batches are seeded from ``generator`` (None: the global RNG). ``valid`` rows give the validation
    score (-ELBO) for early stopping; any other keyword of `exactflow.fit` (``ema``, ``patience``,
    ``eval_every``, ``checkpoint``, ``callbacks``, ``progress``, ...) is passed on.
    """
    from .training import fit

    seed = int(torch.randint(2**62, (1,), generator=generator))
    options = {"schedule": "constant", "progress": False, "seed": seed, **options}
    history = fit(vae, objective=ELBO(train, valid, seed=options["seed"]), steps=steps, batch_size=batch, lr=lr,
                  clip_grad=clip_grad, **options)
    return [-v for v in history.train]


def save_vae(path: str | Path, vae: VAE, info: dict | None = None) -> Path:
    """Write ``vae`` (weights and constructor arguments) atomically, like `exactflow.save` a flow."""
    from .training import save_module

    return save_module(path, vae, info=info)


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The VAE `save_vae` (or a ``fit(..., checkpoint=...)`` of a VAE) wrote, in eval mode on ``device``."""
    from .training import read_module

    header, tensors = read_module(path)
    spec = header["spec"]
    if spec.get("model") != "VAE":
        raise ValueError(f"{path}: holds a {spec.get('model')!r}, not a VAE")
    vae = VAE(**spec["kwargs"]).to(getattr(torch, header["dtype"]))
    load_state(vae, tensors, where=str(path))
    return vae.to(device).eval()


@torch.no_grad()
def evaluate_vae(vae: VAE, x: Tensor, k: int = 100, chunk: int = 64) -> dict[str, float]:
    """Mean test ELBO and IWAE bound (``k`` samples per example) in nats, from the same draws."""
    vae.check_data(x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vae.eval()
    elbo, iwae = [], []
    for start in range(0, len(x), chunk):
        log_w = vae.log_weights(x[start : start + chunk], k).double()
        elbo.append(log_w.mean(0))
        iwae.append(torch.logsumexp(log_w, 0) - math.log(k))
    return {"elbo": float(torch.cat(elbo).mean()), "iwae": float(torch.cat(iwae).mean()), "k": k}


def _split(x: Tensor, seed: int, valid: float, test: float) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed shuffle (``seed``); ``test`` then ``valid`` of the rows held out (fractions)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test, n_valid = round(test * len(x)), round(valid * len(x))
    x = x[perm]
    return x[n_test + n_valid :], x[n_test : n_test + n_valid], x[:n_test]


def load_data(source: str = "digits", levels: int | None = None, seed: int = 0) -> Dataset:
    """Flat data in ``[0, 1]`` with fixed train/valid/test splits (70/10/20 % for digits, 80/10/10 % for files).

    ``"digits"``: the data registry's 8x8 digits (17 levels, scaled by 1/16). A ``.npy`` path: an array
    ``(n, ...)`` flattened per row; integer arrays are divided by ``levels - 1`` (``levels`` defaults
    to max + 1), float arrays must lie in ``[0, 1]`` already.
    """
    if source == "digits":
        from .data import registry as datasets

        images = datasets.build("digits", seed=seed)
        splits = (images.train, images.valid, images.test)
        flat = [x.reshape(len(x), -1) / (images.levels - 1) for x in splits]
        return Dataset("digits", *flat, levels=images.levels, info=images.info)
    if not source.endswith(".npy"):
        raise ValueError(f"data must be 'digits' or a path to a .npy file, got {source!r}")
    arr = np.load(source, allow_pickle=False)
    if arr.ndim < 2 or len(arr) < 10:
        raise ValueError(f"{source}: expected an array of shape (n >= 10, ...), got {arr.shape}")
    arr = arr.reshape(len(arr), -1)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0:
            raise ValueError(f"{source}: integer data must be non-negative levels, found {arr.min()}")
        levels = levels or int(arr.max()) + 1
        if arr.max() >= levels:
            raise ValueError(f"{source}: values up to {arr.max()} do not fit in {levels} levels")
        x = torch.as_tensor(arr, dtype=torch.float32) / (levels - 1)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{source}: float data must be finite and inside [0, 1]")
        x = torch.as_tensor(arr, dtype=torch.float32)
    else:
        raise ValueError(f"{source}: unsupported dtype {arr.dtype}")
    train, valid, test = _split(x, seed, 0.1, 0.1)
    return Dataset(source, train, valid, test, levels=levels, info={"source": source, "seed": seed})
