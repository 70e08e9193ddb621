"""The phased teardown, and its report. Synchronous and free of anyio, so the keeper
process can run the very same code when the kernel is gone.

Phases: SIGTERM every process and group of every tree at once; wait up to ``grace``;
SIGKILL the survivors (and say so); sweep the groups and the tags again; reap our children.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .. import _platform
from .discovery import (
    FOUND_TREE,
    ProcessInfo,
    Target,
    discover,
    one_line,
    protected_pids,
)
from .identity import ProcId
from .scan import command_of, discovery_name, scan_processes
from .signals import is_alive, send_signal, signal_group

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .._platform import Signal

__all__ = ("CleanupReport", "ProcessInfo", "ProcessOutcome", "run_teardown")

EXITED = "exited"
SIGTERM = "SIGTERM"
SIGKILL = "SIGKILL"
ALREADY_GONE = "already gone"
ACCESS_DENIED = "access denied"
STILL_ALIVE = "still alive"

HAS_SUBREAPER = _platform.HAS_SUBREAPER
log = logging.getLogger(__name__)
_POLL = 0.02
_SWEEP_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    name: str
    pid: int
    command: str
    found_by: str
    ended_by: str
    seconds: float

    def describe(self) -> str:
        cmd = self.command if len(self.command) <= 60 else self.command[:57] + "..."
        return f"pid {self.pid} ({cmd})"


@dataclass
class CleanupReport:
    """What a teardown found and what ended each process. ``str()`` reads as a summary."""

    names: list[str] = field(default_factory=list)
    outcomes: list[ProcessOutcome] = field(default_factory=list)
    duration: float = 0.0
    grace: float = 0.0
    discovery: str = field(default_factory=discovery_name)
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.survivors()

    def survivors(self) -> list[ProcessOutcome]:
        return [o for o in self.outcomes if o.ended_by in (STILL_ALIVE, ACCESS_DENIED)]

    def summary_lines(self) -> list[str]:
        lines = []
        for name in self.names:
            mine = [o for o in self.outcomes if o.name == name]
            counts: dict[str, int] = {}
            for o in mine:
                counts[o.ended_by] = counts.get(o.ended_by, 0) + 1
            how = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing running"
            alive = sum(counts.get(k, 0) for k in (STILL_ALIVE, ACCESS_DENIED))
            verdict = f"{alive} STILL ALIVE" if alive else "all gone"
            lines.append(f"{name}: {len(mine)} process(es), {verdict} ({how})")
        return lines

    def __str__(self) -> str:
        if not self.names:
            return "nothing to clean up"
        head = (
            f"cleanup of {len(self.names)} tracked tree(s) took {self.duration:.2f} s "
            f"(grace {self.grace:g} s, discovery: {self.discovery})"
        )
        lines = [head, *("  " + s for s in self.summary_lines())]
        lines += ["  " + m for m in self.messages]  # escalations and survivors, once each
        return "\n".join(lines)

    def details(self) -> str:
        rows = [f"{'name':<16} {'pid':>7} {'found':<6} {'ended by':<13} {'s':>6}  command"]
        for o in self.outcomes:
            rows.append(
                f"{o.name:<16} {o.pid:>7} {o.found_by:<6} {o.ended_by:<13} "
                f"{o.seconds:>6.2f}  {o.command[:80]}"
            )
        return "\n".join(rows)


@dataclass
class _Member:
    target: Target
    ident: ProcId
    command: str
    found_by: str
    ended_by: str | None = None
    seconds: float = 0.0


class _Teardown:
    def __init__(self, targets: Sequence[Target], grace: float, exclude: Iterable[int]) -> None:
        self.targets = list(targets)
        self.grace = max(grace, 0.0)
        self.exclude = protected_pids() | set(exclude)
        for t in self.targets:
            self.exclude.update(h.pid for h in t.helpers)
        self.members: dict[int, _Member] = {}
        self.report = CleanupReport(names=[t.name for t in self.targets], grace=self.grace)
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def scan(self) -> list[_Member]:
        """Rescan; return the members not seen before."""
        snap = scan_processes(with_tags=True)
        new = []
        for pid, (t, rec, how) in discover(self.targets, snap, exclude=self.exclude).items():
            old = self.members.get(pid)
            if old is not None and old.ident.matches(rec.create_time):
                continue
            m = _Member(t, ProcId(pid, rec.create_time), one_line(command_of(pid)), how)
            self.members[pid] = m
            new.append(m)
        return new

    def signal(self, members: Iterable[_Member], which: Signal) -> None:
        for m in members:
            res = send_signal(m.ident, which)
            if res == "gone" and m.ended_by is None:
                m.ended_by, m.seconds = ALREADY_GONE, self.elapsed()
            elif res == "denied":
                m.ended_by, m.seconds = ACCESS_DENIED, self.elapsed()

    def signal_groups(self, which: Signal) -> None:
        for t in self.targets:
            leader = t.group_leader()
            if t.group is None or leader is None:
                continue
            if which == "kill" and t.helper_led() and HAS_SUBREAPER:
                continue  # the keeper must outlive the tree: orphans re-parent to it
            signal_group(t.group, leader, which)

    def pending(self) -> list[_Member]:
        return [m for m in self.members.values() if m.ended_by is None]

    def reap(self) -> None:
        """Reap our own children through their process objects (never waitpid(-1))."""
        for t in self.targets:
            if t.reap is not None:
                try:
                    t.reap()
                except Exception as exc:  # best effort: a stuck child shows as alive
                    log.warning("reaping %s failed: %r", t.name, exc)

    def settle(self, how: str) -> list[_Member]:
        """Mark the members that are gone; return the ones still alive."""
        self.reap()
        alive = []
        for m in self.pending():
            if is_alive(m.ident):
                alive.append(m)
            else:
                m.ended_by, m.seconds = how, self.elapsed()
        return alive

    def wait(self, until: float, how: str, *, rescan_every: float = 0.25) -> list[_Member]:
        next_scan = time.monotonic() + rescan_every
        delay = _POLL / 4
        while True:
            alive = self.settle(how)
            now = time.monotonic()
            if now >= next_scan and now < until:
                fresh = self.scan()  # children forked during the shutdown get the same treatment
                self.signal(fresh, "term" if how == SIGTERM else "kill")
                alive += [m for m in fresh if m.ended_by is None]
                next_scan = now + rescan_every
            if not alive or now >= until:
                return alive
            time.sleep(min(delay, max(until - now, 0.0)))
            delay = min(delay * 2, _POLL * 2.5)

    def run(self) -> CleanupReport:
        for t in self.targets:
            if t.root_exited and t.root is not None and not is_alive(t.root):
                self.report.outcomes.append(
                    ProcessOutcome(
                        t.name, t.root.pid, one_line(t.command), FOUND_TREE, EXITED, 0.0
                    )
                )
        first = self.scan()
        # 1. SIGTERM to every process and group of every tree at once.
        self.signal(first, "term")
        self.signal_groups("term")  # after: catches what forked since the scan
        # 2. Wait up to grace.
        survivors = self.wait(time.monotonic() + self.grace, SIGTERM)
        # 3. SIGKILL the survivors, loudly.
        if survivors:
            waited = self.elapsed()
            for m in survivors:
                self.report.messages.append(
                    f"{m.target.name}: pid {m.ident.pid} ({_short(m.command)}) ignored SIGTERM "
                    f"for {waited:.1f} s; sent SIGKILL"
                )
            self.signal(survivors, "kill")
            self.signal_groups("kill")
            self.wait(time.monotonic() + 1.0, SIGKILL, rescan_every=0.1)
        # 4. Sweep: rescan groups, tags and trees; kill what newly appeared.
        for _ in range(_SWEEP_ROUNDS):
            fresh = self.scan()
            if not fresh:
                break
            for m in fresh:
                self.report.messages.append(
                    f"{m.target.name}: pid {m.ident.pid} ({_short(m.command)}) appeared during "
                    f"cleanup; sent SIGKILL"
                )
            self.signal(fresh, "kill")
            self.wait(time.monotonic() + 1.0, SIGKILL, rescan_every=0.1)
        # 5. Reap our own children; helpers (keepers) exit once their subtree is empty.
        self._finish_helpers()
        self.settle(SIGKILL)
        for m in self.pending():
            m.ended_by, m.seconds = STILL_ALIVE, self.elapsed()
        for m in self.members.values():
            assert m.ended_by is not None
            self.report.outcomes.append(
                ProcessOutcome(m.target.name, m.ident.pid, m.command, m.found_by,
                               m.ended_by, round(m.seconds, 3))
            )
        for o in self.report.outcomes:
            if o.ended_by in (STILL_ALIVE, ACCESS_DENIED):
                self.report.messages.append(f"{o.name}: could not end {o.describe()}: {o.ended_by}")
        self.report.duration = self.elapsed()
        return self.report

    def _finish_helpers(self) -> None:
        helpers = [(t, h) for t in self.targets for h in t.helpers]
        deadline = time.monotonic() + 0.5
        while helpers and time.monotonic() < deadline:
            self.reap()
            helpers = [(t, h) for t, h in helpers if is_alive(h)]
            if helpers:
                time.sleep(_POLL)
        for t, h in helpers:
            send_signal(h, "kill")
            self.report.messages.append(f"{t.name}: helper pid {h.pid} did not exit; sent SIGKILL")


def _short(command: str) -> str:
    return command if len(command) <= 50 else command[:47] + "..."


def run_teardown(
    targets: Sequence[Target], *, grace: float, exclude_pids: Iterable[int] = ()
) -> CleanupReport:
    """The phased teardown of every target at once. Never raises: what it cannot end is
    reported as still alive (or access denied)."""
    td = _Teardown(targets, grace, exclude_pids)
    try:
        return td.run()
    except Exception as exc:  # cleanup never raises; it reports what it could not do
        log.exception("cleanup failed part-way")
        td.report.messages.append(f"cleanup failed part-way: {type(exc).__name__}: {exc}")
        td.report.duration = td.elapsed()
        return td.report
