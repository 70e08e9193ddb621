"""Leftovers: live processes that carry one of a set of session tags, found by one scan,
and their teardown. What a test run's leak guard needs (the pytest plugin's front)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .. import _platform as plat
from .._proc.discovery import Target, one_line, protected_pids
from .._proc.identity import ProcId
from .._proc.scan import command_of, scan_processes
from .._proc.signals import is_alive
from .._proc.teardown import CleanupReport, run_teardown

__all__ = [
    "SESSION_VARIABLE",
    "Leftover",
    "find_leftovers",
    "stop_leftovers",
    "wait_leftovers_gone",
]

log = logging.getLogger(__name__)

# The environment variable that names a process's session (what find_leftovers matches).
SESSION_VARIABLE = plat.TAG_SESSION


@dataclass(frozen=True, slots=True)
class Leftover:
    """One live process carrying a session tag we look for."""

    pid: int
    create_time: float
    command: str
    session_tag: str
    process_tag: str | None

    @property
    def ident(self) -> ProcId:
        return ProcId(self.pid, self.create_time)

    def describe(self) -> str:
        return f"pid {self.pid}: {self.command or '?'}"


def find_leftovers(session_tags: Collection[str]) -> list[Leftover]:
    """Every live process (zombies excluded, this process and its ancestors too) whose
    ``IPYPROCTRACK_SESSION`` is exactly one of ``session_tags``, by pid."""
    if not session_tags:
        return []
    wanted = set(session_tags)
    mine = protected_pids()
    out = []
    for rec in scan_processes(with_tags=True).values():
        if rec.zombie or rec.pid in mine or rec.session_tag not in wanted:
            continue
        out.append(Leftover(rec.pid, rec.create_time, one_line(command_of(rec.pid)),
                            rec.session_tag or "", rec.process_tag))
    return sorted(out, key=lambda lo: lo.pid)


def wait_leftovers_gone(leftovers: Sequence[Leftover], timeout: float) -> list[Leftover]:
    """Give exiting processes (a keeper finishing its sweep) up to ``timeout`` seconds;
    return the ones still alive then."""
    deadline = time.monotonic() + timeout
    pending = list(leftovers)
    while True:
        pending = [lo for lo in pending if is_alive(lo.ident)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def stop_leftovers(leftovers: Sequence[Leftover], *, grace: float) -> CleanupReport:
    """The phased teardown of each leftover and its descendants. Their process groups are
    left alone: a plain ``Popen`` shares the caller's group. Never raises."""
    targets = [
        Target(name=f"leftover pid {lo.pid}", root=lo.ident,
               # a tracked process's tag sweeps its escapees; a plain one has none to match
               tag=lo.process_tag or f"\0untagged-{lo.pid}", command=lo.command)
        for lo in leftovers
    ]
    report = run_teardown(targets, grace=grace)
    if not report.ok:
        log.warning("leftovers survived their teardown: %s", report.messages)
    return report
