"""``exactflow train``: fit a registered flow to a data set or a .csv/.npy file (maximum likelihood or, for a
CNF, flow matching), optionally conditional on some of the file's columns."""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._shared import (
    FILE_SUFFIXES,
    add_depth_option,
    add_hidden_option,
    add_threads_option,
    apply_threads,
    assignments,
    build_data,
    data_record,
    describe,
    device,
    flow_kwargs,
)

if TYPE_CHECKING:
    from ..distributions import Flow
    from ..training import History

EPILOG = """\
examples:
  exactflow train moons --flow RealNVP --steps 2000 --out runs/moons
  exactflow train table.csv --flow NICE --hidden 128,128 --data-arg test=0.2
  exactflow train checkerboard --flow RealNVP --depth 12 --flow-arg mask=alternating
  exactflow train --config run.toml --steps 500      # the command line wins over the file
  exactflow train --out runs/moons --resume          # continue after an interruption (even kill -9)
  exactflow train moons --objective flow-matching --flow CNF --ema 0.999
  exactflow train moons --base GaussianMixture --base-arg components=4   # a learned base (`exactflow list`)
  exactflow train moons --objective flow-matching --flow CNF --coupling ot --reflow 500
  exactflow train digits --flow TarFlow --noise 0.05       # noise in training, denoised samples
  exactflow train digits --flow TarFlow --data-arg labels=true --flow-arg classes=10   # class-conditional
  exactflow train table.csv --context-cols age,height  # a conditional flow of the other columns given these
  torchrun --nproc_per_node=2 -m exactflow train moons --out runs/ddp

A config file is a flat table of these options, e.g. run.toml:
  data = "moons"
  flow = "RealNVP"
  steps = 3000
  hidden = [128, 128]
  flow_args = { mask = "alternating" }

The run folder gets model.safetensors (the final flow: best valid weights), checkpoint.safetensors
(weights, optimizer and RNG state, written atomically at every evaluation), config.json, and for
2-D data density.png, samples.png, morph.png, morph.gif and curves.png.
"""

DEFAULT_STEPS = 2000
RECIPE_HELP = ("the recipe is the measured one for --flow auto (exactflow.flows.auto.RECIPE), batch 256, lr 1e-3, "
               "cosine, no warm-up, clip 5, no weight decay, no EMA for the others")
TIMED_STEPS = 10**7  # the step limit under --time without --steps: the clock decides
RENAMED_OPTIONS = {"transforms": "depth"}  # options saved by runs of earlier releases, under their new names
KEEP_ON_RESUME = ("out", "resume", "overwrite", "device", "threads", "quiet", "plots", "config", "run", "command")


def duration(text: str) -> float:
    """Seconds from ``--time``: ``90`` or ``90s`` (seconds), ``2m`` or ``1.5m`` (minutes), ``1h`` (hours)."""
    value = str(text).strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(value[-1:], None)
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 90, 60s, 2m or 1.5m, got {text!r}")
    return seconds


def add_training_options(p: argparse.ArgumentParser, steps: int | None = None, batch_size: int | None = None,
                         threads: int | None = None) -> None:
    """The options of ``train`` (shared with ``demo``, which passes its own defaults). ``steps=None``: the
    default is `DEFAULT_STEPS`, or on ``--resume`` the run's own."""
    from ..flows import registry as flows
    from ..objectives import OBJECTIVES
    from ..registry import BASES
    from ..training import SCHEDULES

    p.add_argument("--flow", default="auto", help="flow from the registry "
                   f"({', '.join(sorted(flows))}), or auto (default): the measured default flow and training "
                   "recipe (docs/benchmarks.md)")
    add_depth_option(p)
    add_hidden_option(p)
    p.add_argument("--flow-arg", dest="flow_args", action="append", metavar="KEY=VALUE",
                   help="any other keyword of the flow's factory (repeatable; values read as JSON)")
    p.add_argument("--base", help="base distribution from the registry instead of the flow's own "
                   f"({', '.join(sorted(BASES))}); saved with the model")
    p.add_argument("--base-arg", dest="base_args", action="append", metavar="KEY=VALUE",
                   help="keyword of the --base distribution (repeatable; values read as JSON), e.g. components=4")
    p.add_argument("--data-arg", dest="data_args", action="append", metavar="KEY=VALUE",
                   help="keyword of the data loader (repeatable), e.g. train=5000 or seed=1 for the toy "
                   "sets, test=0.2 or valid=0.1 for a .csv/.npy file")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise inside the model (default: on for .csv/.npy files, off otherwise)")
    p.add_argument("--objective", choices=OBJECTIVES[:2], default="likelihood",
                   help="likelihood (default) or flow-matching (a CNF); the reverse KL is `exactflow vi`, the ELBO "
                   "`exactflow vae`")
    p.add_argument("--coupling", choices=("independent", "ot"), default="independent",
                   help="flow matching: pair noise and data independently (default) or by minibatch optimal "
                   "transport (ot; needs POT)")
    p.add_argument("--reflow", type=int, default=0, metavar="STEPS",
                   help="flow matching: after training, straighten the paths by this many steps of rectified-flow "
                   "reflow on pairs drawn from the trained flow (default 0: none)")
    p.add_argument("--noise", type=float, help="flows with a noise option (TarFlow): standard deviation of the "
                   "Gaussian noise added to the inputs in training, recorded in the model; its samples are denoised "
                   "by a score step (sample --no-denoise to skip)")
    p.add_argument("--context-cols", help="columns of a .csv/.npy file that are the context of a conditional flow: "
                   "indices or header names, comma-separated (e.g. 0,3 or age,height); the vector presets standardise "
                   "the context inside the flow (statistics fitted on the training rows, saved with the model; "
                   "--flow-arg standardize_context=false turns it off, --flow-arg embedding=[64,16] adds an "
                   "embedding network)")
    p.add_argument("--time", type=duration, metavar="DURATION",
                   help="stop training after this much wall-clock time (90, 60s, 2m, 1.5m), keeping the best "
                   "validation weights; --steps is then only an upper bound (default: none)")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"optimisation steps (default {DEFAULT_STEPS}; on --resume the run's own)" if steps is None
                   else "optimisation steps (default %(default)s)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=batch_size,
                   help="global batch size (default: the recipe's; " + RECIPE_HELP + ")")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the recipe's)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default: the recipe's)")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default: the recipe's)")
    p.add_argument("--clip-grad", type=float, help="gradient-norm clip, 0 = off (default: the recipe's)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default: the recipe's)")
    p.add_argument("--patience", type=int, help="stop after this many evaluations without valid improvement")
    p.add_argument("--ema", type=float, help="keep an exponential moving average of the weights with this decay "
                   "(e.g. 0.999), 0 = off; evaluation and the saved model use it (default: the recipe's)")
    p.add_argument("--compile", action="store_true", help="compile the flow with torch.compile (the first call "
                   "takes up to a minute)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations/checkpoints (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches (default 0)")
    add_threads_option(p, threads)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the pictures (default on)")
    p.add_argument("--no-plot", dest="plots", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="fit a flow by maximum likelihood", epilog=EPILOG,
                              description="Fit a registered flow to a data set by maximum likelihood.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", help="data set name (see `exactflow list`) or a .csv/.npy file")
    add_training_options(p)
    p.add_argument("--out", help="run folder (default runs/<data>-<flow>)")
    p.add_argument("--config", help="TOML or YAML file setting any of these options")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in --out")
    p.set_defaults(run=main)


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); ``(world, rank, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = device(device_name)
    if world <= 1:
        return 1, 0, dev
    import torch.distributed as dist

    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return world, dist.get_rank(), dev


def _options(args: argparse.Namespace) -> dict:
    """The options to record (a data file by its absolute path, so --resume works from any folder)."""
    options = {k: v for k, v in vars(args).items() if k not in KEEP_ON_RESUME}
    if Path(options["data"]).suffix.lower() in FILE_SUFFIXES:
        options["data"] = str(Path(options["data"]).resolve())
    return options


def _restore_options(args: argparse.Namespace, ckpt_path: Path) -> None:
    """On --resume the run's saved options come back (all but --steps when given, and device/output flags)."""
    from .. import checkpoint

    saved = checkpoint.info(ckpt_path)["info"].get("options")
    if saved is None:
        raise ValueError(f"{ckpt_path}: records no training options to resume with")
    steps = args.steps
    for key, value in saved.items():
        setattr(args, RENAMED_OPTIONS.get(key, key), value)
    if steps is not None:
        args.steps = steps


def _where(args: argparse.Namespace) -> str:
    """For errors about an option's value: where else it may have been set (the config file)."""
    return f" or in {args.config}" if args.config else ""


def _set_base(flow: Flow, args: argparse.Namespace) -> None:
    """Give ``flow`` the registered base ``--base`` built with the ``--base-arg`` keywords (its spec records it, so
    the saved model is rebuilt with it)."""
    from ..flows import set_base

    kwargs = assignments(args.base_args, "--base-arg")
    try:
        set_base(flow, args.base, **kwargs)
    except (TypeError, ValueError) as err:  # an unknown name, a keyword it does not take, a bad value
        raise ValueError(f"base {args.base!r}: {err} (set by --base or --base-arg{_where(args)})") from None


def train(args: argparse.Namespace) -> dict:
    """Run a training described by ``args`` (the ``train`` options); returns a summary dict."""
    from .. import checkpoint, plots
    from ..flows import describe as describe_flow
    from ..flows import registry as flows
    from ..training import evaluate, fit, standardize

    out = Path(args.out or f"runs/{Path(args.data or 'data').stem}-{args.flow}")
    ckpt_path, model_path = out / "checkpoint.safetensors", out / "model.safetensors"
    if args.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint.safetensors in {str(out)!r}")
        _restore_options(args, ckpt_path)
    elif ckpt_path.exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                         "or --out for a new folder")
    if not args.data:
        raise ValueError("no data set given: exactflow train DATA (a name from `exactflow list` or a .csv/.npy file)")
    if args.steps is None:
        args.steps = TIMED_STEPS if getattr(args, "time", None) is not None else DEFAULT_STEPS
    counts = (("--steps", args.steps), ("--batch-size", args.batch_size), ("--eval-every", args.eval_every))
    for option, value in (c for c in counts if c[1] is not None):  # a batch size left out is the recipe's
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option} must be a positive integer, got {value!r} (set by {option}{_where(args)})")
    apply_threads(args)
    world, rank, dev = _distributed(args.device)
    try:
        if rank == 0 and args.overwrite and not args.resume:
            for old in (ckpt_path, model_path):
                old.unlink(missing_ok=True)
        data_kwargs = assignments(args.data_args, "--data-arg")
        if args.context_cols is not None:
            data_kwargs["context_cols"] = args.context_cols
        record = data_record(args.data, data_kwargs)
        if args.context_cols is not None and record["name"] != "tabular":
            raise ValueError(f"--context-cols needs a .csv/.npy file; {args.data!r} is a named data set")
        ds = build_data(record)
        extra = assignments(args.flow_args, "--flow-arg")
        if args.depth is not None:
            extra["depth"] = args.depth
        if args.hidden is not None:
            extra["hidden"] = list(args.hidden)
        if args.flow != "auto" and args.flow not in flows:
            raise ValueError(f"unknown flow {args.flow!r}; available: auto, {', '.join(sorted(flows))}")
        from ..flows.auto import CONDITIONAL_PRESET, PRESET

        auto_preset = PRESET if ds.context is None else CONDITIONAL_PRESET  # the options are checked against it
        preset = flows[auto_preset if args.flow == "auto" else args.flow]
        noise = getattr(args, "noise", None)
        if noise is not None:
            if "noise" not in inspect.signature(preset.factory).parameters:
                raise ValueError(f"--noise is for flows trained with noise (TarFlow); {args.flow} has no noise option")
            if not noise >= 0:
                raise ValueError(f"--noise must be >= 0, got {noise}")
            extra["noise"] = noise
        kwargs = flow_kwargs(preset, ds, extra)
        if extra.get("classes"):  # a class-conditional flow takes the labels as its context, given by classes=K
            if ds.context is None or ds.context[0].shape[1] != 1:
                raise ValueError(f"classes={extra['classes']} needs one label column as context, e.g. "
                                 "exactflow train digits --data-arg labels=true")
        elif ds.context is not None:
            kwargs["context"] = ds.context[0].shape[1]
        torch.manual_seed(args.seed)
        try:
            flow = checkpoint.build(args.flow, **kwargs)
        except (TypeError, ValueError) as err:  # a bad value of an option the factory takes
            raise ValueError(f"flow {args.flow!r}: {err} (set by --flow-arg, --depth or --hidden{_where(args)})") \
                from None
        if getattr(args, "base", None) is not None:
            _set_base(flow, args)
        elif getattr(args, "base_args", None):
            raise ValueError(f"--base-arg needs --base NAME (set{_where(args)})")
        use_std = args.standardize if args.standardize is not None else record["name"] == "tabular"
        if use_std:
            if ds.kind != "vector":
                raise ValueError("--standardize works on vector data; images are dequantised instead")
            standardize(flow, ds.train, columns=ds.info.get("columns"))
        flow.to(dev)
        levels = ds.levels if ds.kind == "image" else None
        info = {"data": describe(ds, record), "options": _options(args)}
        show = not args.quiet and sys.stderr.isatty()

        def report(step: int, history: History) -> None:
            if not args.quiet and not show:
                valid = f"  valid {history.valid[-1]:.4f}" if history.valid_step[-1:] == [step] else ""
                print(f"step {step:6d}/{args.steps}  train {history.train[-1]:.4f}{valid} {history.unit}", flush=True)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="training diverged", category=RuntimeWarning)
            coupling, reflow_steps = getattr(args, "coupling", "independent"), getattr(args, "reflow", 0)
            if args.objective != "flow-matching" and (coupling != "independent" or reflow_steps):
                raise ValueError("--coupling and --reflow apply to --objective flow-matching")
            if not isinstance(reflow_steps, int) or reflow_steps < 0:
                raise ValueError(f"--reflow must be a number of steps >= 0, got {reflow_steps!r}")
            options = {"coupling": coupling} if args.objective == "flow-matching" else {}
            recipe = {k: getattr(args, k, None) for k in ("batch_size", "lr", "schedule", "warmup", "clip_grad",
                                                          "weight_decay", "ema")}
            recipe = {k: (v or None) if k in ("clip_grad", "ema") else v for k, v in recipe.items() if v is not None}
            history = fit(flow, ds, objective=args.objective, **options, steps=args.steps, **recipe,
                          compile=args.compile, patience=args.patience,
                          eval_every=args.eval_every, levels=levels, seed=args.seed,
                          checkpoint=ckpt_path, resume=args.resume, info=info, progress=show, callback=report,
                          time_budget=getattr(args, "time", None))
            if reflow_steps and history.status != "diverged":
                from ..transforms.continuous import reflow

                n = len(ds.train)
                info["reflow"] = {"steps": reflow_steps, "pairs": n}
                reflow(flow, n, context=None if ds.context is None else ds.context[0].to(dev), steps=reflow_steps,
                       batch_size=args.batch_size or 256, lr=args.lr or 1e-3, seed=args.seed, progress=False)
        summary = {"out": str(out), "status": history.status, "message": history.message, "steps": args.steps,
                   "checkpoint": str(ckpt_path)}
        if history.status == "diverged" or rank != 0:
            return summary
        test = evaluate(flow, ds.test, levels=levels, seed=args.seed,
                        context=None if ds.context is None else ds.context[2])
        checkpoint.save(model_path, flow, info={**info, "history": history.to_dict(), "test": test})
        checkpoint.write_json(out / "config.json", {"spec": describe_flow(flow), **info, "test": test,
                                                    "status": history.status, "best_step": history.best_step,
                                                    "seconds": history.seconds})
        pictures = []
        if args.plots:
            cpu_flow = flow.to("cpu")
            if ds.shape == (2,) and ds.context is None:
                pictures = plots.plot_2d(cpu_flow, ds.test, out, history)
            else:
                pictures = [plots.curves(history, out / "curves.png")]
                if ds.kind == "image" and getattr(cpu_flow, "classes", 0):  # one row of samples per class
                    k = cpu_flow.classes
                    x = cpu_flow.sample(8, label=list(range(k))).transpose(0, 1).reshape(8 * k, *ds.shape)
                    pictures.append(plots.image_grid(x, out / "samples.png", nrow=8))
                elif ds.kind == "image":
                    pictures.append(plots.image_grid(cpu_flow.sample(64), out / "samples.png"))
        summary.update(test=test, model=str(model_path), pictures=[str(p) for p in pictures], unit=history.unit,
                       seconds=history.seconds, data=ds.name,
                       flow=f"auto ({flow.spec['flow']})" if args.flow == "auto" else args.flow)
        return summary
    finally:
        if world > 1:
            import torch.distributed as dist

            if sys.exc_info()[0] is None:
                dist.barrier()  # leave together: gloo aborts a process whose peer is still connected
            dist.destroy_process_group()


def print_summary(summary: dict) -> None:
    test = summary["test"]
    nll = f"{test['nll']:.4f} nats"
    if "bits_per_dim" in test:
        nll += f", {test['bits_per_dim']:.4f} bits/dim"
    print(f"trained {summary['flow']} on {summary['data']}: {summary['status']} after {summary['seconds']:.1f} s"
          + (f" ({summary['message']})" if summary["message"] else ""))
    print(f"  test NLL    {nll} ({test['n']} points)")
    print(f"  model       {summary['model']}")
    print(f"  checkpoint  {summary['checkpoint']}")
    for p in summary["pictures"]:
        print(f"  picture     {p}")


def main(args: argparse.Namespace) -> int:
    summary = train(args)
    if summary["status"] == "diverged":
        print(f"exactflow: error: {summary['message']}", file=sys.stderr)
        return 1
    if "test" in summary:
        print_summary(summary)
    return 0
