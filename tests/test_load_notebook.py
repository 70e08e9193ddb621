"""notebooks/load_experiment.ipynb runs headless, draws its figures and leaves nothing.

Through ``scripts/demo.sh NOTEBOOK``, the README's command: a real service, Locust at three
concurrency steps as tracked processes, pandas and matplotlib in a fresh kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(240)


@pytest.mark.notebook
@pytest.mark.slow
def test_load_experiment_notebook_runs_clean(tmp_path: Path) -> None:
    output = tmp_path / "load.executed.ipynb"
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), "notebooks/load_experiment.ipynb",
         "--output", str(output)],
        capture_output=True, text=True, timeout=230, cwd=REPO,
        # 2 s steps, not 5: this checks that the notebook works, not what it measures
        env={**os.environ, "LOAD_STEP_SECONDS": "2", "TMPDIR": str(tmp_path)},
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    for users in (2, 8, 32):
        assert f"load-{users}: exited 0 (return code 0)" in out
    assert "requests/s" in out and "requests failed" in out  # the computed conclusion
    assert "no tracked process is left" in out

    nb = json.loads(output.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # a figure was drawn
