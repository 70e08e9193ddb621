"""The pytest plugin (``ipyproctrack.pytest_plugin``), run for real in inner pytest processes.

Each test writes an inner test suite with ``pytester`` and runs it in a subprocess (the
plugin loads through its ``pytest11`` entry point), then checks from outside what the
inner run left: pids are recorded by the inner tests as (pid, create_time) identities.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _procs import is_alive, kill_by_identity, wait_dead

Identity = tuple[int, float]

# Shared by the inner suites: identities of live processes, written for the outer test.
INNER_HELPERS = """
import json, os, subprocess, sys, time
from pathlib import Path

import psutil
import pytest
from ipyproctrack import OutputReady

def ident(pid):
    return [pid, psutil.Process(pid).create_time()]

def alive(pid, ctime):
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - ctime) < 0.005 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

def record(name, idents):
    # whole or not at all: the outer test reads the file as soon as it exists
    Path(name + ".tmp").write_text(json.dumps(idents))
    os.replace(name + ".tmp", name)

def wait_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not Path(path).exists() or not Path(path).read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return Path(path).read_text().strip()

SERVER = "sleep 1000 & echo ready; wait"  # a root and a grandchild-to-be
"""


def _run(pytester: pytest.Pytester, *args: str, timeout: float = 90) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)


def _identities(path: Path) -> list[Identity]:
    return [(int(pid), float(ct)) for pid, ct in json.loads(path.read_text())]


def test_a_passing_tests_server_and_its_child_are_gone_when_the_test_ends(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(helpers=INNER_HELPERS, test_inner="""
from helpers import *

def test_starts_a_server(proctrack):
    proc = proctrack.start(SERVER, name="srv", ready=OutputReady("ready"))
    members = [[m.pid, m.create_time] for m in proc.tree()]
    assert len(members) == 2
    record("tree.json", members)

def test_next():  # runs once the previous test has ended
    members = json.loads(Path("tree.json").read_text())
    assert [m for m in members if alive(*m)] == []
""")
    result = _run(pytester)
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    assert wait_dead(_identities(pytester.path / "tree.json"), 1.0) == []


def test_a_failing_tests_report_has_its_servers_output_state_and_escalation(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(helpers=INNER_HELPERS, test_inner="""
from helpers import *

STUBBORN = ("trap '' TERM; for i in 1 2 3 4; do echo out-$i; done; echo ready; "
            "while true; do sleep 0.2; done")

@pytest.fixture(scope="session")
def shared(proctrack_session):
    return proctrack_session.start("echo shared-says-hello; sleep 1000", name="shared",
                                   ready=OutputReady("hello"))

def test_fails(proctrack, shared):
    proctrack.start(STUBBORN, name="web", ready=OutputReady("ready"))
    assert 1 + 1 == 3
""")
    result = _run(pytester, "--proctrack-tail", "3", "--proctrack-grace", "0.3")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*- proctrack web -*",
        "name: *web",
        "pid: *",
        "state: *running · ready in*",
        "return code: - (still running)",
        "*last 3 lines of output*",
        "out-3",
        "out-4",
        "ready",
        "*- proctrack shared -*",
        "*shared-says-hello*",
        "*- proctrack teardown -*",
        "web: pid *, stopped",
        "*web: pid * ignored SIGTERM for * s; sent SIGKILL*",
    ])
    assert "\nout-2\n" not in out  # only the last 3 lines


def test_a_servers_env_i_daemon_is_gone_after_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(helpers=INNER_HELPERS, test_inner="""
from helpers import *

DAEMON = ("( env -i setsid sh -c 'echo $$ > {0}; exec sleep 1000' & ); "
          "echo ready; sleep 1000")

def start_daemon_server(tracker, name):
    tracker.start(DAEMON.format(name + ".pid"), name=name, ready=OutputReady("ready"))
    pid = int(wait_file(name + ".pid"))
    assert psutil.Process(pid).ppid() != os.getpid()  # it left the tree
    record(name + ".json", [ident(pid)])

def test_function_scoped(proctrack):
    start_daemon_server(proctrack, "fn")

def test_session_scoped(proctrack_session):
    start_daemon_server(proctrack_session, "sess")
""")
    result = _run(pytester)
    daemons = [i for n in ("fn", "sess") for i in _identities(pytester.path / f"{n}.json")]
    try:
        result.assert_outcomes(passed=2)
        assert result.ret == 0
        assert wait_dead(daemons, 1.0) == []
    finally:
        kill_by_identity(daemons)


LEAKY = INNER_HELPERS + """
def test_leaks():  # bypasses the fixtures; inherits the run's session tag
    p = subprocess.Popen(["sleep", "1000"])
    record("leak.json", [ident(p.pid)])

def test_passes():
    pass
"""


@pytest.mark.parametrize("mode", ["fail", "warn", "off"])
def test_a_raw_popen_leak_is_caught_at_the_session_end(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_inner=LEAKY)
    result = _run(pytester, f"--proctrack-leaks={mode}")
    leak = _identities(pytester.path / "leak.json")
    try:
        result.assert_outcomes(passed=2)
        if mode == "off":
            assert result.ret == 0
            assert "left alive" not in result.stdout.str()
            assert is_alive(*leak[0])
            return
        assert result.ret == (1 if mode == "fail" else 0)
        verdict = "failed the run" if mode == "fail" else "warning"
        result.stdout.fnmatch_lines([
            f"*proctrack: 1 process(es) of this run left alive ({verdict})*",
            f"*pid {leak[0][0]}: sleep 1000",
        ])
        assert wait_dead(leak, 1.0) == []  # the guard stopped it
    finally:
        kill_by_identity(leak)


XDIST = INNER_HELPERS + """
@pytest.fixture(scope="session")
def shared(proctrack_session):
    return proctrack_session.start(SERVER, name="shared", ready=OutputReady("ready"))

@pytest.mark.parametrize("i", range(6))
def test_each(i, proctrack, shared):
    own = proctrack.start(SERVER, name="own", ready=OutputReady("ready"))
    time.sleep(0.1)  # let the tests of both workers overlap
    assert shared.is_running() and shared.has_live_tree()
    record(f"rec-{i}.json", {
        "worker": os.environ["PYTEST_XDIST_WORKER"],
        "run_tag": os.environ["IPYPROCTRACK_SESSION"],
        "shared": [[m.pid, m.create_time] for m in shared.tree()],
        "own": [[m.pid, m.create_time] for m in own.tree()],
    })
"""


def test_two_xdist_workers_track_their_own_sessions_and_run_clean(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_inner=XDIST)
    result = _run(pytester, "-n", "2")
    result.assert_outcomes(passed=6)
    assert result.ret == 0
    assert "left alive" not in result.stdout.str()
    recs = [json.loads((pytester.path / f"rec-{i}.json").read_text()) for i in range(6)]
    by_worker: dict[str, set[str]] = {}
    for rec in recs:
        by_worker.setdefault(rec["worker"], set()).add(json.dumps(rec["shared"]))
    assert len(by_worker) == 2, by_worker
    # One session server per worker, and each worker's tests saw only its own.
    assert all(len(servers) == 1 for servers in by_worker.values())
    assert len({rec["run_tag"] for rec in recs}) == 2
    everything = [(p, c) for rec in recs for key in ("shared", "own") for p, c in rec[key]]
    assert wait_dead(everything, 1.0) == []


def test_a_leak_in_an_xdist_worker_fails_the_whole_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=LEAKY)
    result = _run(pytester, "-n", "2")
    leak = _identities(pytester.path / "leak.json")
    try:
        result.assert_outcomes(passed=2)
        assert result.ret == 1
        result.stdout.fnmatch_lines([
            "*proctrack: 1 process(es) of this run left alive (failed the run)*",
            f"*[[]gw?[]] pid {leak[0][0]}: sleep 1000",
        ])
        assert wait_dead(leak, 1.0) == []
    finally:
        kill_by_identity(leak)


def _sigkill_an_inner_pytest(pytester: pytest.Pytester) -> tuple[list[int], float]:
    """SIGKILL a pytest whose test holds a nasty tree: (the members alive 20 s later,
    seconds until the last one died)."""
    pytester.makepyfile(helpers=INNER_HELPERS, test_inner="""
from helpers import *

NASTY = ("sleep 1000 & (trap '' TERM; exec sleep 1000) & "
         "( env -i setsid sleep 1000 & ); echo ready; wait")

def test_waits_to_be_killed(proctrack):
    proc = proctrack.start(NASTY, name="nasty", ready=OutputReady("ready"))
    deadline = time.monotonic() + 5
    while len(proc.tree()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    record("tree.json", [[m.pid, m.create_time] for m in proc.tree()])
    time.sleep(120)  # until the outer test SIGKILLs this pytest
""")
    inner = pytester.popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--proctrack-grace", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    tree_file = pytester.path / "tree.json"
    members: list[Identity] = []
    try:
        deadline = time.monotonic() + 60
        while not tree_file.exists() and inner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        members = _identities(tree_file)
        assert len(members) >= 3  # the root, the sleeper, the SIGTERM ignorer
        inner.send_signal(signal.SIGKILL)
        inner.wait(10)
        t0 = time.monotonic()
        left = wait_dead(members, 20.0)
        return left, time.monotonic() - t0
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait(10)
        kill_by_identity(members)


def test_sigkilling_pytest_leaves_nothing(pytester: pytest.Pytester) -> None:
    left, _ = _sigkill_an_inner_pytest(pytester)
    assert left == []


@pytest.mark.perf
def test_sigkilling_pytest_leaves_nothing_within_3_s(pytester: pytest.Pytester) -> None:
    # 1 s of grace for the SIGTERM ignorer, then SIGKILL; on a loaded machine (two test
    # runs at once) it once took longer, hence a timing test apart from the one above.
    left, took = _sigkill_an_inner_pytest(pytester)
    assert left == [] and took < 3.0, (left, took)


def test_no_ipyproctrack_turns_the_plugin_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="""
def test_uses_it(proctrack):
    pass
""")
    result = _run(pytester, "-p", "no:ipyproctrack")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'proctrack' not found*"])
