"""Process identity: a process is (pid, create_time), never a bare pid (design.md fact 6).

One type (``ProcId``), one tolerance (``same_process``), one clock: epoch seconds, as
psutil's ``create_time()``. On Linux a create time is ``boot_time() + start ticks /
CLK_TCK``; processes that must agree exactly across a process boundary (the keeper and the
engine) exchange start times in seconds since boot instead, because two processes can read
the boot time a second apart.
"""

from __future__ import annotations

import os

# Create times come from one formula on each platform; allow for float noise only (half a
# clock tick at the usual 100 Hz).
TOLERANCE = 0.005

_boot_time: float | None = None
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def same_process(a: float, b: float) -> bool:
    """Are two create times the same process's? The one comparison every caller uses."""
    return abs(a - b) < TOLERANCE


def boot_time() -> float:
    """The boot time in epoch seconds (Linux ``/proc/stat``), read once per process;
    0.0 where there is none."""
    global _boot_time
    if _boot_time is None:
        _boot_time = 0.0
        try:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime"):
                        _boot_time = float(line.split()[1])
                        break
        except OSError:
            pass
    return _boot_time


def create_time_from_ticks(ticks: int) -> float:
    """Start ticks since boot (``/proc/<pid>/stat`` field 22) as an epoch create time."""
    return boot_time() + ticks / CLK_TCK


def create_time_from_start(seconds: float) -> float | None:
    """A start time in seconds since boot (what a keeper reports) as an epoch create time;
    None when the keeper could not tell (0.0)."""
    return boot_time() + seconds if seconds > 0 else None


class ProcId:
    """One process: (pid, create_time). Equal when the pids are and the create times are
    the same process's (``same_process``)."""

    __slots__ = ("create_time", "pid")

    def __init__(self, pid: int, create_time: float) -> None:
        self.pid = pid
        self.create_time = create_time

    def matches(self, create_time: float) -> bool:
        """Is a process seen now with ``create_time`` (at our pid) this one?"""
        return same_process(self.create_time, create_time)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcId):
            return NotImplemented
        return self.pid == other.pid and self.matches(other.create_time)

    def __hash__(self) -> int:
        return hash(self.pid)

    def __repr__(self) -> str:
        return f"ProcId(pid={self.pid}, create_time={self.create_time!r})"


class ProcRecord:
    """One process as a scan saw it; ``ident`` is its identity. A plain slotted class:
    the keeper must not import ``typing`` or ``dataclasses`` to start."""

    __slots__ = ("create_time", "pgid", "pid", "ppid", "process_tag", "session_tag", "sid",
                 "zombie")

    def __init__(
        self,
        pid: int,
        ppid: int,
        create_time: float,
        pgid: int,
        sid: int,
        zombie: bool,
        session_tag: str | None = None,
        process_tag: str | None = None,
    ) -> None:
        self.pid = pid
        self.ppid = ppid
        self.create_time = create_time
        self.pgid = pgid
        self.sid = sid
        self.zombie = zombie
        self.session_tag = session_tag
        self.process_tag = process_tag

    @property
    def ident(self) -> ProcId:
        return ProcId(self.pid, self.create_time)

    def __repr__(self) -> str:
        return (f"ProcRecord(pid={self.pid}, ppid={self.ppid}, create_time={self.create_time!r}"
                f", pgid={self.pgid}, sid={self.sid}, zombie={self.zombie}, "
                f"session_tag={self.session_tag!r}, process_tag={self.process_tag!r})")
