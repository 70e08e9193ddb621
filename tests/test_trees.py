"""Self-tests of the test fixtures: the nasty tree really is nasty, and the leak check bites.

No ipyproctrack code runs here: the tree is started with plain ``subprocess.Popen`` and
killed by identity, so these tests prove the tools that the engine's tests rely on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from _procs import is_alive, kill_by_identity, tagged_processes, wait_dead
from _trees import NASTY_COUNT_ENV_I, read_nasty_pids, start_nasty, wait_nasty_ready

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the trees are bash scripts")

HERE = Path(__file__).resolve().parent
LONE_ROLES = {
    "root",
    "server",
    "grandchild",
    "ignorer",
    "daemon",
    "daemon-env-i",
    "fanout",
    "zombie-parent",
    "zombie",
    "writer",
}


def _tag_env() -> dict[str, str]:
    env = dict(os.environ)
    env["IPYPROCTRACK_SESSION"] = f"selftest-{uuid.uuid4().hex}"
    env["IPYPROCTRACK_PROCESS"] = f"selftest-{uuid.uuid4().hex}"
    return env


def _environ(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def test_nasty_tree_has_every_member_and_dies_by_identity(tmp_path: Path) -> None:
    command, pidfile = start_nasty(tmp_path, env_i=True)
    out_path = tmp_path / "stdout.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            env=_tag_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    members: list[tuple[str, int, float]] = []
    try:
        wait_nasty_ready(pidfile)
        members = read_nasty_pids(pidfile)
        by_role = {role: (pid, ctime) for role, pid, ctime in members}

        # One line per process, every role present, all alive but the zombie.
        assert len(members) == NASTY_COUNT_ENV_I == len(by_role)
        expected = (
            LONE_ROLES | {f"chain-{i}" for i in range(1, 16)} | {f"fan-{i}" for i in range(1, 41)}
        )
        assert set(by_role) == expected
        assert by_role["root"][0] == proc.pid
        for role, pid, ctime in members:
            if role != "zombie":
                assert is_alive(pid, ctime), role

        # Shape: the chain is 15 deep, the fan-out hangs off one parent, the grandchild
        # off the server, and the zombie is a zombie.
        for depth in range(2, 16):
            ppid = psutil.Process(by_role[f"chain-{depth}"][0]).ppid()
            assert ppid == by_role[f"chain-{depth - 1}"][0]
        assert psutil.Process(by_role["chain-1"][0]).ppid() == proc.pid
        for i in range(1, 41):
            assert psutil.Process(by_role[f"fan-{i}"][0]).ppid() == by_role["fanout"][0]
        assert psutil.Process(by_role["grandchild"][0]).ppid() == by_role["server"][0]
        if "zombie" in by_role:
            assert psutil.Process(by_role["zombie"][0]).status() == psutil.STATUS_ZOMBIE

        # The daemons left the tree and the session; only the env -i one lost the tag.
        descendants = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        for role in ("daemon", "daemon-env-i"):
            pid = by_role[role][0]
            assert pid not in descendants
            assert os.getsid(pid) != proc.pid
        assert "IPYPROCTRACK_SESSION" in _environ(by_role["daemon"][0])
        assert not any(k.startswith("IPYPROCTRACK_") for k in _environ(by_role["daemon-env-i"][0]))

        # The tag scan of the leak check sees every tagged member.
        tagged = tagged_processes()
        for role, pid, _ in members:
            if role not in ("daemon-env-i", "zombie"):
                assert pid in tagged, role
        assert by_role["daemon-env-i"][0] not in tagged

        # The ignorer shrugs off SIGTERM, SIGINT and SIGHUP.
        ignorer = by_role["ignorer"]
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(ignorer[0], sig)
        time.sleep(0.5)
        assert is_alive(*ignorer)

        # The writer writes (about 1 MB/s; ask for far less than that).
        deadline = time.monotonic() + 10
        while out_path.stat().st_size < 256 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out_path.stat().st_size >= 256 * 1024
    finally:
        # Kill by identity: the whole session of our own child, then whatever left it.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_by_identity((pid, ctime) for _, pid, ctime in members)
        proc.wait(timeout=10)
    assert wait_dead([(pid, ctime) for _, pid, ctime in members], 5.0) == []


LEAKY_TESTS = """
import os, subprocess, sys, uuid
from pathlib import Path

import psutil

def _tagged(marked=True):
    env = dict(os.environ)
    env["IPYPROCTRACK_PROCESS"] = "leaky-" + uuid.uuid4().hex
    if not marked:
        del env["IPYPROCTRACK_TEST_RUN"]
    return env

def test_cleans_up():
    p = subprocess.Popen(["sleep", "60"], env=_tagged(), start_new_session=True)
    p.kill()
    p.wait()

def test_child_exits_a_moment_later():
    subprocess.Popen(["sleep", "1"], env=_tagged(), start_new_session=True)

def test_another_runs_process_is_not_ours():
    p = subprocess.Popen(["sleep", "60"], env=_tagged(marked=False), start_new_session=True)
    Path("other.pid").write_text(f"{p.pid} {psutil.Process(p.pid).create_time()!r}")

def test_leaks():
    p = subprocess.Popen(["sleep", "60"], env=_tagged(), start_new_session=True)
    Path("leaked.pid").write_text(str(p.pid))
"""


def test_leak_check_fails_a_leaky_test_and_kills_its_leftover(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(_procs=(HERE / "_procs.py").read_text(), test_leaky=LEAKY_TESTS)
    # The conftest's check alone: the pytest plugin's leak guard would stop "another
    # run's" process at the session's end (it carries this inner run's session tag).
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:ipyproctrack", "-o", "addopts="
    )
    other_text = (pytester.path / "other.pid").read_text().split()
    other = (int(other_text[0]), float(other_text[1]))
    try:
        # The leaky test errors in teardown; the other run's process is left alone.
        result.assert_outcomes(passed=4, errors=1)
        result.stdout.fnmatch_lines(
            ["*test_leaks*", "*left 1 tagged or orphaned process(es) alive*"]
        )
        leaked = int((pytester.path / "leaked.pid").read_text())
        result.stdout.fnmatch_lines([f"*pid {leaked}: sleep 60*"])
        assert f"pid {other[0]}:" not in result.stdout.str()
        assert is_alive(*other)
        assert not psutil.pid_exists(leaked) or (
            psutil.Process(leaked).status() == psutil.STATUS_ZOMBIE
        )
    finally:
        kill_by_identity([other])
    assert wait_dead([other], 5.0) == []
