"""exactflow's ResidualFlow against normflows' residual flow on 2-D toy data, at equal training steps.

    .venv/bin/python benchmarks/residual_toy.py [--steps 1000] [--depth 8] [--hidden 32 32] [--data moons]

Both models are ``depth`` residual blocks ``x + g(x)`` with the same MLP widths and per-layer Lipschitz bound
(0.97) on N(0, I), trained by maximum likelihood with Adam on the same mini-batches, taking turns step by step in
one process on one thread (so load from other jobs hits them alike); each model's training time is CPU time
(``time.thread_time``). exactflow trains with its default log-det policy (exact at 2 features); normflows with its
unbiased Russian-roulette estimate (its training default). Both are scored by the exact log-likelihood on the
data set's test split: exactflow in eval mode, normflows in eval mode, where its 2-D blocks compute the
Jacobian's determinant by brute force. Test NLL in nats (lower is better).

normflows' equivalent of ``ResidualFlow(2, depth=K, hidden=(h, h))``::

    flows = [nf.flows.Residual(nf.nets.LipschitzMLP([2, h, h, 2], lipschitz_const=0.97), reduce_memory=True)
             for _ in range(K)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)

(its ``LipschitzMLP`` applies a Swish before each linear layer and bounds spectral norms by power iteration.)
exactflow's preset ends with its default ActNorm after the blocks. normflows' power-iteration vectors move only
when ``nf.utils.update_lipschitz`` runs, which this script does not call, so its bound is not enforced during
training (docs/benchmarks.md, "Newer families beside their peers", measures what that does).
"""

from __future__ import annotations

import argparse
import time

import torch

from exactflow.data import registry as data_registry
from exactflow.flows import ResidualFlow


def normflows_model(depth: int, hidden: list[int], lipschitz: float) -> torch.nn.Module:
    import normflows as nf

    flows = [nf.flows.Residual(nf.nets.LipschitzMLP([2, *hidden, 2], lipschitz_const=lipschitz),
                               reduce_memory=True) for _ in range(depth)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)


def test_nll(model: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        total = sum(-model.log_prob(x[i: i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train()
    return total / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    p.add_argument("--lipschitz", type=float, default=0.97)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--data", nargs="+", default=["moons"])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps, depth {args.depth}, hidden {args.hidden}, "
          f"batch {args.batch}, lr {args.lr}; CPU seconds by time.thread_time")
    print("| data | library | params | train CPU s | test NLL (nats, exact) |")
    print("|---|---|---|---|---|")
    for name in args.data:
        ds = data_registry[name]()
        torch.manual_seed(0)
        models = {"exactflow": ResidualFlow(2, depth=args.depth, hidden=tuple(args.hidden), lipschitz=args.lipschitz),
                  "normflows": normflows_model(args.depth, args.hidden, args.lipschitz)}
        opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in models.items()}
        used = dict.fromkeys(models, 0.0)
        g = torch.Generator().manual_seed(1)
        for m in models.values():
            m.train()
        for _ in range(args.steps):
            x = ds.train[torch.randint(len(ds.train), (args.batch,), generator=g)]
            for k, m in models.items():
                t0 = time.thread_time()
                loss = -m.log_prob(x).mean()
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
                used[k] += time.thread_time() - t0
        for k, m in models.items():
            n_params = sum(q.numel() for q in m.parameters())
            print(f"| {name} | {k} | {n_params} | {used[k]:.1f} | {test_nll(m, ds.test):.3f} |", flush=True)


if __name__ == "__main__":
    main()
