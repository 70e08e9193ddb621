"""Whole-tree resource sampling (process count, CPU%, RSS, listening ports) with psutil.

Both ``%proctrack`` and the widgets show these numbers; one :class:`TreeSampler` per
session keeps the ``psutil.Process`` objects between samples, so CPU% has an interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from ipyproctrack._engine.ports import listening_ports as _engine_listening_ports
from ipyproctrack.errors import ProcTrackError

if TYPE_CHECKING:
    from ipyproctrack import ProcessInfo, TrackedProcess

__all__ = ["EMPTY_STATS", "TreeSampler", "TreeStats", "listening_ports", "sample_trees"]

log = logging.getLogger(__name__)

#: What a failed scan or sample costs a display: the numbers read "unknown", nothing raises.
_SCAN_ERRORS = (OSError, psutil.Error, ProcTrackError)
#: Two create times closer than this are the same process.
_CREATE_TIME_TOLERANCE = 0.05
#: Forget every kept ``psutil.Process`` once this many pile up (a fork storm).
_MAX_KNOWN = 20_000


@dataclass(frozen=True)
class TreeStats:
    """Resource use of one tracked tree at one moment."""

    count: int
    cpu_percent: float | None
    rss: int | None
    ports: tuple[int, ...] | None  # None: unknown (the port scan failed)

    def ports_text(self) -> str:
        if self.ports is None:
            return "?"
        return ", ".join(str(p) for p in self.ports) or "-"

    def cpu_text(self) -> str:
        return "-" if self.cpu_percent is None else f"{self.cpu_percent:.0f}%"


EMPTY_STATS = TreeStats(0, None, None, ())

_Key = tuple[int, float]


def _key(pid: int, create_time: float) -> _Key:
    return pid, round(create_time, 2)


def listening_ports(pids: Sequence[int]) -> tuple[int, ...] | None:
    """The TCP ports the given pids listen on; None when the scan failed."""
    if not pids:
        return ()
    try:
        return tuple(_engine_listening_ports(pids))
    except _SCAN_ERRORS as exc:  # a display must never fail because a port scan did
        log.debug("port scan of %d process(es) failed: %s", len(pids), exc)
        return None


class TreeSampler:
    """Samples trees; keeps ``psutil.Process`` objects so CPU% has an interval.

    Thread-safe: the widget refresher and the ``%proctrack`` magic share one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[_Key, psutil.Process] = {}

    def _process(self, pid: int, create_time: float) -> tuple[psutil.Process, bool]:
        """The kept handle of (pid, create_time), and whether it is new."""
        key = _key(pid, create_time)
        found = self._known.get(key)
        if found is not None:
            return found, False
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > _CREATE_TIME_TOLERANCE:
            raise psutil.NoSuchProcess(pid)  # the pid was reused
        self._known[key] = proc
        return proc, True

    def _handles(
        self, trees: Sequence[Sequence[_Key]]
    ) -> tuple[list[list[psutil.Process]], list[psutil.Process]]:
        """A handle per live member of each tree, and the handles seen first now."""
        fresh: list[psutil.Process] = []
        handles: list[list[psutil.Process]] = []
        for members in trees:
            row: list[psutil.Process] = []
            for pid, ctime in members:
                try:
                    handle, new = self._process(pid, ctime)
                except (psutil.Error, OSError):
                    continue  # gone since the scan
                row.append(handle)
                if new:
                    fresh.append(handle)
            handles.append(row)
        return handles, fresh

    @staticmethod
    def _measure(
        row: Sequence[psutil.Process], with_cpu: frozenset[int], alive: set[_Key]
    ) -> TreeStats:
        """One tree's stats; ``with_cpu``: ids of the handles whose CPU% has an interval.
        Adds the members found alive to ``alive``."""
        cpu, rss, count, cpu_known = 0.0, 0, 0, False
        pids: list[int] = []
        for handle in row:
            try:
                with handle.oneshot():
                    if handle.status() == psutil.STATUS_ZOMBIE:
                        continue
                    if id(handle) in with_cpu:
                        cpu += handle.cpu_percent(None)
                        cpu_known = True
                    rss += handle.memory_info().rss
                    created = handle.create_time()
            except (psutil.Error, OSError):
                continue
            count += 1
            pids.append(handle.pid)
            alive.add(_key(handle.pid, created))
        return TreeStats(
            count=count,
            cpu_percent=cpu if cpu_known or count == 0 else None,
            rss=rss if count else None,
            ports=listening_ports(pids) if count else (),
        )

    def sample_many(
        self, members: Sequence[Sequence[ProcessInfo]], *, prime: float = 0.0
    ) -> list[TreeStats]:
        """Stats per tree, given each tree's members (see :func:`sample_trees`).
        ``prime``: seconds to wait for a first CPU reading of processes seen first now."""
        trees = [[_key(m.pid, m.create_time) for m in row] for row in members]
        with self._lock:
            handles, fresh = self._handles(trees)
            for handle in fresh:
                with contextlib.suppress(psutil.Error, OSError):
                    handle.cpu_percent(None)  # starts the interval
            if fresh and prime > 0:
                time.sleep(prime)
            fresh_ids = {id(h) for h in fresh}
            with_cpu = frozenset(
                id(h) for row in handles for h in row if prime > 0 or id(h) not in fresh_ids
            )
            alive: set[_Key] = set()
            result = [self._measure(row, with_cpu, alive) for row in handles]
            # forget processes that left every tree we looked at
            sampled = {key for row in trees for key in row}
            for key in sampled - alive:
                self._known.pop(key, None)
            if len(self._known) > _MAX_KNOWN:
                self._known.clear()
            return result


def _tree_or_empty(proc: TrackedProcess) -> list[ProcessInfo]:
    try:
        return proc.tree()
    except _SCAN_ERRORS as exc:
        log.debug("scan of the tree of %r failed: %s", proc.name, exc)
        return []


def sample_trees(
    sampler: TreeSampler, procs: Sequence[TrackedProcess], *, prime: float = 0.0
) -> list[TreeStats]:
    """Stats of several tracked trees from ONE process scan per Tracker (``trees()``).

    A process whose name now belongs to a newer launch (it was replaced) is looked up on
    its own: rare, since a replaced tree has been torn down."""
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
        members.append(found if found is not None else _tree_or_empty(proc))
    return sampler.sample_many(members, prime=prime)
