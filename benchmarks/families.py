"""Test NLL of exactflow's newer flow families beside the peer library that has each one, on 2-D toy densities.

    python benchmarks/families.py --datasets moons --seeds 0 1 2 --json moons.json     # one process per data set
    python benchmarks/families.py --report moons.json 8gaussians.json checkerboard.json # the markdown tables
    python benchmarks/families.py --steps 3 --groups splines --datasets moons         # smoke run

Every group below pairs exactflow models with their peers. Within a group, per data set and seed, all models see
the same data (exactflow.data's fixed 20k train / 5k test split), the same mini-batches (batch ``--batch``), the
same optimiser (Adam, constant ``--lr``) and the same seed for their initial weights; they take turns step by step
in one process on one thread, so load from other jobs on the machine hits them alike. Each model's training cost
is its **CPU time** (``time.thread_time``, not wall time: the machine is shared). Two budgets, one run:

- *equal steps*: every model takes ``--steps`` steps; its test NLL is scored;
- *equal CPU time*: the budget ``B`` is the largest CPU time any model of the group needed for those steps; every
  faster model then keeps training (same batch stream) until it too has used ``B``, and is scored again. The
  slowest model's two scores are the same.

Test NLL is in nats on the test split, exact for every model (lower is better): residual flows are scored in eval
mode (exact log-det in 2-D for both libraries), the resampled base after re-estimating its normaliser from
``--calibrate`` proposals. A model whose loss turns non-finite stops there and counts as diverged. The report
gives mean +- standard error over seeds (``sd / sqrt(n)``), the steps and the CPU seconds, and exactflow's test NLL
minus its peer's, paired by seed (mean +- standard error; negative: exactflow better). The spline variants have no
peer of their own; they are set beside zuko's (autoregressive) rational-quadratic NSF.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import exactflow
from exactflow.bases import ResampledBase
from exactflow.data import registry as datasets
from exactflow.transforms.residual import LipschitzMLP

HIDDEN = (64, 64)
DATASETS = ("moons", "8gaussians", "checkerboard")


class _Zuko(nn.Module):
    """A zuko lazy flow with the ``log_prob(x)`` of an exactflow Flow."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)


class _PyroNormalising(nn.Module):
    """Pyro transforms ``self.layers`` used data -> latent on N(0, I): ``log p(x) = log N(T(x)) + log|det dT/dx|``.

    Pyro's Sylvester and Polynomial transforms have no inverse (they only serve samples they produced themselves),
    so the only way they score given data exactly is as the normalising map."""

    layers: nn.ModuleList

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``T(x)`` and the log-det Pyro's layers report for it."""
        ladj = torch.zeros(x.shape[0], dtype=x.dtype)
        for t in self.layers:
            y = t(x)
            ladj = ladj + t.log_abs_det_jacobian(x, y)
            x = y
        return x, ladj

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The density; NaN, not an error, where the map overflows (the run then counts the model as diverged)."""
        z, ladj = self.latent(x)
        return torch.distributions.Normal(0.0, 1.0, validate_args=False).log_prob(z).sum(-1) + ladj

    def log_prob_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """The same map's density with ``log|det dT/dx|`` from the autograd Jacobian instead of Pyro's formula."""
        z = self.latent(x)[0]
        jac = torch.func.vmap(torch.func.jacrev(lambda v: self.latent(v[None])[0][0]))(x)
        normal = torch.distributions.Normal(0.0, 1.0, validate_args=False)
        return normal.log_prob(z).sum(-1) + torch.linalg.slogdet(jac).logabsdet


class _PyroSylvester(_PyroNormalising):
    """``depth`` Pyro Sylvester (Householder) layers used data -> latent on N(0, I). exactflow's `Sylvester` runs
    the other way (latent -> data, as in the paper) and inverts numerically."""

    def __init__(self, depth: int, reflections: int) -> None:
        super().__init__()
        from pyro.distributions.transforms import Sylvester

        self.layers = nn.ModuleList(Sylvester(2, count_transforms=reflections) for _ in range(depth))


class _PyroPolynomial(_PyroNormalising):
    """``depth`` Pyro sum-of-squares `Polynomial` layers (Jaini et al. 2019) used data -> latent on N(0, I):
    ``z_i = c_i + int_0^{x_i} sum_k (sum_{l <= degree} a_ikl t^l)^2 dt``, ``squares`` squares, the ``a_i`` from
    Pyro's `AutoRegressiveNN` (ReLU, hidden sizes ``hidden``) on ``x_<i``; the orders alternate between layers
    (natural, reversed, ...), as exactflow's ``permutation="reverse"`` does. Its log-det, ``sum_i log`` of the
    integrand at ``x_i``, is that of the map (the layer is triangular). With ``train``, the layers see
    ``(x - mean) / std`` (fixed, per feature, from ``train``) and the log-det gains ``-sum_i log std_i``, as
    behind `exactflow.standardize`."""

    def __init__(self, depth: int, hidden: tuple[int, ...], squares: int, degree: int,
                 train: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(2) if train is None else train.double().mean(0).float())
        self.register_buffer("scale", torch.ones(2) if train is None else train.double().std(0).float())
        from pyro.distributions.transforms import Polynomial
        from pyro.nn import AutoRegressiveNN

        def layer(i: int) -> nn.Module:
            order = torch.tensor([0, 1]) if i % 2 == 0 else torch.tensor([1, 0])
            arn = AutoRegressiveNN(2, list(hidden), param_dims=[(degree + 1) * squares], permutation=order)
            return Polynomial(arn, input_dim=2, count_degree=degree, count_sum=squares)

        self.layers = nn.ModuleList(layer(i) for i in range(depth))

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, ladj = super().latent((x - self.loc) / self.scale)
        return z, ladj - self.scale.log().sum()


def grid_mass(log_prob: Callable[[torch.Tensor], torch.Tensor], half_width: float = 10.0, n: int = 500) -> float:
    """``∫ exp(log_prob)`` over ``[-half_width, half_width]^2`` by the midpoint rule on an ``n x n`` grid: 1 for a
    normalised density whose mass lies in the box (the toy sets lie well inside [-5, 5]^2)."""
    h = 2 * half_width / n
    axis = -half_width + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    pts = torch.cartesian_prod(axis, axis).float()
    with torch.no_grad():
        lp = torch.cat([log_prob(b).double() for b in pts.split(10_000)])
    return (lp.exp().sum() * h * h).item()


class _NormflowsResidual(nn.Module):
    """normflows' residual flow: ``depth`` blocks ``x + g(x)``, ``g`` its ``LipschitzMLP([2, *hidden, 2])`` (bound
    0.97 per layer), on a fixed N(0, I).

    normflows' ``InducedNormLinear.forward`` divides its weight by ``max(1, sigma / 0.97)`` with
    ``sigma = u^T W v`` from power-iteration vectors that it does not update itself (``compute_weight(update=
    False)``); they move only when ``nf.utils.update_lipschitz(model, n)`` runs, as normflows' own examples do
    after every optimiser step. With ``update=0`` (as before) nothing runs it, so ``u, v`` stay those of the
    initial weights and the bound is not enforced; with ``update=n``, `after_step` runs ``n`` power iterations
    per layer after every step (timed with the step)."""

    def __init__(self, depth: int, hidden: tuple[int, ...], update: int = 0) -> None:
        super().__init__()
        import normflows as nf

        flows = [nf.flows.Residual(nf.nets.LipschitzMLP([2, *hidden, 2], lipschitz_const=0.97), reduce_memory=True)
                 for _ in range(depth)]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
        self.update = update

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def after_step(self) -> None:
        if self.update:
            import normflows as nf

            nf.utils.update_lipschitz(self.flow, self.update)

    def layer_weights(self) -> list[torch.Tensor]:
        """The weights its linear layers use now."""
        import normflows as nf

        return [m.compute_weight(update=False) for m in self.modules()
                if isinstance(m, nf.nets.lipschitz.InducedNormLinear)]


def _normflows_realnvp_gmm(depth: int) -> nn.Module:
    """normflows' RealNVP as `benchmarks.peers` builds it (swap permutations, zero-initialised MLPs), on its
    trainable 8-component GaussianMixture base."""
    import normflows as nf

    layers: list[nn.Module] = []
    for i in range(depth):
        if i:
            layers.append(nf.flows.Permute(2, mode="swap"))
        layers.append(nf.flows.AffineCouplingBlock(nf.nets.MLP([1, *HIDDEN, 2], init_zeros=True)))
    return nf.NormalizingFlow(nf.distributions.GaussianMixture(8, 2), layers)


def _zuko(name: str, **kwargs: object) -> Callable[[torch.Tensor], nn.Module]:
    def make(train: torch.Tensor) -> nn.Module:
        import zuko

        return _Zuko(getattr(zuko.flows, name)(2, **kwargs))

    return make


def _ef(name: str, standardise: bool = False, **kwargs: object) -> Callable[[torch.Tensor], nn.Module]:
    """exactflow's preset ``name``; with ``standardise``, behind `exactflow.standardize` fitted to the training set
    (the flow models the standardised data, its ``log_prob`` stays in the data's units)."""

    def make(train: torch.Tensor) -> nn.Module:
        flow = exactflow.build(name, features=2, **kwargs)
        return exactflow.standardize(flow, train) if standardise else flow

    return make


#: group -> {row name: factory}. The first rows are exactflow's, then the peers. A preset not registered in this
#: checkout (e.g. before NAF/UNAF/SOS land) is left out of its group by `groups`.
GROUPS: dict[str, dict[str, tuple[str | None, Callable[[torch.Tensor], nn.Module]]]] = {
    "residual": {  # 4 blocks x + g(x), g an MLP 2 -> 32 -> 32 -> 2, Lipschitz bound 0.97 (exactflow: + ActNorm)
        "exactflow ResidualFlow": ("ResidualFlow", _ef("ResidualFlow", depth=4, hidden=(32, 32))),
        "normflows Residual (LipschitzMLP)": (None, lambda train: _NormflowsResidual(4, (32, 32))),
        "normflows Residual + update_lipschitz(5) per step": (None, lambda train: _NormflowsResidual(4, (32, 32), 5)),
    },
    "sylvester": {  # 8 Householder-Sylvester layers, M = D = 2 hidden units, 2 reflections each
        "exactflow Sylvester (householder)": ("Sylvester", _ef("Sylvester", depth=8, kind="householder")),
        "Pyro Sylvester (data -> latent)": (None, lambda train: _PyroSylvester(8, 2)),
    },
    "splines": {  # 3 coupling splines, 8 bins, MLP 2x64 (exactflow on [-5, 5] with linear tails)
        **{f"exactflow NSF spline={s}": ("NSF", _ef("NSF", depth=3, hidden=HIDDEN, bins=8, bound=5.0, spline=s))
           for s in ("rational-quadratic", "linear", "quadratic", "cubic")},
        "zuko NSF (rational-quadratic)": (None, _zuko("NSF", transforms=3, hidden_features=HIDDEN, bins=8)),
    },
    "bases": {  # RealNVP, 8 affine couplings, MLP 2x64; only the base differs
        "exactflow RealNVP + GaussianMixture": ("RealNVP", _ef("RealNVP", depth=8, hidden=HIDDEN, mask="half",
                                                               base="GaussianMixture")),
        "exactflow RealNVP + ResampledBase": ("RealNVP", _ef("RealNVP", depth=8, hidden=HIDDEN, mask="half",
                                                             base="ResampledBase")),
        "normflows RealNVP + GaussianMixture": (None, lambda train: _normflows_realnvp_gmm(8)),
    },
    "naf": {  # 3 layers, MADE 2x64; the transformers as in benchmarks/naf_toy.py (16 sigmoids / a 16-unit signal);
        # SOS: 3 squares of degree 2 (exactflow's defaults) in both libraries, on standardised data in both (raw,
        # 3 stacked degree-5 maps overflow float32 at initialisation on the checkerboard, in both libraries)
        "exactflow NAF": ("NAF", _ef("NAF", depth=3, hidden=HIDDEN, components=16)),
        "exactflow UNAF": ("UNAF", _ef("UNAF", depth=3, hidden=HIDDEN, embed=16, integrand=HIDDEN, nodes=33)),
        "exactflow SOS (standardised)": ("SOS", _ef("SOS", standardise=True, depth=3, hidden=HIDDEN)),
        "zuko NAF": (None, _zuko("NAF", transforms=3, signal=16, hidden_features=HIDDEN,
                                 network={"hidden_features": HIDDEN})),
        "zuko UNAF (log-det by quadrature)": (None, _zuko("UNAF", transforms=3, signal=16, hidden_features=HIDDEN,
                                                          network={"hidden_features": HIDDEN})),
        "Pyro Polynomial (SOS, standardised)": (None, lambda train: _PyroPolynomial(3, HIDDEN, 3, 2, train)),
    },
}


#: the row an exactflow row is compared with, where it is not its group's first peer row (None: no peer)
PEERS = {"exactflow UNAF": "zuko UNAF (log-det by quadrature)",
         "exactflow SOS (standardised)": "Pyro Polynomial (SOS, standardised)"}


def peer_of(model: str, group: str) -> str | None:
    if not model.startswith("exactflow"):
        return None
    if model in PEERS:
        return PEERS[model]
    return next((k for k in GROUPS[group] if not k.startswith("exactflow")), None)


def groups(names: list[str]) -> dict[str, dict[str, Callable[[torch.Tensor], nn.Module]]]:
    """The requested groups with the rows this checkout can build (exactflow presets must be registered)."""
    out = {}
    for g in names:
        if g not in GROUPS:
            raise ValueError(f"unknown group {g!r}: choose from {', '.join(GROUPS)}")
        rows = {k: make for k, (preset, make) in GROUPS[g].items()
                if preset is None or preset in exactflow.flows.registry}
        if any(k.startswith("exactflow") for k in rows):
            out[g] = rows
    return out


def pyro_check(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """For Pyro's Sylvester: the test NLL with the autograd log-det, and both densities' mass on a grid."""
    with torch.no_grad():
        nll = -torch.cat([model.log_prob_autograd(b) for b in x.split(1000)]).mean().item()
    return {"nll_autograd": nll, "mass_own": grid_mass(model.log_prob),
            "mass_autograd": grid_mass(model.log_prob_autograd)}


def residual_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights every Lipschitz-bounded linear layer of a residual flow uses now (none for other models)."""
    if isinstance(model, _NormflowsResidual):
        return model.layer_weights()
    return [w for m in model.modules() if isinstance(m, LipschitzMLP) for w in m.weights()]


def residual_check(model: nn.Module) -> dict[str, float]:
    """For a residual flow: the largest spectral norm of the weights its layers use (the bound is 0.97), and its
    density's mass on a grid (1 for a density; above 1 when the map folds, i.e. is not invertible)."""
    model.eval()
    with torch.no_grad():
        sigma = max(torch.linalg.matrix_norm(w.detach().double(), ord=2).item() for w in residual_weights(model))
    mass = grid_mass(model.log_prob)
    model.train()
    return {"max_sigma": sigma, "mass": mass}


def test_nll(model: nn.Module, x: torch.Tensor, calibrate: int) -> float:
    model.eval()
    base = getattr(model, "base", None)
    if isinstance(base, ResampledBase):
        base.calibrate(calibrate)
    with torch.no_grad():
        nll = -torch.cat([model.log_prob(b) for b in x.split(1000)]).mean().item()
    model.train()
    return nll


def run_group(makers: dict[str, Callable[[torch.Tensor], nn.Module]], data: object, seed: int, steps: int, batch: int,
              lr: float, calibrate: int) -> dict[str, dict[str, float]]:
    """Train the group's models from ``seed`` (equal steps, then equal CPU time); return per-model results."""
    models, opts = {}, {}
    for name, make in makers.items():
        torch.manual_seed(seed)
        models[name] = make(data.train)
        models[name].train()
        opts[name] = torch.optim.Adam(models[name].parameters(), lr=lr)
    cpu = dict.fromkeys(models, 0.0)
    done = dict.fromkeys(models, 0)
    dead: set[str] = set()
    gen = torch.Generator().manual_seed(10_000 + seed)
    train = data.train

    def step(name: str, x: torch.Tensor) -> None:
        start = time.thread_time()
        loss = -models[name].log_prob(x).mean()
        if not torch.isfinite(loss):
            dead.add(name)
        else:
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            after = getattr(models[name], "after_step", None)
            if after is not None:
                after()
        cpu[name] += time.thread_time() - start
        done[name] += 1

    batches = []  # the shared batch stream, kept so every model sees the same batches in the same order
    for i in range(steps):
        batches.append(train[torch.randint(len(train), (batch,), generator=gen)])
        for name in models:
            if name not in dead:
                step(name, batches[i])
    out = {name: {"steps_nll": math.nan if name in dead else test_nll(m, data.test, calibrate),
                  "steps_cpu": cpu[name], "steps": done[name]} for name, m in models.items()}
    for name, m in models.items():
        if isinstance(m, _PyroSylvester) and name not in dead:
            out[name].update({f"steps_{k}": v for k, v in pyro_check(m, data.test).items()})
        if residual_weights(m) and name not in dead:
            out[name].update({f"steps_{k}": v for k, v in residual_check(m).items()})
    budget = max(cpu.values())
    while True:
        behind = [n for n in models if n not in dead and cpu[n] < budget]
        if not behind:
            break
        for name in behind:
            i = done[name]
            if i == len(batches):
                batches.append(train[torch.randint(len(train), (batch,), generator=gen)])
            step(name, batches[i])
    for name, m in models.items():
        out[name].update(time_nll=math.nan if name in dead else test_nll(m, data.test, calibrate),
                         time_cpu=cpu[name], time_steps=done[name], budget=budget,
                         params=sum(p.numel() for p in m.parameters()))
        if isinstance(m, _PyroSylvester) and name not in dead:
            out[name].update({f"time_{k}": v for k, v in pyro_check(m, data.test).items()})
        if residual_weights(m) and name not in dead:
            out[name].update({f"time_{k}": v for k, v in residual_check(m).items()})
    return out


def recheck_pyro(records: list[dict], batch: int, lr: float) -> None:
    """Add `pyro_check`'s numbers to the Pyro rows of ``records`` that lack them (runs before the check existed):
    retrain the model alone from its seed on the same batch stream for the recorded numbers of steps (the batches
    and the initial weights do not depend on the other models, so this is the model of the table; its own test
    NLL is compared with the recorded one)."""
    for r in records:
        if not r["model"].startswith("Pyro Sylvester") or "steps_nll_autograd" in r or not math.isfinite(r["time_nll"]):
            continue
        data = datasets[r["data"]]()
        torch.manual_seed(r["seed"])
        model = GROUPS[r["group"]][r["model"]][1](data.train)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(10_000 + r["seed"])
        for i in range(r["time_steps"]):
            x = data.train[torch.randint(len(data.train), (batch,), generator=gen)]
            loss = -model.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            for when, steps in (("steps", r["steps"]), ("time", r["time_steps"])):
                if i + 1 == steps:
                    r[f"{when}_nll_rerun"] = test_nll(model, data.test, 0)
                    r.update({f"{when}_{k}": v for k, v in pyro_check(model, data.test).items()})
        print(json.dumps(r), flush=True)


def pyro_report(records: list[dict]) -> str:
    """A table of Pyro's Sylvester rows: its own NLL against the autograd one, and both densities' grid mass."""
    rows = [r for r in records if "steps_nll_autograd" in r]
    if not rows:
        return ""
    lines = ["**Pyro Sylvester: its log_prob against the same map with the autograd log-det**", "",
             "| data | seed | steps | NLL by Pyro's log-det | NLL by autograd log-det | mass of Pyro's density "
             "| mass with autograd log-det |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for when, steps in (("steps", r["steps"]), ("time", r["time_steps"])):
            rerun = f" (retrained: {r[f'{when}_nll_rerun']:.3f})" if f"{when}_nll_rerun" in r else ""
            lines.append(f"| {r['data']} | {r['seed']} | {steps} | {r[f'{when}_nll']:.3f}{rerun} | "
                         f"{r[f'{when}_nll_autograd']:.3f} | {r[f'{when}_mass_own']:.3f} | "
                         f"{r[f'{when}_mass_autograd']:.3f} |")
    return "\n".join([*lines, ""])


def residual_report(records: list[dict]) -> str:
    """A table of the residual rows: each layer's largest spectral norm and the density's grid mass, per run."""
    rows = [r for r in records if "steps_max_sigma" in r]
    if not rows:
        return ""
    lines = ["**Residual flows: largest spectral norm of a layer's weight (bound 0.97) and the density's grid mass**",
             "", "| data | model | seed | steps | largest spectral norm | grid mass |", "|---|---|---|---|---|---|"]
    for r in rows:
        for when, steps in (("steps", r["steps"]), ("time", r["time_steps"])):
            if when == "time" and steps == r["steps"]:
                continue
            lines.append(f"| {r['data']} | {r['model']} | {r['seed']} | {steps} | {r[f'{when}_max_sigma']:.3f} | "
                         f"{r[f'{when}_mass']:.3f} |")
    return "\n".join([*lines, ""])


def _mean_se(values: list[float]) -> str:
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return "diverged"
    text = f"{statistics.mean(ok):.3f}"
    if len(ok) > 1:
        text += f" ± {statistics.stdev(ok) / math.sqrt(len(ok)):.3f}"
    if len(ok) < len(values):
        text += f" ({len(values) - len(ok)}/{len(values)} diverged)"
    return text


def _paired(rows: list[dict], model: str, peer: str | None, key: str) -> str:
    """exactflow minus peer test NLL, paired by seed: mean +- standard error."""
    if peer is None:
        return "no peer"
    by_seed = {r["seed"]: r[key] for r in rows if r["model"] == peer}
    diffs = [r[key] - by_seed[r["seed"]] for r in rows if r["model"] == model and r["seed"] in by_seed]
    ok = [d for d in diffs if math.isfinite(d)]
    if not ok:
        return "n/a"
    text = f"{statistics.mean(ok):+.3f}"
    return text + (f" ± {statistics.stdev(ok) / math.sqrt(len(ok)):.3f}" if len(ok) > 1 else "")


def _versus(rows: list[dict], model: str, group: str) -> str:
    peer = peer_of(model, group)
    if not model.startswith("exactflow"):
        return ""
    return f"{_paired(rows, model, peer, 'steps_nll')} / {_paired(rows, model, peer, 'time_nll')}"


def report(records: list[dict]) -> str:
    """Markdown tables (one per group) from the records of one or more runs. The last column is exactflow's test
    NLL minus its peer's, paired by seed (negative: exactflow lower, i.e. better), at equal steps / equal CPU."""
    lines = []
    for g in dict.fromkeys(r["group"] for r in records):
        rows = [r for r in records if r["group"] == g]
        steps = max(r["steps"] for r in rows)  # a diverged model's record holds the steps it took before
        seeds = sorted({r["seed"] for r in rows})
        lines += [f"**{g}** ({steps} steps; seeds {', '.join(map(str, seeds))})", "",
                  "| data | model | params | NLL, equal steps | CPU s for those steps | NLL, equal CPU time "
                  "| steps in that time | minus peer: equal steps / equal CPU |",
                  "|---|---|---|---|---|---|---|---|"]
        for d in dict.fromkeys(r["data"] for r in rows):
            day = [r for r in rows if r["data"] == d]
            for m in dict.fromkeys(r["model"] for r in rows if r["data"] == d):
                rs = [r for r in rows if r["data"] == d and r["model"] == m]
                lines.append(
                    f"| {d} | {m} | {rs[0]['params']} | {_mean_se([r['steps_nll'] for r in rs])} | "
                    f"{statistics.mean(r['steps_cpu'] for r in rs):.1f} | {_mean_se([r['time_nll'] for r in rs])} | "
                    f"{statistics.mean(r['time_steps'] for r in rs):.0f} | "
                    f"{_versus(day, m, g)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", nargs="+", default=list(GROUPS))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--calibrate", type=int, default=1_000_000, help="proposals to estimate ResampledBase's Z")
    p.add_argument("--json", help="write the per-run records here (updated after every group)")
    p.add_argument("--report", nargs="+", metavar="JSON", help="only print the tables of these record files")
    p.add_argument("--recheck-pyro", action="store_true",
                   help="with --report: first add the Pyro check to Pyro rows recorded without it (retrains them)")
    args = p.parse_args(argv)
    if args.report:
        records = [r for path in args.report for r in json.load(open(path))["records"]]
        if args.recheck_pyro:
            torch.set_num_threads(1)
            recheck_pyro(records, args.batch, args.lr)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"args": vars(args), "torch": torch.__version__, "records": records}, f, indent=1)
        text = report(records) + "\n" + pyro_report(records) + "\n" + residual_report(records)
        print(text)
        return text
    torch.set_num_threads(1)
    chosen = groups(args.groups)
    print(f"torch {torch.__version__}, 1 thread; groups {', '.join(chosen)}; {args.steps} steps, batch {args.batch}, "
          f"Adam lr {args.lr}; CPU time by time.thread_time", flush=True)
    records = []
    for d in args.datasets:
        data = datasets[d]()
        for seed in args.seeds:
            for g, makers in chosen.items():
                for model, r in run_group(makers, data, seed, args.steps, args.batch, args.lr, args.calibrate).items():
                    records.append({"group": g, "data": d, "seed": seed, "model": model, "steps": args.steps, **r})
                    print(json.dumps(records[-1]), flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"args": vars(args), "torch": torch.__version__, "records": records}, f, indent=1)
    text = report(records) + "\n" + pyro_report(records) + "\n" + residual_report(records)
    print(text)
    return text


if __name__ == "__main__":
    main()
