"""Flow-matching CNF against discrete flows on 2-D toy data at equal training wall time.

    .venv/bin/python benchmarks/cnf_toy.py [--seconds 60] [--data moons checkerboard]

Every model gets the same wall-clock training budget; the models take turns in chunks of ``--chunk``
seconds inside one process, so load from other jobs on a shared machine hits them alike; the learning
rates decay linearly (to 5%) over the budget. The CNF is
trained by conditional flow matching (no ODE solve during training) and scored by the exact
log-likelihood (RK4, exact trace). The discrete flows are trained by maximum likelihood. Test NLL in
nats, on the data set's fixed test split (lower is better).
"""

from __future__ import annotations

import argparse
import time

import torch

from exactflow.data import registry as data_registry
from exactflow.flows import registry as flows
from exactflow.transforms.continuous import flow_matching_loss

BASELINES = {  # name -> factory keywords; the ones not in the registry are skipped
    "RealNVP": {"depth": 8, "hidden": (64, 64)},
    "MAF": {},
    "NSF": {},
}


def test_nll(flow, x: torch.Tensor, batch: int = 1000) -> float:
    flow.eval()
    with torch.no_grad():
        total = sum(-flow.log_prob(x[i: i + batch]).sum().item() for i in range(0, len(x), batch))
    flow.train()
    return total / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="training wall time per model")
    p.add_argument("--chunk", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the discrete flows")
    p.add_argument("--lr-cnf", type=float, default=5e-3, help="Adam learning rate of the CNF")
    p.add_argument("--steps", type=int, default=64, help="RK4 steps when scoring the CNF")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), help="discrete flows to compare")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256], help="velocity MLP widths")
    p.add_argument("--data", nargs="+", default=["moons", "checkerboard"])
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.seconds:.0f} s per model, "
          f"batch {args.batch}; CNF scored with RK4 x{args.steps}, exact trace")
    print("| data | model | params | train steps | train s | test NLL (nats) |")
    print("|---|---|---|---|---|---|")
    for name in args.data:
        torch.manual_seed(0)
        ds = data_registry[name]()
        models = {"CNF (flow matching)": flows["CNF"](features=2, hidden=tuple(args.hidden), steps=args.steps)}
        for base, kw in BASELINES.items():
            if base in flows and base in args.baselines:
                models[base] = flows[base](features=2, **kw)
        lrs = {k: args.lr_cnf if k.startswith("CNF") else args.lr for k in models}
        opts = {k: torch.optim.Adam(m.parameters(), lr=lrs[k]) for k, m in models.items()}
        used = {k: 0.0 for k in models}
        steps = {k: 0 for k in models}
        g = torch.Generator().manual_seed(1)
        while min(used.values()) < args.seconds:
            for k, m in models.items():
                if used[k] >= args.seconds:
                    continue
                t0 = time.perf_counter()
                while (elapsed := time.perf_counter() - t0) < args.chunk:
                    for group in opts[k].param_groups:  # linear decay to 5% over the time budget
                        group["lr"] = lrs[k] * max(0.05, 1 - (used[k] + elapsed) / args.seconds)
                    x = ds.train[torch.randint(len(ds.train), (args.batch,), generator=g)]
                    loss = flow_matching_loss(m, x) if k.startswith("CNF") else -m.log_prob(x).mean()
                    opts[k].zero_grad()
                    loss.backward()
                    opts[k].step()
                    steps[k] += 1
                used[k] += time.perf_counter() - t0
        for k, m in models.items():
            n_params = sum(q.numel() for q in m.parameters())
            nll = test_nll(m, ds.test)
            print(f"| {name} | {k} | {n_params} | {steps[k]} | {used[k]:.0f} | {nll:.3f} |", flush=True)


if __name__ == "__main__":
    main()
