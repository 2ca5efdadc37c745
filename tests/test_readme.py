"""Every ```python block of the README runs as written, each in a fresh interpreter in an empty folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{run.stderr[-3000:]}"


def test_the_api_reference_lists_every_public_module():
    """docs/api.md renders each public module from its ``__all__``; a new module must be listed there."""
    import importlib
    import pkgutil

    import exactflow

    listed = set(re.findall(r"^::: (\S+)", (README.parent / "docs" / "api.md").read_text(), re.M))
    public = {m.name for m in pkgutil.walk_packages(exactflow.__path__, "exactflow.")
              if not m.name.startswith("exactflow.commands") and m.name not in ("exactflow.__main__", "exactflow.cli")
              and hasattr(importlib.import_module(m.name), "__all__")}
    assert public - {"exactflow.flows", "exactflow.transforms"} <= listed, sorted(public - listed)
