"""Test NLL of exactflow's circular neural spline flows against zuko's NCSF on a von Mises mixture on the 2-torus.

The data: an equal mixture of three products of von Mises densities on ``[-pi, pi)^2`` (fixed locations and
concentrations), 20k train / 5k test points from ``--data-seed``. Every model sees the same mini-batches (Adam,
lr 1e-3, batch 512) for the same number of steps, on one thread, the models interleaved step by step, and the
same sizes where both libraries have them (3 layers, hidden (64, 64), 8 bins). The table reports the test NLL in
nats (lower is better; the uniform density on the torus scores ``2 log(2 pi) = 3.676``), as the mean and
standard deviation over ``--seeds``, and the thread CPU seconds each model spent training.

    python benchmarks/circular_toy.py --steps 2000 --seeds 0 1 2
    python benchmarks/circular_toy.py --steps 5 --libs exactflow    # smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

import exactflow

LOCATIONS = [(-2.0, 1.0), (0.5, -2.5), (2.5, 2.0)]
CONCENTRATIONS = [(4.0, 2.0), (2.0, 6.0), (8.0, 3.0)]
SIZES = {"depth": 3, "hidden": (64, 64), "bins": 8}


def von_mises_mixture(n: int, seed: int) -> torch.Tensor:
    """``n`` points of the equal mixture of the products of von Mises densities above, in ``[-pi, pi)^2``."""
    gen = torch.Generator().manual_seed(seed)
    comp = torch.randint(len(LOCATIONS), (n,), generator=gen)
    loc, conc = torch.tensor(LOCATIONS)[comp], torch.tensor(CONCENTRATIONS)[comp]
    with torch.random.fork_rng():  # torch's VonMises sampler draws from the global generator
        torch.manual_seed(seed)
        x = torch.distributions.VonMises(loc, conc).sample()
    return exactflow.transforms.splines_circular.wrap(x)


def mixture_log_prob(x: torch.Tensor) -> torch.Tensor:
    """The data's own log-density (the best NLL any model can reach is its mean's negative on the test set)."""
    loc, conc = torch.tensor(LOCATIONS), torch.tensor(CONCENTRATIONS)
    parts = torch.distributions.VonMises(loc, conc).log_prob(x.unsqueeze(1)).sum(-1)  # (n, components)
    return torch.logsumexp(parts, -1) - math.log(len(LOCATIONS))


def models(libs: list[str]) -> dict[str, Callable[[], torch.nn.Module]]:
    d, h, k = SIZES["depth"], SIZES["hidden"], SIZES["bins"]
    out: dict[str, Callable[[], torch.nn.Module]] = {}
    if "exactflow" in libs:
        out["exactflow CircularNSF (coupling)"] = lambda: exactflow.flows.CircularNSF(2, depth=d, hidden=h, bins=k)
        out["exactflow CircularNSFAutoregressive"] = lambda: exactflow.flows.CircularNSFAutoregressive(
            2, depth=d, hidden=h, bins=k)
    if "zuko" in libs:
        import zuko

        class Zuko(torch.nn.Module):  # the same log_prob(x) interface as exactflow.Flow
            def __init__(self, flow: torch.nn.Module) -> None:
                super().__init__()
                self.flow = flow

            def log_prob(self, x: torch.Tensor) -> torch.Tensor:
                return self.flow().log_prob(x)

        out["zuko NCSF"] = lambda: Zuko(zuko.flows.NCSF(2, transforms=d, hidden_features=h, bins=k))
    return out


def run(seed: int, steps: int, libs: list[str], train: torch.Tensor, test: torch.Tensor,
        batch: int = 512, lr: float = 1e-3) -> dict[str, tuple[float, float]]:
    """Train every model from ``seed``, interleaved step by step; return {name: (test NLL, CPU seconds)}."""
    built = {}
    for name, make in models(libs).items():
        torch.manual_seed(seed)
        model = make()
        built[name] = (model, torch.optim.Adam(model.parameters(), lr=lr))
    cpu = dict.fromkeys(built, 0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = train[torch.randint(len(train), (batch,), generator=gen)]
        for name, (model, opt) in built.items():
            start = time.thread_time()
            loss = -model.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            cpu[name] += time.thread_time() - start
    with torch.no_grad():
        return {name: (-model.log_prob(test).mean().item(), cpu[name]) for name, (model, _) in built.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--libs", nargs="+", default=["exactflow", "zuko"], choices=["exactflow", "zuko"])
    parser.add_argument("--data-seed", type=int, default=1234)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train, test = von_mises_mixture(20000, args.data_seed), von_mises_mixture(5000, args.data_seed + 1)
    results: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        for name, value in run(seed, args.steps, args.libs, train, test).items():
            results.setdefault(name, []).append(value)
    floor = -mixture_log_prob(test).mean().item()
    print(f"von Mises mixture on the torus, {args.steps} steps, seeds {args.seeds}; data's own NLL {floor:.3f}, "
          f"uniform {2 * math.log(2 * math.pi):.3f}")
    print("| model | test NLL (nats) | train CPU s |")
    print("|---|---|---|")
    for name, values in results.items():
        nll = [v[0] for v in values]
        spread = f" ± {statistics.stdev(nll):.3f}" if len(nll) > 1 else ""
        print(f"| {name} | {statistics.mean(nll):.3f}{spread} | {statistics.mean(v[1] for v in values):.1f} |")


if __name__ == "__main__":
    main()
