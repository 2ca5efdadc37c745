"""``exactflow explore``: write the interactive HTML explorer of a saved run (and optionally serve it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import load_run, run_data

EPILOG = """\
examples:
  exactflow explore runs/moons                    # writes runs/moons/explorer.html and prints its path
  exactflow explore runs/moons -o moons.html      # somewhere else
  exactflow explore runs/moons --serve            # and serve it on http://127.0.0.1:8000 until Ctrl-C
  exactflow explore runs/vi-u1                    # a vi run: the target's density beside q's
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explore", help="interactive HTML explorer of a saved run", epilog=EPILOG,
                              description="Write one self-contained HTML page (no network needed) exploring a saved "
                                          "run: for 2-D data sliders over the layers in both directions (Gaussian "
                                          "draws pulled back to the data, the data pushed to the Gaussian) over each "
                                          "stage's density, each layer's log-det term on a grid, a hovered point's "
                                          "path through the layers, the learned density beside the data and the "
                                          "training curves; for `exactflow vi` runs the target's density beside q's; "
                                          "for tabular data pairwise marginals of data and samples; for images data "
                                          "beside samples with a temperature slider and an interpolation slider. "
                                          "Address fragments open a frame: #layer=3, #layer=last, "
                                          "#layer=2&dir=normalise, #point=17. "
                                          "Needs plotly (pip install 'exactflow[plot]').",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder or .safetensors checkpoint")
    p.add_argument("-o", "--output", help="the .html file to write (default: explorer.html in the run folder)")
    p.add_argument("--data", help="draw this data set name or .csv/.npy file instead of the recorded one")
    p.add_argument("--data-arg", dest="data_args", action="append", metavar="KEY=VALUE",
                   help="loader keyword for --data")
    p.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000; 0: any free port)")
    p.add_argument("--no-compress", dest="compress", action="store_false",
                   help="inline plotly.js as plain text (about 3 MB more) for browsers without DecompressionStream")
    p.set_defaults(run=main)


def write(model: str | Path, output: str | Path | None = None, data: str | None = None,
          data_args: list[str] | None = None, compress: bool = True) -> Path:
    """Write the explorer of the run at ``model`` to ``output`` (default: ``explorer.html`` in the run folder).

    A run of ``exactflow vi`` (its checkpoint records the target) is drawn against its target: the target's
    density beside q's and, without ``data``, the target's points resampled from q's draws."""
    from .. import checkpoint
    from ..explore import explore

    flow, header, record = load_run(model)
    out = Path(output) if output else checkpoint.resolve(model).parent / "explorer.html"
    info = header["info"]
    history = info.get("history") or info.get("training_state", {}).get("history")
    history = history if history and history.get("step") else None
    if "vi" in info:
        from ..targets import registry as targets

        vi = info["vi"]
        target = targets.build(vi["target"])
        if target.dim != vi["dim"]:  # a target that takes its dimension (exactflow vi --dim)
            target = targets.build(vi["target"], dim=vi["dim"])
        points = None if data is None else run_data(None, data, data_args).test
        return explore(flow, points, out, history=history, target=target, compress=compress)
    ds = run_data(record, data, data_args)
    if ds.context is not None:
        raise ValueError("the explorer draws unconditional flows; this run has context columns")
    return explore(flow, ds.test, out, history=history, levels=ds.levels if ds.kind == "image" else None,
                   compress=compress)


def serve(path: Path, port: int) -> None:
    """Serve ``path``'s folder on 127.0.0.1 until Ctrl-C."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving http://127.0.0.1:{server.server_address[1]}/{path.name} (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(args: argparse.Namespace) -> int:
    path = write(args.model, args.output, args.data, args.data_args, args.compress)
    print(path)
    if args.serve:
        serve(path.resolve(), args.port)
    return 0
