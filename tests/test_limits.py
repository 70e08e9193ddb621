"""Per-tree limits held by the keeper: max_memory (the tree's RSS) and max_runtime."""

from __future__ import annotations

import re
import sys
import time

import pytest
from _kernels import Kernel

from ipyproctrack import TrackedProcess, Tracker
from ipyproctrack._engine.limits import parse_runtime, parse_size
from ipyproctrack._engine.state import Phase, ProcessState
from ipyproctrack._keeper.limits import describe
from ipyproctrack.errors import LaunchError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="max_memory reads /proc")

# A child of the root keeps allocating 10 MiB every 50 ms: the limit must count the tree.
HOG = (
    f"{sys.executable} -c '"
    "import time\n"
    "keep = []\n"
    "while True:\n"
    "    keep.append(bytearray(10 * 2**20)); time.sleep(0.05)\n"
    "' & wait"
)


def _tree_gone(proc: TrackedProcess, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while proc.tree() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.tree() == []


def test_sizes_and_runtimes_parse() -> None:
    assert parse_size("512M") == 512 * 2**20
    assert parse_size("1G") == parse_size("1GiB") == 2**30
    assert parse_size("100mb") == 100 * 2**20
    assert parse_size(4096) == 4096
    assert parse_size(None) == 0
    assert parse_runtime(None) == 0.0 and parse_runtime(5) == 5.0
    for bad in ("lots", "-1M", 0, True, "1X"):
        with pytest.raises(LaunchError, match="max_memory"):
            parse_size(bad)
    for bad_s in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(LaunchError, match="max_runtime"):
            parse_runtime(bad_s)


def test_a_limit_reads_the_same_everywhere() -> None:
    full, short = describe("memory", 301 * 2**20, 100 * 2**20)
    assert full == "memory: tree RSS 301 MiB > limit 100 MiB"
    assert short == "memory limit (301 MiB > 100 MiB)"
    assert describe("runtime", 10.04, 5.0)[0] == "runtime: 10.0 s > limit 5 s"
    state = ProcessState(Phase.STOPPED, -15, None, short)
    assert state.describe() == "stopped: memory limit (301 MiB > 100 MiB)"
    assert not state.ok and ProcessState(Phase.STOPPED).ok


def test_a_tree_that_keeps_allocating_is_stopped_at_its_memory_limit(tracker: Tracker) -> None:
    proc = tracker.start(HOG, name="hog", max_memory="100M")
    # Functional deadline: unchecked, the hog would pass 1 GiB in about 5 s.
    assert proc.wait(timeout=15) is not None, "the hog is still running"
    assert _tree_gone(proc)
    assert proc.limit_exceeded is not None and proc.limit_exceeded.startswith("memory: ")
    assert "> limit 100 MiB" in proc.limit_exceeded
    assert proc.state.phase is Phase.STOPPED
    assert proc.state.describe().startswith("stopped: memory limit (")
    assert not proc.state.ok


def test_a_tree_past_its_runtime_is_stopped(tracker: Tracker) -> None:
    proc = tracker.start("sleep 1000 & sleep 1000 & wait", name="slow", max_runtime=1.0)
    assert proc.wait(timeout=15) is not None
    assert _tree_gone(proc)
    assert proc.limit_exceeded is not None and proc.limit_exceeded.startswith("runtime: ")
    assert proc.limit_exceeded.endswith("> limit 1 s")
    assert proc.state.describe().startswith("stopped: runtime limit (")


def test_a_tree_within_its_limits_runs_on(tracker: Tracker) -> None:
    proc = tracker.start("sleep 1000", name="calm", max_memory="1G", max_runtime=600)
    assert proc.wait(timeout=1.5) is None  # three samples at least
    assert proc.limit_exceeded is None and proc.state.phase is Phase.RUNNING
    proc.stop()
    assert proc.state.describe() == "stopped"


def test_a_bad_limit_fails_before_anything_runs(tracker: Tracker) -> None:
    with pytest.raises(LaunchError, match="max_memory"):
        tracker.start("sleep 1000", name="x", max_memory="plenty")
    assert tracker.processes() == []


# ----------------------------------------------------------------------------- magics


def test_max_memory_in_a_cell_stops_the_tree_and_the_table_says_why(shared: Kernel) -> None:
    shared.ok(f"%%tracked hog --max-memory 100M --no-widget\n{HOG}\n")
    deadline = time.monotonic() + 20
    table = ""
    while time.monotonic() < deadline and "memory limit" not in table:
        table = shared.ok("%proctrack").text()
        time.sleep(0.2)
    row = next(line for line in table.splitlines() if line.startswith("hog"))
    assert re.search(r"stopped: memory limit \(\d+ MiB > 100 MiB\)", row), table
    why = shared.value("__import__('ipyproctrack').tracked('hog').limit_exceeded")
    assert re.fullmatch(r"memory: tree RSS \d+ MiB > limit 100 MiB", why), why


def test_a_bad_limit_option_is_one_line(shared: Kernel) -> None:
    out = shared.run("%%tracked x --max-memory plenty\nsleep 1000\n").stderr
    assert "UsageError: --max-memory: bad max_memory 'plenty'" in out, out
    out = shared.run("%%tracked x --max-runtime -1\nsleep 1000\n").stderr
    assert "UsageError: --max-runtime: max_runtime must be" in out, out
    names = shared.value("[p.name for p in __import__('ipyproctrack').notebook_tracker()]")
    assert "x" not in names
