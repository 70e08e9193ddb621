"""Process helpers for the tests: find processes carrying our tags, check and kill by identity.

A process is (pid, create_time), never a bare pid (design.md, fact 6), and a zombie counts
as dead (fact 7). These helpers are independent of the engine on purpose: they are how the
tests check the engine's work.

On Linux the tag scan reads ``/proc/*/environ`` directly; elsewhere it uses
``psutil.process_iter(["environ"])``.

Other test runs may be going on at the same time on the same machine, and their tagged
processes are none of ours. So a test run marks itself (``mark_test_run``, called by
``conftest.py``): it sets ``IPYPROCTRACK_TEST_RUN`` to a fresh value in ``os.environ``,
which every process the tests start inherits (``Tracker.start`` merges ``env`` over
``os.environ``; kernels started by nbclient inherit it too). ``tagged_processes`` then only
reports processes carrying this run's mark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil

__all__ = [
    "RUN_VARIABLE",
    "TAG_VARIABLES",
    "cmdline",
    "create_time",
    "is_alive",
    "kill_by_identity",
    "mark_test_run",
    "orphans_of_this_run",
    "tagged_processes",
    "wait_dead",
]

TAG_VARIABLES: tuple[str, ...] = ("IPYPROCTRACK_SESSION", "IPYPROCTRACK_PROCESS")
RUN_VARIABLE = "IPYPROCTRACK_TEST_RUN"
_KEYS: tuple[bytes, ...] = tuple(f"{name}=".encode() for name in TAG_VARIABLES)
_RUN_KEY = f"{RUN_VARIABLE}=".encode()
_MARK = b"IPYPROCTRACK_"
# Two create times of one process agree to well under one clock tick (10 ms).
_SAME_TIME = 0.005


def mark_test_run() -> str:
    """Give this test run a fresh mark in ``os.environ``; return it."""
    mark = uuid.uuid4().hex
    os.environ[RUN_VARIABLE] = mark
    return mark


def _run_mark() -> str | None:
    return os.environ.get(RUN_VARIABLE)


def _own_tags() -> frozenset[tuple[str, str]]:
    """Tag values this test run inherited (say, pytest launched from a tracked notebook).

    Processes carrying only these were not created by a test, so they are not counted.
    """
    return frozenset((name, os.environ[name]) for name in TAG_VARIABLES if name in os.environ)


def _tags_in(environ: bytes, run_mark: str | None) -> list[tuple[str, str]]:
    """The tag variables in a raw environment block; none unless it carries ``run_mark``."""
    if _MARK not in environ:
        return []
    found: list[tuple[str, str]] = []
    marked = run_mark is None
    for entry in environ.split(b"\0"):
        if entry.startswith(_RUN_KEY):
            marked = entry[len(_RUN_KEY) :].decode("utf-8", "replace") == run_mark
            continue
        for name, key in zip(TAG_VARIABLES, _KEYS, strict=True):
            if entry.startswith(key):
                found.append((name, entry[len(key) :].decode("utf-8", "replace")))
    return found if marked else []


def _tagged_pids_proc(run_mark: str | None) -> list[int]:
    pids: list[int] = []
    empty: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if not environ:
            empty.append(entry)
        elif _has_new_tag(_tags_in(environ, run_mark)):
            pids.append(int(entry))
    return pids + _after_exec(empty, run_mark)


def _after_exec(entries: list[str], run_mark: str | None) -> list[int]:
    """Of the processes that showed an empty environment (kernel threads, zombies, and one
    in the middle of an exec: its new environment is there a moment later), the tagged
    ones, looked at again after that moment. A leak started just before a test ended
    would otherwise go unseen."""
    live = []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X") and fields[1] not in (b"0", b"2"):  # kthreadd's
            live.append(entry)
    if not live:
        return []
    time.sleep(0.05)
    pids = []
    for entry in live:
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if _has_new_tag(_tags_in(environ, run_mark)):
            pids.append(int(entry))
    return pids


def _tagged_pids_psutil(run_mark: str | None) -> list[int]:
    pids: list[int] = []
    for proc in psutil.process_iter(["environ"]):
        environ: dict[str, str] | None = proc.info.get("environ")
        if not environ:
            continue
        if run_mark is not None and environ.get(RUN_VARIABLE) != run_mark:
            continue
        tags = [(name, environ[name]) for name in TAG_VARIABLES if name in environ]
        if _has_new_tag(tags):
            pids.append(proc.pid)
    return pids


def orphans_of_this_run() -> dict[int, tuple[float, str]]:
    """Processes of this test run (tagged or not) that nobody parents any more: their
    parent died and init adopted them. A test that leaves one has leaked it, even when it
    carries no tag (say, the grandchild of a plain ``subprocess`` a test started)."""
    mark = _run_mark()
    if mark is None or not os.path.isdir("/proc"):
        return {}
    key = _RUN_KEY + mark.encode()
    out: dict[int, tuple[float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if key not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[1]) == 1:
            rec = _record(int(entry))
            if rec is not None:
                out[int(entry)] = rec
    return out


def _has_new_tag(tags: list[tuple[str, str]]) -> bool:
    return bool(tags) and not set(tags) <= _own_tags()


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as one string ("" when unknown)."""
    try:
        proc = psutil.Process(pid)
        return " ".join(proc.cmdline()) or f"[{proc.name()}]"
    except (psutil.Error, OSError):
        return ""


def _record(pid: int) -> tuple[float, str] | None:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time(), cmdline(pid)
    except (psutil.Error, OSError):
        return None


def tagged_processes(*, this_run_only: bool = True) -> dict[int, tuple[float, str]]:
    """Every live process whose environment has IPYPROCTRACK_SESSION or IPYPROCTRACK_PROCESS.

    Returns ``{pid: (create_time, cmdline)}``. Zombies and this process are left out, and so
    are processes whose tags all equal this process's own inherited tags. With
    ``this_run_only`` (the default) and a run mark set (``mark_test_run``), only processes
    carrying this run's mark count.
    """
    mark = _run_mark() if this_run_only else None
    if sys.platform.startswith("linux"):
        pids = _tagged_pids_proc(mark)
    else:
        pids = _tagged_pids_psutil(mark)
    me = os.getpid()
    out: dict[int, tuple[float, str]] = {}
    for pid in pids:
        if pid == me:
            continue
        record = _record(pid)
        if record is not None:
            out[pid] = record
    return out


def create_time(pid: int) -> float | None:
    """The create time of ``pid`` as psutil reports it, or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def is_alive(pid: int, create_time: float) -> bool:
    """True if ``pid`` still is the process that was created at ``create_time``.

    A zombie is dead; a pid now used by another process is dead too.
    """
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) >= _SAME_TIME:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def kill_by_identity(pairs: Iterable[tuple[int, float]]) -> None:
    """SIGKILL (TerminateProcess on Windows) each (pid, create_time) that is still that process.

    Never raises: a process that is gone, recycled or not ours is skipped.
    """
    for pid, ctime in pairs:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - ctime) >= _SAME_TIME:
                continue
            proc.kill()
        except (psutil.Error, OSError):
            continue


def wait_dead(pairs: Iterable[tuple[int, float]], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for every (pid, create_time) to be dead.

    Returns the pids still alive at the deadline (empty when all are dead).
    """
    pending = list(pairs)
    deadline = time.monotonic() + timeout
    while True:
        pending = [(pid, ctime) for pid, ctime in pending if is_alive(pid, ctime)]
        if not pending or time.monotonic() >= deadline:
            return [pid for pid, _ in pending]
        time.sleep(0.02)


def until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def wait_record(path: Path, want: str = "all gone", timeout: float = 8.0) -> str:
    """The kernel-end record at ``path`` once it holds ``want``, or what it holds at the
    deadline ("" when absent). Waiting for the file alone races with its writer: the
    file exists (empty) before the teardown's report is in it."""
    text = ""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            text = path.read_text()
        if want in text or time.monotonic() >= deadline:
            return text
        time.sleep(0.05)


def free_port() -> int:
    """A 127.0.0.1 port that was free a moment ago (for a server the test starts at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port on which nothing listens while the block runs: bound by this
    process and never listening, so a connection is refused, and no other test (another
    xdist worker's server, say) can take it meanwhile, as it could a port merely found free."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def unshare(*flags: str) -> list[str] | None:
    """``unshare(1)`` with ``flags`` as a command prefix, if it works here (tried once with
    ``true``); None without the tool or the right (not root, a container, another OS)."""
    if shutil.which("unshare") is None:
        return None
    cmd = ["unshare", *flags]
    return cmd if subprocess.run([*cmd, "true"], capture_output=True).returncode == 0 else None
