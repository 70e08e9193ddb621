"""Types shared by every platform module. No platform checks here."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal, NamedTuple, Protocol

SessionTag = str
Signal = Literal["term", "kill"]
# What a signal attempt did: delivered, the process was already gone (or its pid now
# belongs to someone else), or the OS said no.
SendResult = Literal["sent", "gone", "denied"]

TAG_SESSION = "IPYPROCTRACK_SESSION"
TAG_PROCESS = "IPYPROCTRACK_PROCESS"


class ProcRecord(NamedTuple):
    """One process as a scan saw it. (pid, create_time) is its identity. A NamedTuple:
    a scan builds a thousand of them, and a tuple is the cheapest record to build."""

    pid: int
    ppid: int
    create_time: float
    pgid: int
    sid: int
    zombie: bool
    session_tag: str | None = None
    process_tag: str | None = None


def same_time(a: float, b: float) -> bool:
    """Create times come from one formula everywhere; allow for float noise only."""
    return abs(a - b) < 0.005


class Containment(Protocol):
    """What holds a tracked tree beyond its process group (a Windows Job Object)."""

    def terminate(self) -> None: ...

    def close(self) -> None: ...


def by_pid(records: Iterable[ProcRecord | None]) -> dict[int, ProcRecord]:
    """A scan's records keyed by pid, the unreadable ones left out."""
    return {r.pid: r for r in records if r is not None}


def kill_pid(pid: int, sig: int) -> SendResult:
    """os.kill, its errors translated: the one place a bare pid is signalled, after the
    caller has checked the identity."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "denied"
    return "sent"
