"""RealNVP on a standard normal, a Gaussian mixture and a resampled (LARS) base, on 2-D toy data at equal steps.

    .venv/bin/python benchmarks/bases_toy.py [--steps 2000] [--data moons 8gaussians] [--libs exactflow normflows]

Every model is the same RealNVP (8 affine couplings, MLP 2x64) trained by maximum likelihood for ``--steps`` Adam
steps on the same batches (one thread); only the base differs. normflows' equivalent is its RealNVP (the one
`benchmarks.peers` builds) with its ``GaussianMixture`` base; the normflows release installed here has no resampled
base (its LARS code lives in the authors' separate repository), so that row is exactflow only. Test NLL in nats on
the data set's fixed test split (lower is better). The resampled base is scored after `ResampledBase.calibrate`
(10^6 randomised quasi-Monte Carlo points, instead of the 2^16 its eval mode would use by itself); its row also
shows the estimate of Z and how much the NLL could move within 2 standard errors of it (``log p`` depends on Z
through ``log_prob_dz``).
"""

from __future__ import annotations

import argparse
import time

import torch

import exactflow
from exactflow.bases import ResampledBase
from exactflow.data import registry as data_registry

BASES = {"StandardNormal": {}, "GaussianMixture": {"components": 8}, "ResampledBase": {"hidden": (64, 64)}}


def test_nll(log_prob, x: torch.Tensor, batch: int = 1000) -> float:
    with torch.no_grad():
        return sum(-log_prob(x[i: i + batch]).sum().item() for i in range(0, len(x), batch)) / len(x)


def _models(libs: list[str]) -> dict[str, tuple[torch.nn.Module, object]]:
    """name -> (module, log_prob)."""
    models = {}
    if "exactflow" in libs:
        for name, kwargs in BASES.items():
            torch.manual_seed(0)
            flow = exactflow.build("RealNVP", features=2, depth=8, hidden=(64, 64))
            if name != "StandardNormal":
                exactflow.flows.set_base(flow, name, **kwargs)
            models[f"exactflow {name}"] = (flow, flow.log_prob)
    if "normflows" in libs:
        import normflows as nf

        from benchmarks.peers import build

        for name in ("DiagGaussian", "GaussianMixture"):
            model = build("normflows", "realnvp", 2, seed=0)
            flow = model.module
            if name == "GaussianMixture":
                flow.q0 = nf.distributions.GaussianMixture(8, 2)
            models[f"normflows {name}"] = (flow, flow.log_prob)
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data", nargs="+", default=["moons", "8gaussians"])
    p.add_argument("--libs", nargs="+", default=["exactflow", "normflows"])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.steps} Adam steps (lr {args.lr}, linear decay to 5%), "
          f"batch {args.batch}; CPU time per model (time.thread_time)")
    print("| data | model | params | train CPU s | test NLL (nats) | note |")
    print("|---|---|---|---|---|---|")
    for data in args.data:
        ds = data_registry[data]()
        models = _models(args.libs)
        opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, (m, _) in models.items()}
        used = dict.fromkeys(models, 0.0)
        g = torch.Generator().manual_seed(1)
        for step in range(args.steps):  # the models take turns on the same batch: load on the machine hits all alike
            x = ds.train[torch.randint(len(ds.train), (args.batch,), generator=g)]
            for k, (_, log_prob) in models.items():
                t0 = time.thread_time()
                for group in opts[k].param_groups:
                    group["lr"] = args.lr * max(0.05, 1 - step / args.steps)
                loss = -log_prob(x).mean()
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
                used[k] += time.thread_time() - t0
        for k, (m, log_prob) in models.items():
            m.eval()
            note = ""
            base = getattr(m, "base", None)
            if isinstance(base, ResampledBase):
                z, se = base.calibrate(1_000_000)
                with torch.no_grad():
                    shift = (base.log_prob_dz(m.to_latent(ds.test)).abs().mean() * 2 * se).item()
                note = f"Z = {z.item():.4f} +- {se.item():.1e}; NLL +- {shift:.1e} within 2 se"
            nll = test_nll(log_prob, ds.test)
            n_params = sum(q.numel() for q in m.parameters())
            print(f"| {data} | {k} | {n_params} | {used[k]:.1f} | {nll:.3f} | {note} |", flush=True)


if __name__ == "__main__":
    main()
