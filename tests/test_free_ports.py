"""Free ports and run-to-completion in the engine (issue 10): real servers, real exits."""

from __future__ import annotations

import sys
import time
import urllib.request

import pytest
from _procs import is_alive

from ipyproctrack import ExitTimeout, HttpReady, LaunchError, PortReady, Tracker
from ipyproctrack._engine.ports import free_port, resolve_port, with_port

SERVER = f"exec {sys.executable} -m http.server {{port}} --bind 127.0.0.1"


def _status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return int(resp.status)


def test_port_auto_gives_each_launch_its_own_free_port(tracker: Tracker) -> None:
    a = tracker.start(SERVER, name="a", port="auto", ready=HttpReady("http://127.0.0.1:{port}/"))
    b = tracker.start(SERVER, name="b", port="auto", ready=[PortReady("{port}")])
    assert a.port is not None and b.port is not None and a.port != b.port
    assert str(a.port) in a.command and "{port}" not in a.command
    assert _status(a.port) == 200 and _status(b.port) == 200


def test_a_fixed_port_sets_the_environment_and_the_command(tracker: Tracker) -> None:
    port = free_port()
    proc = tracker.start('echo "env=$PORT arg={port}"', name="echo", port=port)
    assert proc.wait(10) == 0 and proc.wait_output_done(5)
    assert proc.tail().strip() == f"env={port} arg={port}"
    assert proc.port == port
    listed = tracker.start(["sh", "-c", 'echo "$PORT $0"', "{port}"], name="argv", port=port)
    assert listed.wait(10) == 0 and listed.wait_output_done(5)
    assert listed.tail().strip() == f"{port} {port}"


def test_port_mistakes_fail_before_anything_runs(tracker: Tracker) -> None:
    with pytest.raises(LaunchError, match="needs a port"):
        tracker.start("sleep 30", name="x", ready=HttpReady("http://127.0.0.1:{port}/"))
    for bad in (0, 70000, "eighty", True):
        with pytest.raises(LaunchError, match="port must be"):
            tracker.start("sleep 30", name="x", port=bad)
    assert tracker.processes() == []


def test_free_port_never_hands_out_a_port_twice_in_a_row() -> None:
    ports = [free_port() for _ in range(30)]
    assert len(set(ports)) == len(ports)
    assert resolve_port(None) is None and resolve_port(8080) == 8080
    assert with_port("a {port} {x}", 9) == "a 9 {x}"  # not str.format: braces stay


def test_wait_exit_returns_the_return_code(tracker: Tracker) -> None:
    proc = tracker.start("sleep 0.3; echo done; exit 3", name="job")
    assert proc.wait_exit(30) == 3


def test_wait_exit_timeout_tears_the_tree_down(tracker: Tracker) -> None:
    proc = tracker.start("sleep 60 & sleep 60; wait", name="slow")
    assert _settle(proc, 3)
    members = [(m.pid, m.create_time) for m in proc.tree()]
    started = time.monotonic()
    with pytest.raises(ExitTimeout, match=r"'slow' did not exit within 0\.5 s; its tree was "
                                          r"torn down \(3 process\(es\), all gone"):
        proc.wait_exit(0.5)
    assert time.monotonic() - started < 10
    assert not any(is_alive(pid, ctime) for pid, ctime in members)
    assert proc.tree() == []


def _settle(proc: object, count: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(proc.tree()) == count:  # type: ignore[attr-defined]
            return True
        time.sleep(0.05)
    return False
