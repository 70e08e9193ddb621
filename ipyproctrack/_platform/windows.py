"""Windows: a new process group per launch, CTRL_BREAK_EVENT, then terminate.

Written behind the platform switch; it cannot run on the Linux machines we test on.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from ._common import (
    TAG_PROCESS,
    TAG_SESSION,
    Containment,
    ProcRecord,
    SendResult,
    Signal,
    by_pid,
    same_time,
)

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
    """CTRL_BREAK_EVENT reaches the whole console process group (the root was started with
    CREATE_NEW_PROCESS_GROUP, so its pid names one); there is no group SIGKILL."""
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
    return by_pid(get_record(p.pid, with_tags=with_tags) for p in psutil.process_iter())


def command_of(pid: int) -> str:
    if psutil is None:
        return ""
    try:
        return subprocess.list2cmdline(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return ""


def send_signal(pid: int, create_time: float, which: Signal) -> SendResult:
    """Windows has no graceful signal for one process: CTRL_BREAK_EVENT goes to a whole
    console group (signal_group, sent to the root's group), and sending it to a pid that
    leads no group reaches every process on the console, the kernel included. So "term"
    only checks the identity here; "kill" is TerminateProcess."""
    if psutil is None:
        return "gone"
    try:
        p = psutil.Process(pid)
        if not same_time(p.create_time(), create_time):
            return "gone"
        if which == "kill":
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


# --- containment: one Job Object per launch -------------------------------------------------
# JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: when the last handle closes (the kernel dies, however
# it dies) Windows kills every process in the job. The handle is not inheritable, so only
# this process holds it. debugpy does the same with ctypes.

_JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9
_PROCESS_SET_QUOTA = 0x0100
_PROCESS_TERMINATE = 0x0001


class JobContainment:
    """A Job Object holding one tracked tree."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def terminate(self) -> None:
        """The end of the Windows stop sequence: TerminateJobObject."""
        kernel32 = _kernel32()
        if kernel32 is not None and self.handle:
            kernel32.TerminateJobObject(self.handle, 1)

    def close(self) -> None:
        kernel32 = _kernel32()
        if kernel32 is not None and self.handle:
            kernel32.CloseHandle(self.handle)
            self.handle = 0


def _kernel32() -> Any:
    import ctypes

    windll = getattr(ctypes, "windll", None)
    return windll.kernel32 if windll is not None else None


def contain(pid: int) -> Containment | None:
    """Put a freshly started process in a new kill-on-close job. None if that failed (the
    process still runs; teardown then relies on CTRL_BREAK and terminate)."""
    import ctypes
    from ctypes import wintypes

    kernel32 = _kernel32()
    if kernel32 is None:
        return None

    class IoCounters(ctypes.Structure):
        _fields_ = [(n, ctypes.c_ulonglong) for n in (
            "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
            "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

    class BasicLimits(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_longlong),
            ("PerJobUserTimeLimit", ctypes.c_longlong),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", BasicLimits),
            ("IoInfo", IoCounters),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    job = kernel32.CreateJobObjectW(None, None)  # default security: not inheritable
    if not job:
        return None
    info = ExtendedLimits()
    info.BasicLimitInformation.LimitFlags = _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    ok = kernel32.SetInformationJobObject(
        job, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(info), ctypes.sizeof(info)
    )
    proc = kernel32.OpenProcess(_PROCESS_SET_QUOTA | _PROCESS_TERMINATE, False, pid)
    if ok and proc:
        ok = kernel32.AssignProcessToJobObject(job, proc)
    if proc:
        kernel32.CloseHandle(proc)
    if not ok:
        kernel32.CloseHandle(job)
        return None
    return JobContainment(job)
