"""``exactflow vi``: fit a flow to an unnormalised 2-D (or n-D) target by the reverse KL."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._shared import add_batch_size_option, add_depth_option, add_threads_option, apply_threads

if TYPE_CHECKING:
    from ..distributions import Flow
    from ..targets import Target
    from ..training import History

EXAMPLES = """examples:
  exactflow vi --target u1 --flow planar --depth 32 --steps 3000 --out runs/vi-u1
  exactflow vi --target mixture --flow radial --depth 16 --steps 500
  exactflow vi --target funnel --dim 5 --flow RealNVP --steps 1000 --lr 1e-3"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..targets import registry as targets

    p = subparsers.add_parser(
        "vi", help="fit a flow to an unnormalised density (reverse KL), report ELBO and log Z",
        description="Fit a flow q to p~ = exp(log_target) by minimising E_q[log q - log p~]; report the ELBO, "
        "the importance-sampled log Z and its effective sample size, and draw target and fit side by side.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="u1", help=f"one of: {', '.join(sorted(targets))} (default u1)")
    p.add_argument("--dim", type=int, default=None, help="dimension, for targets that take one (funnel)")
    p.add_argument("--flow", default="Planar", help="a flow from `exactflow list` (case-insensitive; default Planar)")
    add_depth_option(p, dest="layers")
    p.add_argument("--steps", type=int, default=2000)
    add_batch_size_option(p, 256, dest="batch", what="draws from q per step")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--anneal", type=int, default=0, help="steps over which beta rises from 0.01 to 1 (0: off)")
    p.add_argument("--samples", type=int, default=20000, help="draws for the final ELBO / log Z / ESS")
    p.add_argument("--ema", type=float, default=None, help="EMA decay of the weights (e.g. 0.999; default off)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation ELBOs (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--out", default=None, help="folder for result.json, model.safetensors (read by exactflow.load) "
                   "and density.png (default runs/vi-<target>)")
    add_threads_option(p)
    p.add_argument("--no-plots", "--no-plot", dest="no_plot", action="store_true", help="skip the picture")
    p.set_defaults(run=run)


@torch.no_grad()
def plot_density(target: Target, flow: Flow, path: Path, title: str = "", points: int = 200) -> None:
    """Target density and fitted density on the target's box, side by side (first two coordinates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x1a, x1b, x2a, x2b = target.bounds
    g1, g2 = torch.linspace(x1a, x1b, points), torch.linspace(x2a, x2b, points)
    grid = torch.stack(torch.meshgrid(g1, g2, indexing="xy"), -1).reshape(-1, 2)
    panels = [("target  p~(x)", target(grid)), ("fitted  q(x)", flow.log_prob(grid))]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    for ax, (label, log_d) in zip(axes, panels, strict=True):
        dens = torch.exp(log_d - log_d.max()).reshape(points, points)
        ax.imshow(dens.numpy(), origin="lower", extent=(x1a, x1b, x2a, x2b), cmap="viridis", aspect="auto")
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from ..checkpoint import save
    from ..targets import quadrature_log_z
    from ..targets import registry as targets
    from ..vi import build_flow, check_log_z, fit_reverse_kl

    apply_threads(args)
    torch.manual_seed(args.seed)
    try:
        target = targets.build(args.target, **({} if args.dim is None else {"dim": args.dim}))
    except TypeError:
        raise ValueError(f"target {args.target!r} has a fixed dimension; drop --dim") from None
    flow = build_flow(args.flow, target.dim, depth=args.layers)
    show = not args.quiet and sys.stderr.isatty()

    def report(step: int, history: History) -> None:
        if not args.quiet and not show:
            valid = f"  valid {history.valid[-1]:.4f}" if history.valid_step[-1:] == [step] else ""
            print(f"step {step:6d}/{args.steps}  -ELBO {history.train[-1]:.4f}{valid} nats", flush=True)

    with warnings.catch_warnings():  # a divergence is reported below, once
        warnings.filterwarnings("ignore", message="training diverged", category=RuntimeWarning)
        result = fit_reverse_kl(flow, target, steps=args.steps, batch=args.batch, lr=args.lr, anneal=args.anneal,
                                samples=args.samples, ema=args.ema, eval_every=args.eval_every, progress=show,
                                callback=report)
    out = Path(args.out or f"runs/vi-{args.target}")
    out.mkdir(parents=True, exist_ok=True)
    reference = target.log_z if target.log_z is not None else quadrature_log_z(target) if target.dim == 2 else None
    warning = None if reference is None else check_log_z(result, reference)
    record = {"target": args.target, "dim": target.dim, "flow": args.flow, "layers": args.layers, "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "anneal": args.anneal, "seed": args.seed, "ema": args.ema,
              **result.as_dict(), "status": result.fit.status, "true_log_z": target.log_z,
              "reference_log_z": reference, "log_z_warning": warning}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    history = {} if result.fit is None else {"history": result.fit.to_dict()}  # the explorer draws its curves
    save(out / "model.safetensors", flow, info={"vi": record, **history})
    if result.fit.status == "diverged":
        print(f"warning: {result.fit.message}")
    print(f"ELBO {result.elbo:.4f}  log Z (importance sampled) {result.log_z:.4f} +- {result.log_z_se:.4f}  "
          f"ESS {result.ess:.0f}/{result.samples} ({100 * result.ess_fraction:.1f}%)")
    if reference is not None:
        how = "true" if target.log_z is not None else "quadrature"
        print(f"{how} log Z {reference:.4f}  (error {result.log_z - reference:+.4f}; "
              f"KL(q||p) = log Z - ELBO = {reference - result.elbo:.4f})")
    if warning is not None:
        print(f"warning: {warning}")
    print(f"wrote {out / 'result.json'} and {out / 'model.safetensors'}")
    if not args.no_plot:
        if target.dim != 2:
            print(f"no picture: the target is {target.dim}-D (pictures are for 2-D targets)")
        elif not math.isfinite(result.elbo):
            print("no picture: the fit is not finite")
        else:
            depth = "" if args.layers is None else f" x {args.layers}"
            title = f"{target.name}: {args.flow}{depth}, ELBO {result.elbo:.3f}"
            plot_density(target, flow, out / "density.png", title)
            print(f"wrote {out / 'density.png'}")
    return 0
