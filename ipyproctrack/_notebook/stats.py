"""What the widgets, ``%proctrack`` and the cluster table show of a tree: process count,
CPU%, RSS and listening ports.

The numbers are the engine's (``_engine/metrics.py``): its one sampler thread per Tracker
already reads every tree once a second, so a display takes the newest sample instead of
sampling again. A sample is used only when it is fresh and was taken after the process's
last state change (an exit, readiness): otherwise, as in a tree's first second, one scan
per Tracker gives the count and RSS, and CPU% reads "-". Ports come from the tree's socket
fds at each call (``_engine/ports.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipyproctrack._engine.metrics import usage
from ipyproctrack._engine.ports import listening_ports as _engine_listening_ports
from ipyproctrack._proc.identity import same_process
from ipyproctrack.errors import ProcTrackError

if TYPE_CHECKING:
    from ipyproctrack import ProcessInfo, TrackedProcess

__all__ = ["EMPTY_STATS", "TreeStats", "listening_ports", "sample_trees"]

log = logging.getLogger(__name__)

#: What a failed scan costs a display: the numbers read "unknown", nothing raises.
_SCAN_ERRORS = (OSError, ProcTrackError)
#: A metrics sample older than this many sampling intervals is not shown (a stalled or
#: stopped sampler); at least FRESH_SECONDS.
FRESH_INTERVALS = 2.5
FRESH_SECONDS = 3.0


@dataclass(frozen=True)
class TreeStats:
    """Resource use of one tracked tree at one moment."""

    count: int
    cpu_percent: float | None  # None: unknown (no sample yet)
    rss: int | None
    ports: tuple[int, ...] | None  # None: unknown (the port scan failed)

    def ports_text(self) -> str:
        if self.ports is None:
            return "?"
        return ", ".join(str(p) for p in self.ports) or "-"

    def cpu_text(self) -> str:
        return "-" if self.cpu_percent is None else f"{self.cpu_percent:.0f}%"


EMPTY_STATS = TreeStats(0, None, None, ())


def listening_ports(pids: Sequence[int]) -> tuple[int, ...] | None:
    """The TCP ports the given pids listen on; None when the scan failed."""
    if not pids:
        return ()
    try:
        return tuple(_engine_listening_ports(pids))
    except _SCAN_ERRORS as exc:  # a display must never fail because a port scan did
        log.debug("port scan of %d process(es) failed: %s", len(pids), exc)
        return None


def from_metrics(proc: TrackedProcess) -> TreeStats | None:
    """``proc``'s tree from the engine's newest sample; None when there is no usable one."""
    series = proc.metrics_series
    if not series.interval:
        return None
    latest = series.latest()
    if latest is None:
        return None
    sample, age = latest
    if series.finished.is_set() and sample.processes == 0:
        return EMPTY_STATS  # the tree is gone: its last sample says so, for good
    taken = time.monotonic() - age
    if age > max(FRESH_SECONDS, FRESH_INTERVALS * series.interval) or taken < proc.changed_at:
        return None
    members = series.members  # one read: the sampler thread replaces the list
    if not sample.processes:
        return EMPTY_STATS
    ports = listening_ports([pid for pid, _ in members]) if members else None
    return TreeStats(sample.processes, sample.cpu_percent, sample.rss, ports)


def _from_scan(members: Sequence[ProcessInfo]) -> TreeStats:
    """Count, RSS and ports of a tree the sampler has not measured yet; CPU% unknown."""
    rss, pids = 0, []
    for member in members:
        found = usage(member.pid)
        if found is None or not same_process(found[2], member.create_time):
            continue  # gone since the scan
        rss += found[1]
        pids.append(member.pid)
    if not pids:
        return EMPTY_STATS
    return TreeStats(len(pids), None, rss, listening_ports(pids))


def _members_by_scan(procs: Sequence[TrackedProcess]) -> list[list[ProcessInfo]]:
    """Each process's tree, from ONE process scan per Tracker (``trees()``). A process
    whose name now belongs to a newer launch (it was replaced) is looked up on its own."""
    scans: dict[int, dict[str, list[ProcessInfo]]] = {}
    members: list[list[ProcessInfo]] = []
    for proc in procs:
        tracker = proc.tracker
        if id(tracker) not in scans:
            try:
                scans[id(tracker)] = tracker.trees()
            except _SCAN_ERRORS as exc:
                log.debug("process scan failed: %s", exc)
                scans[id(tracker)] = {}
        found = None
        if proc.name in tracker and tracker.get(proc.name) is proc:
            found = scans[id(tracker)].get(proc.name)
        if found is None:
            try:
                found = proc.tree()
            except _SCAN_ERRORS as exc:
                log.debug("scan of the tree of %r failed: %s", proc.name, exc)
                found = []
        members.append(found)
    return members


def sample_trees(procs: Sequence[TrackedProcess], *, wait: float = 0.0) -> list[TreeStats]:
    """Stats of several tracked trees: the engine's samples, and one scan per Tracker for
    the trees it has no fresh sample of. ``wait``: seconds to wait for missing samples
    first (``%proctrack`` right after a launch)."""
    found = [from_metrics(p) for p in procs]
    deadline = time.monotonic() + wait
    while None in found and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        found = [f if f is not None else from_metrics(p) for p, f in zip(procs, found,
                                                                          strict=True)]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        scanned = _members_by_scan([procs[i] for i in missing])
        for i, members in zip(missing, scanned, strict=True):
            found[i] = _from_scan(members)
    return [f if f is not None else EMPTY_STATS for f in found]
