"""Helpers shared by the benchmark scripts (not a benchmark itself).

Processes are handled as (pid, create_time) identities and killed by pid only, never by
name. Zombies count as dead.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

Identity = tuple[int, float]

# A bash tree of exactly N processes: the root, N-2 `sleep`s and one SIGTERM ignorer.
# argv: N READY_FILE. The root writes READY_FILE once every child has been forked.
TREE_SCRIPT = r"""
n="$1"; ready="$2"
for ((i = 0; i < n - 2; i++)); do
    sleep 1000 &
done
(trap '' TERM; exec sleep 1000) &
echo ready >"$ready"
wait
"""


def write_tree_script(directory: Path) -> Path:
    path = directory / "tree.sh"
    path.write_text(TREE_SCRIPT)
    return path


def identity(pid: int) -> Identity | None:
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(ident: Identity) -> bool:
    pid, ctime = ident
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - ctime) < 0.005 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree_identities(root_pid: int) -> list[Identity]:
    """The root and all its descendants now, as identities."""
    root = psutil.Process(root_pid)
    out: list[Identity] = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            out.append((proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return out


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.01)


def wait_tree_size(root_pid: int, size: int, timeout: float) -> list[Identity]:
    """Wait until the tree under ``root_pid`` has ``size`` live members; return them."""
    deadline = time.monotonic() + timeout
    while True:
        members = [m for m in tree_identities(root_pid) if is_alive(m)]
        if len(members) >= size:
            return members
        if time.monotonic() > deadline:
            raise TimeoutError(f"tree of {root_pid} has {len(members)} of {size} processes")
        time.sleep(0.05)


def kill_leftovers(members: Iterable[Identity], timeout: float = 5.0) -> int:
    """SIGKILL every member still alive, by pid after checking its identity.

    Returns how many were still alive before this kill.
    """
    alive = [m for m in members if is_alive(m)]
    for pid, ctime in alive:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - ctime) < 0.005:
                os.kill(pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + timeout
    while any(is_alive(m) for m in alive) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(alive)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))
