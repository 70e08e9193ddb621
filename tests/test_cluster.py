"""Tracked processes on real ipyparallel engines (``ipyparallel.Cluster(n=2)`` on 127.0.0.1).

What ``%%px`` sends is ``view.execute(cell)``: the tests send the same cells. The engines
and the controller are this test process's children (started by ``Cluster``); the only
process a test kills itself is one of those engines, by pid, after checking its parent.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _procs import kill_by_identity, wait_dead, wait_record
from traitlets.config import Config

ipp = pytest.importorskip("ipyparallel")

from ipyproctrack import cluster  # noqa: E402

# A tree with a child, two grandchildren and a setsid escapee (5 processes).
TREE = """\
bash -c 'sleep 300 & sleep 300' &
setsid sleep 300 &
exec sleep 300
"""
TREE_SIZE = 5
START_TIMEOUT = 90.0


# The hub registers an engine at its first heartbeat, every 3 s by default: a cluster took
# 6.8 s to start, and 2.3-2.8 s with beats every 0.5 s. An engine is still dropped only after
# 10 missed beats, and its heart is a zmq device thread that needs no GIL.
QUICK_HEARTS = "--HeartMonitor.period=500"


class RunningCluster:
    """A local cluster of ``n`` engines and its client; ``stop()`` is idempotent."""

    def __init__(self, profile_dir: Path, n: int = 2) -> None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        # The engines' temporary files (our default log directories among them) go to the
        # test's own directory, not to /tmp.
        tmp = profile_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        config = Config()
        config.BaseLauncher.environment = {"TMPDIR": str(tmp)}
        before = _descendants()
        self.cluster: Any = ipp.Cluster(
            n=n, controller_ip="127.0.0.1", profile_dir=str(profile_dir),
            log_level=logging.WARNING, engine_timeout=START_TIMEOUT, config=config,
            controller_args=[QUICK_HEARTS],
        )
        self.stopped = False
        try:
            self.rc: Any = self.cluster.start_and_connect_sync()
            self.rc.wait_for_engines(n, timeout=START_TIMEOUT)
        finally:
            # controller, schedulers, engines and their nannies: nothing is tracked yet
            self.own = _descendants() - before
            self.hub = _descendants(self.cluster.controller.pid) & self.own
        self.view: Any = self.rc[:]

    def stop(self) -> None:
        """Stop the engines, then the controller (again: a no-op), and wait for every
        process they started; SIGKILL stragglers. In that order, because each engine's nanny
        tells the hub that its engine ended: with the hub gone, the message lingers 3 s."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.rc.close()
        finally:
            self.cluster.stop_engines_sync()
            wait_dead(self.own - self.hub, 10.0)
            self.cluster.stop_controller_sync()
            if wait_dead(self.own, 15.0):
                kill_by_identity(self.own)
                wait_dead(self.own, 2.0)


def _descendants(pid: int | None = None) -> set[tuple[int, float]]:
    """(pid, create time) of this process's descendants, or of ``pid`` and its own."""
    out: set[tuple[int, float]] = set()
    try:
        top = psutil.Process(pid)
        found = [top, *top.children(recursive=True)] if pid is not None else top.children(
            recursive=True)
    except psutil.Error:
        return out
    for child in found:
        try:
            out.add((child.pid, child.create_time()))
        except psutil.Error:
            continue
    return out


def _remote(fn: Any) -> Any:
    """Ship ``fn`` to the engines by value: this test module is not importable there."""
    fn.__module__ = "__main__"
    return fn


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    running = RunningCluster(tmp_path_factory.mktemp("ipp-profile"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def running(shared_cluster: RunningCluster) -> Iterator[RunningCluster]:
    """The module's cluster with the extension loaded; every engine cleaned up after."""
    assert not shared_cluster.stopped, "the stop_cluster test must stay the last one"
    shared_cluster.view.execute("%load_ext ipyproctrack", block=True)
    yield shared_cluster
    if not shared_cluster.stopped:
        cluster.cleanup(shared_cluster.view, grace=0.5)


def start_trees(view: Any, name: str) -> dict[int, str]:
    """``%%px`` + ``%%tracked NAME`` on every engine; engine id -> what it printed."""
    result = view.execute(f"%%tracked {name} --grace 0.5\n{TREE}", block=True)
    return dict(zip(result.engine_id, map(str, result.stdout), strict=True))


def results_text(view: Any, line: str) -> dict[int, str]:
    """``%px LINE``: engine id -> the text form of the magic's result."""
    result = view.execute(line, silent=False, block=True)
    return {engine: out["data"]["text/plain"]
            for engine, out in zip(result.engine_id, result.execute_result, strict=True)}


def wait_full_trees(view: Any, count: int) -> cluster.ClusterTable:
    """The table once ``count`` trees of TREE_SIZE processes are all up (15 s at most)."""
    import time

    deadline = time.monotonic() + 15
    while True:
        table = cluster.table(view, prime=0.0)
        full = [r for r in table.rows if r.procs >= TREE_SIZE]
        if len(full) >= count or time.monotonic() > deadline:
            assert len(full) >= count, repr(table)
            return table
        time.sleep(0.1)


def test_magics_run_on_both_engines(running: RunningCluster) -> None:
    outputs = start_trees(running.view, "tree")
    assert sorted(outputs) == sorted(running.rc.ids) and len(outputs) == 2
    for engine, text in outputs.items():
        assert re.search(rf"^\[engine {engine}\] tree: pid \d+ running; log ", text, re.M), text
    # no widget on an engine: the session decided "text" there
    assert running.view.apply_sync(_widgets_enabled) == [False, False]

    for engine, text in results_text(running.view, "%proctrack").items():
        lines = text.splitlines()
        assert lines and all(line.startswith(f"[engine {engine}] ") for line in lines), text
        assert re.search(r"^\[engine \d+\] name\s+pid\s+state", text), text
        assert re.search(r"\btree\s+\d+\s+running\b", text), text
    wait_full_trees(running.view, 2)
    for engine, text in results_text(running.view, "%proctrack_cleanup").items():
        assert f"[engine {engine}] tree: {TREE_SIZE} process(es), all gone" in text, text


@_remote
def _widgets_enabled() -> bool:
    from ipyproctrack._notebook import current_session

    return current_session().widgets_enabled


def test_the_table_lists_both_engines_and_cleanup_ends_them_all(running: RunningCluster) -> None:
    start_trees(running.view, "web")
    table = wait_full_trees(running.view, 2)
    web = [r for r in table.rows if r.name == "web"]  # earlier tests' rows read "stopped"
    assert {r.engine for r in web} == set(running.rc.ids) and len(web) == 2
    assert not table.errors
    host = os.uname().nodename
    for row in web:
        assert (row.host, row.name, row.state.describe()) == (host, "web", "running")
        assert row.procs == TREE_SIZE and row.rss.endswith("iB")
        assert row.pid in {pid for pid, _ in row.members}
    text, page = repr(table), table._repr_html_()
    for row in web:
        assert re.search(rf"^{row.engine}\s+{re.escape(host)}\s+web\s+{row.pid}\s+running",
                         text, re.M), text
        assert f"<td style=\"padding:2px 8px;text-align:left;border-bottom:1px solid #ddd\">" \
               f"{row.pid}</td>" in page
    members = [(pid, ct) for _, pid, ct in table.members()]
    assert len(members) == 2 * TREE_SIZE  # only live trees have members

    report = cluster.cleanup(running.view, grace=0.5)
    assert report.ok, repr(report)
    assert sorted(e.engine for e in report.engines) == sorted(running.rc.ids)
    for engine in running.rc.ids:
        assert f"[engine {engine} @{host}] web: {TREE_SIZE} process(es), all gone" in repr(report)
    assert wait_dead(members, 3.0) == []
    after = cluster.table(running.view)
    assert [r.state.describe() for r in after.rows if r.name == "web"] == ["stopped"] * 2


def test_cleanup_keeps_the_escalations(running: RunningCluster) -> None:
    # --wait-output: the SIGTERM must find the trap set (a bash still starting dies of it)
    running.view.execute("%%tracked stubborn --wait-output up --timeout 30\n"
                         "trap '' TERM\nsleep 300 & echo up; wait", block=True)
    report = cluster.cleanup(running.view, "stubborn", grace=0.3)
    assert report.ok, repr(report)
    for engine in running.rc.ids:
        assert any(m.startswith(f"[engine {engine} @") and "ignored SIGTERM" in m
                   for m in report.messages()), repr(report)
    assert "ignored SIGTERM" in report._repr_html_()


def test_an_engine_that_does_not_answer_is_reported_not_raised(
    running: RunningCluster, tmp_path: Path
) -> None:
    # engine 0 is busy until the test lets it go: its row says so, engine 1 still answers
    release = tmp_path / "release"
    busy = running.rc[0].apply_async(_wait_for, str(release), 60.0)
    try:
        running.rc[1].execute("%tracked -n late sleep 300", block=True)
        table = cluster.table(running.view, prime=0.0, timeout=0.5)
        assert list(table.errors) == [0] and "Timeout" in table.errors[0]
        assert {r.engine for r in table.rows} == {1}
        assert "engine 0: no answer" in repr(table)
    finally:
        release.touch()
        assert busy.get(30) is True


@_remote
def _wait_for(path: str, timeout: float) -> bool:
    """Block until ``path`` exists (True) or ``timeout`` passes (False)."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@_remote
def _kernel_end_record() -> str:
    import ipyproctrack

    return str(ipyproctrack.notebook_tracker().kernel_end_record)


def records(view: Any) -> dict[int, Path]:
    """Engine id -> the kernel-end record its teardown will write (the post-mortem)."""
    result = view.apply_async(_kernel_end_record)
    paths = result.get(30)
    return dict(zip(result.engine_id, map(Path, paths), strict=True))



def _engine_pid(running: RunningCluster, engine: int) -> int:
    pid: int = running.rc[engine].apply_sync(os.getpid)
    assert psutil.Process(pid).ppid() == os.getpid(), "not an engine this test started"
    return pid


@pytest.mark.slow
def test_a_sigkilled_engine_and_a_shut_down_engine_leave_nothing(tmp_path: Path) -> None:
    running = RunningCluster(tmp_path / "profile")
    try:
        running.view.execute("%load_ext ipyproctrack", block=True)
        start_trees(running.view, "tree")
        table = wait_full_trees(running.view, 2)
        first = [(pid, ct) for e, pid, ct in table.members() if e == 0]
        second = [(pid, ct) for e, pid, ct in table.members() if e == 1]
        assert len(first) == len(second) == TREE_SIZE
        record = records(running.view)

        os.kill(_engine_pid(running, 0), signal.SIGKILL)  # no Python of the engine runs
        assert wait_dead(first, 3.0) == [], "engine 0's trees outlived its SIGKILL by 3 s"
        # the keeper did it (and says so), not the engine
        text = wait_record(record[0])
        assert "kernel gone (" in text, text

        running.rc.shutdown(targets=[1], block=True)  # the kernel's do_shutdown runs
        assert wait_dead(second, 3.0) == [], "engine 1's trees outlived its shutdown"
        text = wait_record(record[1])
        assert text.startswith("kernel end by do_shutdown") and "all gone" in text, text
    finally:
        running.stop()


def test_stop_cluster_leaves_nothing(shared_cluster: RunningCluster) -> None:
    # The last test of the module: it stops the module's cluster.
    view = shared_cluster.view
    view.execute("%load_ext ipyproctrack", block=True)
    start_trees(view, "tree")
    view.execute("%%tracked stubborn\ntrap '' TERM\nsleep 300 & wait", block=True)
    table = wait_full_trees(view, 2)
    members = [(pid, ct) for _, pid, ct in table.members()]
    assert len(members) >= 2 * TREE_SIZE + 2
    record = records(view)
    # Cluster.stop_cluster(): SIGTERM to each engine, SIGKILL after 5 s
    shared_cluster.cluster.stop_cluster_sync()
    assert wait_dead(members, 3.0) == []
    shared_cluster.stop()
    for path in record.values():
        # The engine's SIGTERM handler stops its loop and the process exits normally, so our
        # atexit hook tore everything down itself, in time: nothing had been taken down
        # before it began (the engines' group handling never reached our trees).
        text = wait_record(path)
        assert text.startswith("kernel end by atexit") and "all gone" in text, text
        assert "already gone" not in text and "STILL ALIVE" not in text, text


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_cluster_load_notebook_runs_clean(tmp_path: Path) -> None:
    """notebooks/cluster_load.ipynb, through the demo runner (which fails on a cell error
    or on any process of the run left alive, tracked or not, after the kernel ends)."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "cluster_load.executed.ipynb"
    # the notebook's cluster uses the default profile: give it one with quick heartbeats
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipcontroller_config.py").write_text(
        f"c.HeartMonitor.period = {QUICK_HEARTS.rsplit('=', 1)[1]}\n")
    run = subprocess.run(
        [sys.executable, str(repo / "scripts" / "run_demo.py"), "--notebook",
         str(repo / "notebooks" / "cluster_load.ipynb"), "--output", str(output)],
        capture_output=True, text=True, timeout=170, cwd=tmp_path,
        env=dict(os.environ, TMPDIR=str(tmp_path), IPYTHONDIR=str(profile.parent)),
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    # the service and the Locust master in the client kernel, each on a port of --port auto
    assert re.search(r"service: pid \d+ running · ready in", out), out
    assert re.search(r"master: pid \d+ running · ready in", out), out
    assert re.search(r"the master listens on port \d+", out), out
    for engine in (0, 1):  # one Locust worker per engine, in the merged table while it runs
        assert re.search(rf"\[engine {engine}\] worker: pid \d+ running · ready in", out), out
        assert re.search(rf"^\s+{engine}\s+\S+\s+worker\s+\d+\s+running", out, re.M), out
        assert re.search(rf"^\s+{engine}\s+\S+\s+worker\s+\d+\s+exited 0", out, re.M), out
    assert "master exit code: 0" in out and "2 workers connected" in out
    # the master's _stats.csv, read with pandas: both workers' requests, none failed
    assert re.search(r"2 workers: [1-9]\d* requests, 0 failures", out), out
    assert "engines and their 2 tracked processes: 0 left" in out
    assert "the service is gone" in out and "no tracked process is left" in out
    nb = json.loads(output.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]
              if o["output_type"] == "error"]
    assert not errors
