"""notebooks/demo.ipynb runs headless from start to end and leaves nothing behind.

It runs through ``scripts/run_demo.py``, the command the README gives, in a subprocess:
that script executes the notebook with nbclient in a fresh kernel, prints the cells'
output, writes the executed notebook, and fails on a cell error or a leftover process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


@pytest.mark.notebook
def test_demo_notebook_runs_clean(tmp_path: Path) -> None:
    output = tmp_path / "demo.executed.ipynb"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_demo.py"), "--output", str(output)],
        capture_output=True, text=True, timeout=170, cwd=tmp_path,
        env=dict(os.environ, TMPDIR=str(tmp_path)),  # its logs go to the test's directory
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    assert "GET / -> 200" in out  # the notebook talked to its server
    assert "GET /no-such-page -> 404" in out
    assert "web: 1 process(es), all gone" in out  # %proctrack_cleanup
    assert "the server is gone" in out
    assert f"executed notebook written to {output}" in out
    assert "no tracked process is left" in out

    nb = json.loads(output.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    widget_outputs = [o for o in outputs
                      if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widget_outputs) == 1  # the web server's live widget...
    assert "ready in" in _text(widget_outputs[0]["data"]["text/plain"])  # ...and a text form
    table = next(o for o in outputs if "<table" in _text(o.get("data", {}).get("text/html", "")))
    assert "web" in _text(table["data"]["text/plain"])
    assert "application/vnd.jupyter.widget-state+json" in nb["metadata"].get("widgets", {})


def _text(value: str | list[str]) -> str:
    """nbformat stores multi-line strings as lists of lines."""
    return value if isinstance(value, str) else "".join(value)
