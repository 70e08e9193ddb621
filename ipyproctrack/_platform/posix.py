"""POSIX: sessions, process groups and signals; psutil for discovery where /proc is absent."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from ._common import (
    TAG_PROCESS,
    TAG_SESSION,
    Containment,
    ProcRecord,
    SendResult,
    Signal,
    by_pid,
    kill_pid,
    same_time,
)

try:
    import psutil
except ImportError:  # the engine still works, with reduced discovery (groups only)
    psutil = None  # type: ignore[assignment]

DISCOVERY = "psutil" if psutil is not None else "groups"


def popen_kwargs() -> dict[str, Any]:
    """Own session: jupyter_client's group signals (interrupt, shutdown) never reach it."""
    return {"start_new_session": True}


def shell_argv(script: str) -> list[str]:
    shell = shutil.which("bash") or "/bin/sh"
    return [shell, "-c", script]


def signal_group(pgid: int, which: Signal) -> SendResult:
    """Signal a whole process group. The caller has checked that the group is still ours."""
    if pgid <= 1 or pgid == os.getpgid(0):
        return "denied"  # never our own group: that would kill the kernel's parents
    try:
        os.killpg(pgid, signal.SIGTERM if which == "term" else signal.SIGKILL)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "denied"
    return "sent"


# --- discovery without /proc (macOS, BSD): psutil when present ----------------------------


def _psutil_record(p: Any, with_tags: bool) -> ProcRecord | None:
    try:
        with p.oneshot():
            pid = p.pid
            ppid, ctime, zombie = p.ppid(), p.create_time(), p.status() == psutil.STATUS_ZOMBIE
            env: dict[str, str] = {}
            if with_tags and not zombie:
                try:
                    env = p.environ()
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    env = {}
        pgid, sid = os.getpgid(pid), os.getsid(pid)
    except (psutil.Error, OSError):
        return None
    return ProcRecord(
        pid, ppid, ctime, pgid, sid, zombie, env.get(TAG_SESSION), env.get(TAG_PROCESS)
    )


def get_record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
    if psutil is None:
        try:
            return ProcRecord(pid, 0, 0.0, os.getpgid(pid), os.getsid(pid), False)
        except OSError:
            return None
    try:
        return _psutil_record(psutil.Process(pid), with_tags)
    except psutil.Error:
        return None


def scan_processes(*, with_tags: bool = True) -> dict[int, ProcRecord]:
    if psutil is None:
        return {}
    return by_pid(_psutil_record(p, with_tags) for p in psutil.process_iter())


def command_of(pid: int) -> str:
    if psutil is None:
        return ""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return ""


def send_signal(pid: int, create_time: float, which: Signal) -> SendResult:
    sig = signal.SIGTERM if which == "term" else signal.SIGKILL
    if psutil is not None:
        try:
            p = psutil.Process(pid)
            if not same_time(p.create_time(), create_time) or (
                p.status() == psutil.STATUS_ZOMBIE
            ):
                return "gone"
            p.send_signal(sig)  # psutil re-checks the identity before it signals
            return "sent"
        except (psutil.NoSuchProcess, ProcessLookupError):
            return "gone"
        except (psutil.AccessDenied, PermissionError):
            return "denied"
    return kill_pid(pid, sig)  # without psutil there is no identity to check here


def enlarge_pipe(fd: int) -> None:
    """Only Linux can resize a pipe."""


def open_exit_waiter(pid: int) -> int | None:
    return None


def contain(pid: int) -> Containment | None:
    """POSIX contains trees with the keeper (keeper_client), not with a handle."""
    return None
