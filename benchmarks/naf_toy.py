"""exactflow's NAF and UNAF against zuko's on two moons, at equal training steps.

    .venv/bin/python benchmarks/naf_toy.py [--steps 1000] [--batch 256] [--data moons]

One thread; the models take turns one Adam step at a time in one process (same batches, same learning rate), so
load from other jobs hits them alike; each model's training CPU time (``time.thread_time``) is reported beside its
test NLL in nats on the data set's fixed test split (lower is better). Every flow has 3 layers whose MADE has
hidden sizes (64, 64). The transformers differ by design: exactflow's NAF is Huang et al.'s deep sigmoidal flow
(16 sigmoids per feature), zuko's NAF is a monotone MLP with positive weights (hidden (64, 64), signal 16);
both UNAFs integrate an ELU network of hidden sizes (64, 64) fed a 16-unit signal, zuko's by Gauss-Legendre
quadrature (log-det approximate), exactflow's by the exact integral of its interpolant on 33 grid points.
"""

from __future__ import annotations

import argparse
import time

import torch

from exactflow.data import registry as data_registry
from exactflow.flows import registry as flows

HIDDEN = (64, 64)


def models() -> dict[str, torch.nn.Module]:
    import zuko

    return {
        "exactflow NAF": flows["NAF"](features=2, depth=3, hidden=HIDDEN, components=16),
        "zuko NAF": zuko.flows.NAF(2, transforms=3, signal=16, hidden_features=HIDDEN,
                                   network={"hidden_features": HIDDEN}),
        "exactflow UNAF": flows["UNAF"](features=2, depth=3, hidden=HIDDEN, embed=16, integrand=HIDDEN, nodes=33),
        "zuko UNAF": zuko.flows.UNAF(2, transforms=3, signal=16, hidden_features=HIDDEN,
                                     network={"hidden_features": HIDDEN}),
    }


def log_prob(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model().log_prob(x) if name.startswith("zuko") else model.log_prob(x)


def test_nll(name: str, model: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        total = sum(-log_prob(name, model, x[i: i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train()
    return total / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="Adam steps per model")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data", nargs="+", default=["moons"])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps of batch {args.batch} per model, interleaved")
    print("| data | model | params | train CPU s | test NLL (nats) |")
    print("|---|---|---|---|---|")
    for name in args.data:
        ds = data_registry[name]()
        torch.manual_seed(0)
        built = models()
        opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in built.items()}
        cpu = {k: 0.0 for k in built}
        g = torch.Generator().manual_seed(1)
        for step in range(args.steps):
            x = ds.train[torch.randint(len(ds.train), (args.batch,), generator=g)]
            for k, m in built.items():
                for group in opts[k].param_groups:  # linear decay to 5% over the run
                    group["lr"] = args.lr * max(0.05, 1 - step / args.steps)
                t0 = time.thread_time()
                loss = -log_prob(k, m, x).mean()
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
                cpu[k] += time.thread_time() - t0
        for k, m in built.items():
            n_params = sum(q.numel() for q in m.parameters())
            print(f"| {name} | {k} | {n_params} | {cpu[k]:.0f} | {test_nll(k, m, ds.test):.3f} |", flush=True)


if __name__ == "__main__":
    main()
