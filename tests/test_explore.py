"""The explorer page: one self-contained HTML file, and (with Chromium installed) it renders without errors."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import exactflow

pytest.importorskip("plotly")

SIZE_LIMIT = 6_000_000  # plotly.js itself is about 4.8 MB


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    torch.manual_seed(0)
    data = exactflow.data.registry.build("moons").train[:600]
    flow = exactflow.build("RealNVP", features=2, depth=3, hidden=(8,))
    history = exactflow.fit(flow, data, steps=5, batch_size=128, eval_every=5)
    return exactflow.explore(flow, data, tmp_path_factory.mktemp("explore") / "explorer.html", history=history,
                             n=500, resolution=30)


def test_the_page_is_one_self_contained_file_under_the_size_limit(page):
    html = page.read_text()
    assert page.stat().st_size < SIZE_LIMIT
    assert not re.search(r"<script[^>]*src=[\"']?(https?:)?//", html), "the page loads a script from the network"
    assert "plotly.js v" in html and "Plotly.newPlot" in html  # the bundle is inline
    assert '"frames"' in html or "addFrames" in html


def test_tabular_flows_get_pairwise_marginals_and_bad_shapes_a_clear_error(tmp_path):
    flow = exactflow.build("MAF", features=5, depth=1, hidden=(8,))
    page = exactflow.explore(flow, torch.randn(200, 5), tmp_path / "t.html", n=100)
    assert "splom" in page.read_text()
    with pytest.raises(ValueError, match=r"data must have shape \(n, 5\)"):
        exactflow.explore(flow, torch.randn(200, 3), tmp_path / "bad.html")
    with pytest.raises(ValueError, match="got event shape"):
        exactflow.explore(exactflow.build("MAF", features=1, depth=1, hidden=(4,)), torch.randn(10, 1),
                          tmp_path / "one.html")


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def run_chromium(browser, page, user_data, fragment, *flags):
    cmd = [browser, "--headless=new", "--disable-gpu", "--no-sandbox", f"--user-data-dir={user_data}",
           "--virtual-time-budget=4000", "--hide-scrollbars", "--enable-logging=stderr", "--v=0", *flags,
           f"{page.resolve().as_uri()}#layer={fragment}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_page_renders_in_headless_chromium_at_two_layers_without_console_errors(page, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium: apt-get install chromium to run the browser test")
    shots = {}
    for fragment in ("0", "last"):
        shot = tmp_path / f"layer-{fragment}.png"
        run = run_chromium(browser, page, tmp_path / "profile", fragment, f"--screenshot={shot}",
                           "--window-size=1400,900")
        assert shot.is_file() and shot.stat().st_size > 10_000, run.stderr[-2000:]
        assert not re.search(r"Uncaught|ERROR:CONSOLE", run.stderr), run.stderr[-2000:]
        shots[fragment] = shot
    Image = pytest.importorskip("PIL.Image")
    first, last = (torch.from_numpy(np.asarray(Image.open(shots[k]).convert("L"), dtype=np.float32))
                   for k in ("0", "last"))
    assert (first - last).abs().gt(16).float().mean() > 0.005, "the two layers look the same"
    dom = run_chromium(browser, page, tmp_path / "profile", "last", "--dump-dom").stdout
    assert 'data-explorer-frame="3"' in dom, "the page did not reach the last layer (3 layers)"
    assert 'class="main-svg"' in dom or "main-svg" in dom
    errors = re.search(r'<pre id="explorer-errors">(.*?)</pre>', dom, re.S)
    assert errors is None, f"errors on the page: {errors.group(1)}"


def test_the_explore_command_writes_the_page_of_a_run_and_parses_serve(tmp_path, capsys):
    from exactflow.cli import build_parser, main

    small = ["--steps", "5", "--hidden", "8", "--depth", "2", "--batch-size", "64", "--quiet", "--threads", "1"]
    assert main(["demo", *small, "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert f"explorer    {tmp_path / 'demo' / 'explorer.html'}" in out
    assert (tmp_path / "demo" / "explorer.html").is_file()
    assert main(["explore", str(tmp_path / "demo"), "-o", str(tmp_path / "e.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "e.html")
    assert (tmp_path / "e.html").stat().st_size < SIZE_LIMIT
    args = build_parser().parse_args(["explore", "runs/x", "--serve", "--port", "0"])
    assert args.serve and args.port == 0 and args.output is None


def test_image_flows_get_data_beside_samples(tmp_path):
    flow = exactflow.build("RealNVPImage", shape=(1, 4, 4), levels=1, depth=1, hidden=(4,))
    data = torch.randint(0, 4, (20, 1, 4, 4)).float()
    page = exactflow.explore(flow, data, tmp_path / "img.html", images=4, levels=4)
    assert '"type":"image"' in page.read_text().replace(" ", "")


def test_a_flow_that_is_not_a_compose_gets_two_frames_base_and_samples(tmp_path):
    flow = exactflow.build("CNF", features=2, hidden=(4,))
    html = exactflow.explore(flow, torch.randn(100, 2), tmp_path / "cnf.html", n=50, resolution=8).read_text()
    assert '"name":"1"' in html.replace(" ", "") and '"name":"2"' not in html.replace(" ", "")
