"""The nasty process tree of issue 2 (``tests/trees/nasty_tree.sh``), for tests.

Typical use with a Tracker::

    command, pidfile = start_nasty(tmp_path)
    proc = tracker.start(command, name="nasty")
    wait_nasty_ready(pidfile)
    members = read_nasty_pids(pidfile)       # [(role, pid, create_time)], all alive now
    report = tracker.cleanup()
    assert wait_dead([(pid, ct) for _, pid, ct in members], 2.0) == []

Read the pids after ``wait_nasty_ready`` and before any cleanup: ``read_nasty_pids`` needs
each process to be there to learn its create time.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import psutil

__all__ = [
    "NASTY_COUNT",
    "NASTY_COUNT_ENV_I",
    "NASTY_SCRIPT",
    "read_nasty_pids",
    "start_nasty",
    "wait_nasty_ready",
]

NASTY_SCRIPT = Path(__file__).resolve().parent / "trees" / "nasty_tree.sh"
NASTY_COUNT = 64  # processes, the root script included
NASTY_COUNT_ENV_I = 65  # with the `env -i` daemon


def start_nasty(tmp_path: Path, *, env_i: bool = False) -> tuple[str, Path]:
    """Prepare a run of the nasty tree: return ``(command, pidfile)``.

    ``command`` is a shell command string (for ``Tracker.start`` or ``bash -c``). It execs
    the script, so the launched pid is the tree's root. Nothing is started here.
    ``pidfile`` starts empty; its ``.ready`` companion is removed.
    """
    pidfile = tmp_path / "nasty.pids"
    pidfile.write_text("")
    ready_file(pidfile).unlink(missing_ok=True)
    assignments = [
        f"NASTY_PIDFILE={shlex.quote(str(pidfile))}",
        f"NASTY_PYTHON={shlex.quote(sys.executable)}",
    ]
    if env_i:
        assignments.append("NASTY_ENV_I=1")
    command = " ".join(["exec", "env", *assignments, "bash", shlex.quote(str(NASTY_SCRIPT))])
    return command, pidfile


def ready_file(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".ready")


def wait_nasty_ready(pidfile: Path, timeout: float = 15) -> None:
    """Block until the tree says READY; raise if it reports INCOMPLETE or times out."""
    marker = ready_file(pidfile)
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = marker.read_text().strip()
        except FileNotFoundError:
            state = ""
        if state == "READY":
            return
        if state:
            raise RuntimeError(f"nasty tree did not start fully: {state}\n{_pids_text(pidfile)}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nasty tree not READY after {timeout:g} s\n{_pids_text(pidfile)}")
        time.sleep(0.05)


def _pids_text(pidfile: Path) -> str:
    try:
        return pidfile.read_text()
    except OSError as exc:
        return f"(pid file unreadable: {exc})"


def read_nasty_pids(pidfile: Path, *, strict: bool = True) -> list[tuple[str, int, float]]:
    """Every process the tree recorded, as ``(role, pid, create_time)``, in file order.

    With ``strict`` (the default), a recorded process that is already gone raises
    ``RuntimeError`` (except the ``zombie``, which may be unreadable on some systems);
    without it, such entries are left out.
    """
    members: list[tuple[str, int, float]] = []
    for line in pidfile.read_text().splitlines():
        if not line.strip():
            continue
        role, pid_text = line.split()
        pid = int(pid_text)
        try:
            ctime = psutil.Process(pid).create_time()
        except (psutil.Error, OSError):
            if strict and role != "zombie":
                msg = f"nasty tree member {role} (pid {pid}) is already gone"
                raise RuntimeError(msg) from None
            continue
        members.append((role, pid, ctime))
    return members
