"""The command line (``python -m ipyproctrack``): list and clean up other processes'
tracked trees, by our exact tags.

``cleanup --all`` and ``--dead`` cover every session of this user on the machine, so those
tests run inside a fresh PID namespace (``unshare --pid --mount-proc``): there the command
sees only the test's own processes, never another test run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _kernels import free_port
from _procs import create_time, unshare, wait_dead

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ipyproctrack"]

# A Tracker in a process of its own, running a web server until someone ends it: it
# prints its session tag, the server's pid, then the server's return code once it exits.
OWNER = textwrap.dedent(
    """\
    import sys
    from ipyproctrack import Tracker
    from ipyproctrack._engine.ready import PortReady
    port = int(sys.argv[1])
    with Tracker(grace=1.0) as t:
        p = t.start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                    name="web", ready=PortReady(port), ready_timeout=20)
        print(t.session_tag, p.pid, flush=True)
        print("returncode", p.wait(), flush=True)
    """
)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


Owner = tuple[subprocess.Popen[str], str, int, int]  # (child, session tag, server pid, port)


@pytest.fixture(autouse=True)
def _own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owners' sessions, and the CLI that looks for them, use the per-user base under
    TMPDIR: this test's directory, so the test leaves none in /tmp."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


@pytest.fixture
def owner() -> Iterator[Owner]:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", OWNER, str(port)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    assert child.stdout is not None
    tag, pid = child.stdout.readline().split()
    try:
        yield child, tag, int(pid), port
    finally:
        if child.poll() is None:
            child.terminate()  # the Tracker closes at exit: its server goes with it
        child.communicate(timeout=30)


def test_list_shows_another_processs_server_with_its_pid(owner: Owner) -> None:
    child, tag, pid, port = owner
    out = _cli("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(f"session {tag}:"))
    assert f"kernel pid {child.pid} alive" in lines[head]
    row = next(line for line in lines[head + 1:] if line.split()[0] == "web")
    assert row.split()[1] == str(pid) and str(port) in row and "http.server" in row

    data = json.loads(_cli("list", "--json").stdout)
    session = next(s for s in data["sessions"] if s["session"] == tag)
    assert session["kernel_pid"] == child.pid and session["kernel_alive"] is True
    (web,) = session["launches"]
    assert web["name"] == "web" and web["pid"] == pid and web["ports"] == [port]
    assert web["processes"] >= 1 and web["rss"] > 0 and web["uptime"] >= 0


def test_cleanup_of_one_session_ends_it_and_its_tracker_sees_the_exit(owner: Owner) -> None:
    child, tag, pid, _ = owner
    ctime = create_time(pid)
    assert ctime is not None
    out = _cli("cleanup", tag, "--grace", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"cleaning up 1 session(s): {tag}" in out.stdout
    assert "web" in out.stdout
    assert child.stdout is not None
    assert child.stdout.readline().split() == ["returncode", "-15"]  # SIGTERM, seen by it
    assert wait_dead([(pid, ctime)], 5.0) == []


def test_cleanup_needs_a_choice_and_knows_the_sessions() -> None:
    out = _cli("cleanup")
    assert out.returncode == 2 and "say which" in out.stderr
    out = _cli("cleanup", "999999999-nosuch")
    assert out.returncode == 2 and "no tracked session '999999999-nosuch'" in out.stderr


# ----------------------------------------------------------------------------- --all, --dead

# Runs as pid 1 of a new PID namespace: one live session (OWNER) and one whose kernel is
# gone (a process tagged with a dead kernel's session, as a leftover of a SIGKILLed kernel
# without a keeper would be). Prints what it saw as JSON.
NAMESPACE = textwrap.dedent(
    """\
    import json, os, subprocess, sys, time
    CLI = [sys.executable, "-m", "ipyproctrack"]
    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
        except OSError:
            return False
    owner = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                             stdout=subprocess.PIPE, text=True)
    tag, server = owner.stdout.readline().split()
    dead_env = dict(os.environ, IPYPROCTRACK_SESSION="4000000-dead",
                    IPYPROCTRACK_PROCESS="4000000-dead.1")
    leftover = subprocess.Popen(["sleep", "1000"], env=dead_env)
    listing = json.loads(subprocess.run(CLI + ["list", "--json"], capture_output=True,
                                        text=True).stdout)
    dead = subprocess.run(CLI + ["cleanup", "--dead", "--grace", "1"], capture_output=True,
                          text=True)
    leftover.wait(timeout=10)
    after_dead = {"server": alive(int(server)), "leftover_rc": leftover.returncode}
    every = subprocess.run(CLI + ["cleanup", "--all", "--grace", "1"], capture_output=True,
                           text=True)
    line = owner.stdout.readline().split()
    owner.wait(timeout=30)
    print(json.dumps({"tag": tag, "listing": listing, "dead": dead.stdout + dead.stderr,
                      "after_dead": after_dead, "all": every.stdout + every.stderr,
                      "owner_saw": line, "server_after_all": alive(int(server))}))
    """
)


def _unshare() -> list[str]:
    pid = ("--pid", "--fork", "--mount-proc", "--kill-child")
    # unprivileged: in a user namespace too
    cmd = unshare(*pid) or unshare("--user", "--map-root-user", *pid)
    if cmd is None:
        pytest.skip("cannot make a PID namespace here")
    return cmd


def test_dead_leaves_live_sessions_alone_and_all_ends_them() -> None:
    # The namespace has its own pids, not its own network: a fixed port may be anyone's.
    out = subprocess.run([*_unshare(), sys.executable, "-c", NAMESPACE, OWNER,
                          str(free_port())],
                         capture_output=True, text=True, timeout=120, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    sessions = {s["session"]: s for s in seen["listing"]["sessions"]}
    assert sessions[seen["tag"]]["kernel_alive"] is True
    assert sessions["4000000-dead"]["kernel_alive"] is False
    assert "cleaning up 1 session(s): 4000000-dead" in seen["dead"], seen["dead"]
    assert seen["after_dead"] == {"server": True, "leftover_rc": -15}
    assert f"cleaning up 1 session(s): {seen['tag']}" in seen["all"], seen["all"]
    assert seen["owner_saw"] == ["returncode", "-15"]
    assert seen["server_after_all"] is False
