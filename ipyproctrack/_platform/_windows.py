"""Windows: a new console process group per launch, CTRL_BREAK_EVENT, TerminateProcess,
and a kill-on-close Job Object per launch.

Written behind the platform switch; it cannot run on the Linux machines we test on.
"""

from __future__ import annotations

import os
import signal
import subprocess

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import Containment, SendResult, Signal


def popen_kwargs() -> dict[str, Any]:
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}


def shell_argv(script: str) -> list[str]:
    return [os.environ.get("COMSPEC", "cmd.exe"), "/d", "/c", script]


def signal_number(which: Signal) -> int | None:
    """CTRL_BREAK_EVENT goes to a whole console group (signal_group), and sent to a pid
    that leads no group it reaches every process on the console, the kernel included: so
    there is no graceful signal for one process. os.kill(pid, SIGTERM) is TerminateProcess."""
    return None if which == "term" else int(signal.SIGTERM)


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
