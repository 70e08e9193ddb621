"""Windows: a new process group per launch, CTRL_BREAK_EVENT, then terminate.

Written behind the platform switch; it cannot run on the Linux machines we test on.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from ._common import TAG_PROCESS, TAG_SESSION, ProcRecord, SendResult, Signal, same_time

try:
    import psutil
except ImportError:
    psutil = None  # type: ignore[assignment]

DISCOVERY = "psutil" if psutil is not None else "groups"


def popen_kwargs() -> dict[str, Any]:
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}


def shell_argv(script: str) -> list[str]:
    return [os.environ.get("COMSPEC", "cmd.exe"), "/d", "/c", script]


def signal_group(pgid: int, which: Signal) -> SendResult:
    """CTRL_BREAK_EVENT reaches the whole console process group; there is no group SIGKILL."""
    if which != "term":
        return "gone"
    try:
        os.kill(pgid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined,unused-ignore]
    except OSError:
        return "gone"
    return "sent"


def get_record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
    if psutil is None:
        return None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            env = p.environ() if with_tags else {}
            return ProcRecord(
                pid, p.ppid(), p.create_time(), 0, 0, False,
                env.get(TAG_SESSION), env.get(TAG_PROCESS),
            )
    except (psutil.Error, OSError):
        return None


def scan_processes(*, with_tags: bool = True) -> dict[int, ProcRecord]:
    if psutil is None:
        return {}
    out: dict[int, ProcRecord] = {}
    for p in psutil.process_iter():
        rec = get_record(p.pid, with_tags=with_tags)
        if rec is not None:
            out[rec.pid] = rec
    return out


def scan_tags() -> dict[int, tuple[str | None, str | None]]:
    return {
        pid: (r.session_tag, r.process_tag)
        for pid, r in scan_processes().items()
        if r.session_tag or r.process_tag
    }


def command_of(pid: int) -> str:
    if psutil is None:
        return ""
    try:
        return subprocess.list2cmdline(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return ""


def send_signal(pid: int, create_time: float, which: Signal) -> SendResult:
    """Graceful: CTRL_BREAK to the process's group; kill: TerminateProcess."""
    if psutil is None:
        return "gone"
    try:
        p = psutil.Process(pid)
        if not same_time(p.create_time(), create_time):
            return "gone"
        if which == "term":
            p.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined,unused-ignore]
        else:
            p.kill()
    except psutil.NoSuchProcess:
        return "gone"
    except (psutil.AccessDenied, OSError):
        return "denied"
    return "sent"


def enlarge_pipe(fd: int) -> None:
    """Windows pipes are sized at creation."""


def open_exit_waiter(pid: int) -> int | None:
    return None
