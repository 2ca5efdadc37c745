"""Flow matching with independent vs minibatch-OT coupling vs reflow: test NLL and the NFE a given sample quality
needs, on 2-D toy data.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flow_matching_couplings.py --budget 40 --data moons checkerboard

One torch thread; budgets are this thread's CPU time (``time.thread_time()``). The same CNF (MLP 3 x 128, SiLU)
is trained by conditional flow matching for ``--budget`` seconds with the independent coupling and, from the same
initialisation, with the minibatch optimal-transport coupling (exact plan per batch, POT). Reflow starts from the
independent model: ``--pairs`` noise draws are pushed through it (RK4 x 64) and the velocity is fine-tuned on the
fixed pairs for ``--budget / 2`` more seconds (so reflow had 1.5 budgets and the pair generation in all).

Reported per model: the test NLL in nats (ODE likelihood, RK4 x 50, exact divergence) on 2000 test points; the
energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between 2000 samples (the same noise for every model) and
those 2000 test points, with RK4 at 1 .. 16 steps (4 NFE per step) and with dopri5 at three tolerances (NFE counted
by the solver); and "NFE @ level": the fewest RK4 evaluations whose samples reach the level ``2 x`` the energy
distance of the independent model's RK4 x 128 samples (the same level for every model of a data set; "-" if none
reaches it).
"""

from __future__ import annotations

import argparse
import importlib
import math
import time

import torch
from torch import Tensor

from exactflow.data import registry as datasets
from exactflow.flows import registry as flows
from exactflow.transforms.continuous import flow_matching_loss, straightness

RK4_STEPS = (1, 2, 4, 8, 16)
TOLS = (1e-2, 1e-3, 1e-4)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """The (V-statistic) energy distance between the samples ``x`` and ``y``."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def train(flow, loss_fn, budget: float, lr: float) -> int:
    """Adam on ``loss_fn(flow, step)`` for ``budget`` s of thread CPU time, cosine decay; returns the steps."""
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    start, steps = time.thread_time(), 0
    while (used := time.thread_time() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, used / budget)))
        loss = loss_fn(flow, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return steps


@torch.no_grad()
def push(flow, z: Tensor, solver: str, steps: int = 32, tol: float = 1e-5) -> tuple[Tensor, int]:
    """``phi_1(z)`` with the given solver; (samples, NFE)."""
    cnf = flow.transform
    cnf.solver, cnf.steps, cnf.rtol, cnf.atol = solver, steps, tol, tol
    x, _ = cnf.integrate(z, 0.0, 1.0, logdet=False)
    return x, cnf.nfe


@torch.no_grad()
def test_nll(flow, x: Tensor) -> float:
    cnf = flow.transform
    cnf.solver, cnf.steps = "rk4", 50
    return float(-flow.log_prob(x).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=40.0, help="training CPU seconds (thread time) per model")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pairs", type=int, default=8192, help="reflow pairs")
    p.add_argument("--data", nargs="+", default=["moons", "checkerboard"])
    args = p.parse_args()
    torch.set_num_threads(1)
    importlib.import_module("ot")  # POT, imported before any budget starts
    print(f"CNF MLP 3 x 128; budget {args.budget:.0f} s thread CPU time per model (reflow: +{args.budget / 2:.0f} s), "
          f"batch {args.batch}, Adam lr {args.lr} cosine, 1 thread", flush=True)
    header = ("| data | coupling | train steps | test NLL (nats) | straightness | "
              + " | ".join(f"ED, RK4 x {k} ({4 * k} NFE)" for k in RK4_STEPS)
              + " | " + " | ".join(f"dopri5 {t:g}: NFE / ED" for t in TOLS) + " | NFE @ level |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in args.data:
        ds = datasets[name]()
        test = ds.test
        ref = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:2000]]
        z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
        train_x = ds.train
        models = {}
        for coupling in ("independent", "ot"):
            torch.manual_seed(0)
            flow = flows["CNF"](features=2, hidden=(128, 128, 128))
            gen = torch.Generator().manual_seed(2)

            def loss_fn(f, step, coupling=coupling, gen=gen, train_x=train_x):
                x = train_x[torch.randint(len(train_x), (args.batch,), generator=gen)]
                return flow_matching_loss(f, x, coupling=coupling)

            models[coupling] = (flow, train(flow, loss_fn, args.budget, args.lr))
            print(f"  {name} {coupling}: {models[coupling][1]} steps", flush=True)
        # reflow from the independent model
        rf = flows["CNF"](features=2, hidden=(128, 128, 128))
        rf.load_state_dict(models["independent"][0].state_dict())
        x0 = torch.randn(args.pairs, 2, generator=torch.Generator().manual_seed(3))
        x1, _ = push(rf, x0, "rk4", 64)
        gen = torch.Generator().manual_seed(4)

        def reflow_loss(f, step, gen=gen, x0=x0, x1=x1):
            idx = torch.randint(args.pairs, (args.batch,), generator=gen)
            return flow_matching_loss(f, x1[idx], x0=x0[idx])

        steps = train(rf, reflow_loss, args.budget / 2, args.lr / 2)
        models["reflow (of independent)"] = (rf, models["independent"][1] + steps)
        level = 2 * energy_distance(push(models["independent"][0], z, "rk4", 128)[0], ref)
        for label, (flow, steps) in models.items():
            flow.eval()
            eds = [energy_distance(push(flow, z, "rk4", k)[0], ref) for k in RK4_STEPS]
            adaptive = []
            for tol in TOLS:
                x, nfe = push(flow, z, "dopri5", tol=tol)
                adaptive.append(f"{nfe} / {energy_distance(x, ref):.4f}")
            reach = next((4 * k for k, e in zip(RK4_STEPS, eds, strict=True) if e <= level), None)
            s = float(straightness(flow, z[:500]).mean())
            nll = test_nll(flow, ref)
            lines.append(f"| {name} | {label} | {steps} | {nll:.3f} | {s:.3f} | " + " | ".join(f"{e:.4f}" for e in eds)
                         + " | " + " | ".join(adaptive) + f" | {reach if reach is not None else '-'} |")
            print(lines[-1], flush=True)
        print(f"  {name}: level = {level:.4f}", flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
