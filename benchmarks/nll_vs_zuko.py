"""Test NLL of exactflow's MAF / NSF / NSFAutoregressive against zuko's MAF / NSF on 2-D toy densities.

Every model sees the same data (exactflow.data registry: 20k train / 5k test), the same seed, the same
mini-batches (Adam, lr 1e-3, batch 512) and the same sizes (3 transforms, hidden (64, 64), 8 bins on
[-5, 5]); the table reports the test NLL in nats of the final model (lower is better), as the mean and
standard deviation over ``--seeds`` when several are given.

    python benchmarks/nll_vs_zuko.py --models MAF --seeds $(seq 0 19)    # tables in docs/benchmarks.md
    python benchmarks/nll_vs_zuko.py --models NSF --seeds $(seq 0 9)
    python benchmarks/nll_vs_zuko.py --steps 5 --libs exactflow --datasets moons   # smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import exactflow
from exactflow.data import registry as datasets

SIZES = {"transforms": 3, "hidden": (64, 64), "bins": 8, "bound": 5.0}


def exactflow_models() -> dict[str, Callable[[], torch.nn.Module]]:
    flows = exactflow.flows.registry
    t, h = SIZES["transforms"], SIZES["hidden"]
    return {
        "exactflow MAF": lambda: flows["MAF"](features=2, depth=t, hidden=h),
        "exactflow NSF (coupling)": lambda: flows["NSF"](features=2, depth=t, hidden=h, bins=SIZES["bins"],
                                                         bound=SIZES["bound"]),
        "exactflow NSFAutoregressive": lambda: flows["NSFAutoregressive"](features=2, depth=t, hidden=h,
                                                                          bins=SIZES["bins"], bound=SIZES["bound"]),
    }


def zuko_models() -> dict[str, Callable[[], torch.nn.Module]]:
    import zuko

    t, h = SIZES["transforms"], SIZES["hidden"]

    class Zuko(torch.nn.Module):  # the same log_prob(x) interface as exactflow.Flow
        def __init__(self, flow: torch.nn.Module):
            super().__init__()
            self.flow = flow

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return self.flow().log_prob(x)

    return {
        "zuko MAF": lambda: Zuko(zuko.flows.MAF(2, transforms=t, hidden_features=h)),
        "zuko NSF": lambda: Zuko(zuko.flows.NSF(2, transforms=t, hidden_features=h, bins=SIZES["bins"])),
    }


def train_and_test(make: Callable[[], torch.nn.Module], data, steps: int, batch: int, lr: float,
                   seed: int) -> tuple[float, float]:
    """Train from ``seed`` on ``data.train``; return (test NLL in nats, seconds)."""
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        x = data.train[torch.randint(len(data.train), (batch,), generator=gen)]
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        nll = -torch.cat([model.log_prob(x) for x in data.test.split(1000)]).mean().item()
    return nll, seconds


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["moons", "8gaussians", "checkerboard"])
    parser.add_argument("--libs", nargs="+", default=["exactflow", "zuko"], choices=["exactflow", "zuko"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", default=[], help="keep only models whose name contains one of these")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for 2-D)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    models: dict[str, Callable[[], torch.nn.Module]] = {}
    if "exactflow" in args.libs:
        models.update(exactflow_models())
    if "zuko" in args.libs:
        models.update(zuko_models())
    if args.models:
        models = {k: v for k, v in models.items() if any(m in k for m in args.models)}
    data = {name: datasets[name](train=20000, valid=2000, test=5000, seed=0) for name in args.datasets}

    rows = []
    for model_name, make in models.items():
        cells = []
        for name in args.datasets:
            nlls = []
            for seed in args.seeds:
                nll, seconds = train_and_test(make, data[name], args.steps, args.batch, args.lr, seed)
                print(f"{model_name:30s} {name:14s} seed {seed}  test NLL {nll:.4f}  ({seconds:.0f} s)", flush=True)
                nlls.append(nll)
            t = torch.tensor(nlls)
            cells.append(f"{t.mean():.3f} ± {t.std():.3f}" if len(nlls) > 1 else f"{nlls[0]:.3f}")
        rows.append(f"| {model_name} | " + " | ".join(cells) + " |")
    header = "| model | " + " | ".join(args.datasets) + " |\n|---|" + "---|" * len(args.datasets)
    table = header + "\n" + "\n".join(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
