"""notebooks/teaching.ipynb, the lesson, runs headless from start to end and leaves
nothing behind (through ``scripts/run_demo.py``, as ``./scripts/demo.sh NOTEBOOK`` does)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="the lesson reads /proc and uses --max-memory")]


@pytest.mark.notebook
def test_the_lesson_runs_clean(tmp_path: Path) -> None:
    output = tmp_path / "teaching.executed.ipynb"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_demo.py"),
         str(REPO / "notebooks" / "teaching.ipynb"), "--output", str(output)],
        capture_output=True, text=True, timeout=230, cwd=tmp_path,
        env=dict(os.environ, TMPDIR=str(tmp_path)),  # its logs go to the test's directory
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    assert "its parent is pid" in out and "both stopped: True" in out  # the problem, undone
    # --port auto: the server's port is read back from the tracked process
    assert re.search(r"web: running · ready in .*\| port \d+ \| answers: True", out), out
    assert "replaced: True" in out  # a re-run replaces, on a free port again
    assert re.search(r"one server, on port \d+ and it answers: True", out), out
    assert "different sessions and groups: True" in out  # why an interrupt spares it
    assert "stopped: memory limit (" in out  # the runaway, stopped with its reason
    assert "memory: tree RSS" in out and "> limit 100 MiB" in out
    assert "web: 1 process(es), all gone" in out  # %proctrack_cleanup
    assert "the tracked server is gone: True" in out
    assert "no tracked process is left" in out

    nb = json.loads(output.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    tables = ["".join(o["data"]["text/html"]) for o in outputs
              if "<table" in "".join(o.get("data", {}).get("text/html", ""))]
    assert len(tables) == 2 and "memory limit" in tables[1]
    assert '<a href="http://127.0.0.1:' in tables[0]  # the port is a link
