"""Per-tree resource time series: one sampler thread per Tracker, one process scan a tick.

Every ``interval`` seconds the sampler reads each known member's CPU seconds and RSS
(Linux: one read of ``/proc/<pid>/stat``; elsewhere psutil). Who the members are comes
from one scan of every process (``scan_processes``, the scan the teardown uses) for all
trees at once: for a new tree, when a tree's known members are all gone, and every
:data:`FULL_SCAN_EVERY` ticks, because a scan costs far more than the reads (it reads
every process of the machine). A tree's CPU% is the CPU time its members used since its
previous sample over the wall time between the two, so a tree of four busy processes
reads 400%; a member found late counts the share of its CPU time that falls in the
interval (its CPU spread evenly over its life), never a spike. The samples go to a bounded
ring per launch (``MetricsSeries``), kept after the exit and then written, once, as
``<log stem>.metrics.csv`` beside the log (mode 0600, never through a symlink).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .. import _platform as plat
from .._proc import procfs
from .._proc.discovery import Target, discover, protected_pids
from .._proc.identity import same_process
from .._proc.scan import scan_processes

__all__ = ["MetricsSample", "MetricsSampler", "MetricsSeries", "metrics_frame"]

log = logging.getLogger(__name__)

#: What ``metrics_frame()`` says when pandas is missing.
PANDAS_HINT = "metrics_frame() needs pandas: pip install 'ipyproctrack[examples]'"
#: Born this long before a tree's previous sample still counts as born after it (the
#: create time has clock-tick resolution).
_BIRTH_SLACK = 0.05
#: Ticks between two membership scans (new trees and emptied ones are scanned at once).
FULL_SCAN_EVERY = 5

_Key = tuple[int, float]
_Usage = Callable[[int], "tuple[float, int, float] | None"]


class MetricsSample(NamedTuple):
    """One sample of a whole tracked tree."""

    t: float  #: seconds since the launch
    cpu_percent: float  #: the whole tree, in percent of one core
    rss: int  #: the whole tree's resident memory, bytes
    processes: int  #: live processes in the tree


FIELDS = MetricsSample._fields


def _psutil_usage(pid: int) -> tuple[float, int, float] | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            return cpu.user + cpu.system, int(proc.memory_info().rss), proc.create_time()
    except (psutil.Error, OSError):
        return None


#: (CPU seconds, RSS bytes, create time) of one pid, or None when it is gone.
usage: _Usage = procfs.read_usage if plat.HAS_PROCFS else _psutil_usage


class MetricsSeries:
    """The samples of one launch, oldest first, in a ring of ``capacity``."""

    def __init__(self, capacity: int, *, create_time: float, csv_path: Path | None,
                 interval: float = 0.0) -> None:
        self.started = time.monotonic()
        self.csv_path = csv_path
        self.interval = interval  # 0: this launch is not sampled
        self.finished = threading.Event()  # the tree is gone; the CSV is written
        self._ring: deque[MetricsSample] = deque(maxlen=max(1, capacity))
        self._lock = threading.Lock()
        # The previous sample's monotonic time, for CPU deltas; the first one measures
        # from the launch, so the root's first CPU seconds count.
        self.prev = self.started
        # The members (pid, create time) as last seen; None: unknown, scan for them.
        self.members: list[tuple[int, float]] | None = None
        # Wall time of the membership scan before: a member born since is new.
        self.scanned = create_time - _BIRTH_SLACK if create_time else 0.0

    def samples(self) -> list[MetricsSample]:
        with self._lock:
            return list(self._ring)

    def append(self, sample: MetricsSample) -> None:
        with self._lock:
            self._ring.append(sample)

    def latest(self) -> tuple[MetricsSample, float] | None:
        """The newest sample and its age in seconds, or None before the first one."""
        with self._lock:
            if not self._ring:
                return None
            sample = self._ring[-1]
        return sample, time.monotonic() - self.started - sample.t

    def finish(self) -> None:
        """Write the CSV (once); the series keeps its samples."""
        if self.finished.is_set():
            return
        try:
            if self.csv_path is not None:
                write_csv(self.csv_path, self.samples())
        except OSError as exc:  # the samples stay in memory; the file is a convenience
            log.warning("cannot write the metrics to %s: %s", self.csv_path, exc)
        finally:
            self.finished.set()


def write_csv(path: Path, samples: Sequence[MetricsSample]) -> None:
    """``t,cpu_percent,rss,processes`` rows; 0600 and never through a symlink: logs are
    private."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for s in samples:
        writer.writerow((f"{s.t:.3f}", f"{s.cpu_percent:.1f}", s.rss, s.processes))
    flags = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(path, flags, 0o600)
    with open(fd, "w", encoding="utf-8", closefd=True) as f:
        f.write(buf.getvalue())


def metrics_frame(samples: Sequence[MetricsSample]) -> Any:
    """The samples as a pandas DataFrame (columns t, cpu_percent, rss, processes)."""
    try:
        import pandas
    except ImportError:
        raise ImportError(PANDAS_HINT) from None
    return pandas.DataFrame.from_records(samples, columns=FIELDS)


class Sampled(Protocol):
    """What the sampler needs of a tracked process."""

    @property
    def name(self) -> str: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def metrics_series(self) -> MetricsSeries: ...
    def _target(self) -> Target: ...


class MetricsSampler:
    """The one sampler thread of a Tracker. ``interval`` None or 0: no sampling."""

    def __init__(self, interval: float | None, keep: float) -> None:
        if interval is not None and not (math.isfinite(interval) and interval >= 0):
            raise ValueError(f"metrics_interval must be None or seconds >= 0, not {interval}")
        self.interval = interval or 0.0
        self.capacity = int(keep / self.interval) + 1 if self.interval else 0
        self.cpu_seconds = 0.0  # this thread's own CPU time: what the sampling costs
        self.ticks = 0
        self.scans = 0
        self._since_scan = 0
        self._procs: list[Sampled] = []
        self._cpu: dict[_Key, float] = {}  # CPU seconds of each member at the last tick
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._protected: set[int] | None = None

    def series_for(self, create_time: float, log_path: Path) -> MetricsSeries:
        csv_path = log_path.with_suffix(".metrics.csv") if self.interval else None
        return MetricsSeries(self.capacity, create_time=create_time, csv_path=csv_path,
                             interval=self.interval)

    def track(self, proc: Sampled) -> None:
        """Sample ``proc``'s tree from now on, until it is gone (starts the thread)."""
        if not self.interval:
            proc.metrics_series.finished.set()
            return
        with self._lock:
            if self._stop.is_set():
                return
            self._procs.append(proc)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="ipyproctrack-metrics")
                self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread after one last tick; write every remaining CSV. Never raises."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._since_scan = FULL_SCAN_EVERY  # the last tick sees who is left
            self._tick_reporting()
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            proc.metrics_series.finish()

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self._tick_reporting()
            now = time.monotonic()
            next_at += self.interval
            if next_at < now:  # overrun (a suspended machine): skip, never burst
                next_at = now + self.interval

    def _tick_reporting(self) -> None:
        started = time.thread_time()
        try:
            self.tick()
        except Exception:  # a failed tick loses one sample; the next one tries again
            log.exception("metrics sampling failed")
        self.cpu_seconds += time.thread_time() - started
        self.ticks += 1

    def tick(self) -> None:
        """One sample of every tracked tree that is not gone."""
        with self._lock:
            self._procs = [p for p in self._procs if not p.metrics_series.finished.is_set()]
            procs = list(self._procs)
        if not procs:
            return
        self._since_scan += 1
        scan = (self._since_scan >= FULL_SCAN_EVERY
                or any(p.metrics_series.members is None for p in procs))
        if scan:
            self._scan_members(procs)
        cpu: dict[_Key, float] = {}
        for proc in procs:
            self._sample(proc, cpu, scanned=scan)
        self._cpu = cpu
        if scan:
            wall = time.time()
            for proc in procs:
                proc.metrics_series.scanned = wall

    def _scan_members(self, procs: Sequence[Sampled]) -> None:
        """Every tree's members, from one scan of all processes."""
        self._since_scan = 0
        self.scans += 1
        if self._protected is None:
            self._protected = protected_pids()
        targets = [p._target() for p in procs]
        helpers = {h.pid for t in targets for h in t.helpers}
        found = discover(targets, scan_processes(with_tags=True),
                         exclude=self._protected | helpers)
        members: dict[int, list[tuple[int, float]]] = {id(t): [] for t in targets}
        for pid, (target, rec, _) in found.items():
            members[id(target)].append((pid, rec.create_time))
        for proc, target in zip(procs, targets, strict=True):
            proc.metrics_series.members = members[id(target)]

    def _sample(self, proc: Sampled, cpu: dict[_Key, float], *, scanned: bool) -> None:
        series = proc.metrics_series
        now = time.monotonic()
        elapsed = now - series.prev
        if not series.members:
            if not scanned:
                series.members = None  # all gone? the next tick's scan tells
            elif proc.returncode is not None:  # gone for good: a last, empty sample
                series.append(MetricsSample(round(now - series.started, 3), 0.0, 0, 0))
                series.finish()
            return  # else the root just exited; its exit is reported soon
        if elapsed < self.interval / 2:
            return  # launched just before this tick: its first sample comes with the next
        wall = time.time()
        used, rss = 0.0, 0
        alive: list[tuple[int, float]] = []
        for pid, ctime in series.members:
            found = usage(pid)
            if found is None or not same_process(found[2], ctime):
                continue  # gone since the scan
            key = (pid, round(ctime, 2))
            before = self._cpu.get(key)
            if before is not None:
                used += max(0.0, found[0] - before)
            elif ctime >= series.scanned:  # born since the scan before: its share
                used += found[0] * min(1.0, elapsed / max(wall - ctime, elapsed))
            cpu[key] = found[0]
            rss += found[1]
            alive.append((pid, ctime))
        series.members = alive
        if not alive:
            series.members = None
            return
        percent = 100.0 * used / elapsed if elapsed > 0 else 0.0
        series.append(MetricsSample(round(now - series.started, 3), round(percent, 1),
                                    rss, len(alive)))
        series.prev = now
