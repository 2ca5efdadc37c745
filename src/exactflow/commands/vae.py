"""``exactflow vae``: train a VAE with a flow posterior and report test ELBO and IWAE bound."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import save, write_json
from ..distributions import Flow
from ._shared import add_batch_size_option, add_depth_option, add_hidden_option, add_threads_option, apply_threads

if TYPE_CHECKING:
    from ..training import History

EXAMPLES = """examples:
  exactflow vae --posterior planar --depth 8 --steps 3000 --out runs/vae-planar
  exactflow vae --posterior diag --likelihood logistic --steps 3000
  exactflow vae --data images.npy --levels 256 --likelihood logistic --posterior radial"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vae", help="train a VAE whose posterior is a flow; report test ELBO and IWAE bound",
        description="Train a VAE (MLP encoder/decoder) whose approximate posterior is the encoder's diagonal "
        "Gaussian pushed through a conditional flow, then report the test ELBO and the k-sample IWAE bound "
        "in nats per example.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="'digits' (scikit-learn) or a .npy array with values in [0, 1] "
                   "or integer levels")
    p.add_argument("--levels", type=int, default=None, help="levels of integer .npy data (default max + 1)")
    p.add_argument("--likelihood", default="bernoulli", choices=["bernoulli", "logistic"],
                   help="bernoulli: data binarised at 0.5; logistic: discretised logistic on the data's levels")
    p.add_argument("--posterior", default="planar", help="diag, or a conditional flow: planar, radial, iaf, ...")
    add_depth_option(p, 8, dest="layers", what="the posterior flow")
    p.add_argument("--prior", default="normal", help="normal, or an unconditional flow name for a learned prior")
    p.add_argument("--latent", type=int, default=8)
    add_hidden_option(p, [256, 256], what="the encoder (the decoder mirrors them)")
    p.add_argument("--steps", type=int, default=3000)
    add_batch_size_option(p, 100, dest="batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=100, help="importance samples per test example for the IWAE bound")
    p.add_argument("--ema", type=float, default=None, help="EMA decay of the weights (e.g. 0.999; default off)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation ELBOs (default 100)")
    p.add_argument("--patience", type=int, help="stop after this many evaluations without a better validation ELBO")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    add_threads_option(p)
    p.add_argument("--out", default=None, help="folder for result.json and model.safetensors (read by "
                   "exactflow.vae.load_vae; a learned prior also as prior.safetensors, read by exactflow.load) "
                   "(default runs/vae-<posterior>)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..vae import VAE, binarize, evaluate_vae, fit_vae, load_data, save_vae

    apply_threads(args)
    torch.manual_seed(args.seed)
    data = load_data(args.data, levels=args.levels, seed=args.seed)
    train, valid, test = data.train, data.valid, data.test
    if args.likelihood == "bernoulli":
        train, valid, test = binarize(train), binarize(valid), binarize(test)
    elif data.levels is None:
        raise ValueError("the logistic likelihood needs quantised data: give integer .npy data (or --levels)")
    vae = VAE(train.shape[1], latent=args.latent, hidden=args.hidden, posterior=args.posterior, layers=args.layers,
              prior=args.prior, likelihood=args.likelihood, levels=data.levels or 2)
    show = not args.quiet and sys.stderr.isatty()

    def report(step: int, history: History) -> None:
        if not args.quiet and not show:
            score = f"  valid -ELBO {history.valid[-1]:.3f}" if history.valid_step[-1:] == [step] else ""
            print(f"step {step:6d}/{args.steps}  -ELBO {history.train[-1]:.3f}{score} nats", flush=True)

    history = fit_vae(vae, train, steps=args.steps, batch=args.batch, lr=args.lr, valid=valid if len(valid) else None,
                      seed=args.seed, ema=args.ema, eval_every=args.eval_every, patience=args.patience,
                      progress=show, callback=report)
    scores = evaluate_vae(vae, test, k=args.k)
    out = Path(args.out or f"runs/vae-{args.posterior}")
    out.mkdir(parents=True, exist_ok=True)
    record = {**{key: value for key, value in vars(args).items() if key != "run"}, "test_elbo": scores["elbo"],
              "test_iwae": scores["iwae"], "train_elbo_last100": sum(history[-100:]) / len(history[-100:]),
              "train": len(train), "test": len(test)}
    write_json(out / "result.json", record)
    save_vae(out / "model.safetensors", vae, info={"vae": record})
    if isinstance(vae.prior, Flow):  # a learned prior
        save(out / "prior.safetensors", vae.prior, info={"vae": record})
    print(f"{data.name}: {len(train)} train / {len(test)} test, {args.likelihood} likelihood, "
          f"posterior {args.posterior} ({args.layers} layers), {args.steps} steps")
    print(f"test ELBO {scores['elbo']:.3f} nats   test IWAE bound (k={args.k}) {scores['iwae']:.3f} nats")
    print(f"wrote {out / 'result.json'} and {out / 'model.safetensors'}")
    return 0
