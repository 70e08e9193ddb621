"""The one place where widgets are refreshed: ONE thread per session.

Rules from design.md fact 8:
- the thread wakes at ``refresh_hz`` (at most 5 Hz) while output flows, updates only what
  changed, and a sliding one-second budget keeps the whole session under
  :data:`MESSAGE_BUDGET` widget messages per second, whatever the processes write;
- the resources of every shown tree are read at most once per :data:`STATS_INTERVAL`,
  for all widgets at once: the engine's newest metrics samples (``stats.py``);
- one broken widget never freezes the others: its failure is logged once, with its
  traceback, and the thread goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .config import MAX_REFRESH_HZ
from .stats import EMPTY_STATS, TreeStats
from .widget import MessageBudget, ProcessWidget

if TYPE_CHECKING:
    from ipyproctrack import TrackedProcess

__all__ = ["IDLE_TICK", "MAX_IDLE_TICK", "MESSAGE_BUDGET", "STATS_INTERVAL", "Refresher", "Sampler"]

log = logging.getLogger(__name__)

#: Widget messages the whole session may send in any one-second window (bound: 50).
#: Below the bound on purpose: on a loaded machine iopub delivers in bursts, which packs
#: more than one second of sends into one second of arrivals (measured: 49 arrived in one
#: second with a budget of 40, 12 widgets and 36 MB of output drained on 2 cores; and 49
#: with a budget of 35 and 16 flooders), hence 30.
MESSAGE_BUDGET = 30
#: Seconds between two reads of the trees' resources (the engine's samples, ports).
STATS_INTERVAL = 2.0
#: With nothing new to show, the refresher ticks this often, for the stats...
IDLE_TICK = 5.0
#: ... and, while its ticks keep finding nothing to send, ever less often, up to this:
#: every wake-up costs the kernel CPU, however little it finds to do.
MAX_IDLE_TICK = 20.0

#: Samples the trees of several processes at once: one stats entry per process.
Sampler = Callable[[Sequence["TrackedProcess"]], list[TreeStats]]


class _ReportOnce:
    """Logs the first failure of each source with its traceback, later ones at debug:
    a widget that fails on every tick must not flood the log."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def failed(self, source: object, what: str) -> None:
        """Call from an ``except`` block: ``what`` failed because of ``source``."""
        if id(source) in self._seen:
            log.debug("%s failed again", what, exc_info=True)
            return
        self._seen.add(id(source))
        log.exception("%s failed (reported once; the other widgets go on)", what)


class Refresher:
    """The single refresher thread of a session.

    ``sample`` gives the stats of several trees at once (``stats.sample_trees``); it is
    called at most once per :data:`STATS_INTERVAL`, for every widget that shows a tree.
    """

    def __init__(
        self, hz: Callable[[], float], sample: Sampler, budget: int = MESSAGE_BUDGET
    ) -> None:
        self._hz = hz
        self._sample = sample
        self.budget = MessageBudget(budget)
        self.output_sent = 0  # tail updates in the current tick: new output keeps the rate up
        self.deferred = False  # the budget cut the current tick short: tick again soon
        self.wake = threading.Event()  # set by the Tracker (on_change) and by widgets
        self._widgets: list[ProcessWidget] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report = _ReportOnce()

    @property
    def widgets(self) -> Sequence[ProcessWidget]:
        with self._lock:
            return list(self._widgets)

    def add(self, widget: ProcessWidget) -> None:
        self.wake.set()
        with self._lock:
            self._widgets.append(widget)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="ipyproctrack-widgets", daemon=True
                )
                self._thread.start()

    def release_replaced(self, name: str, proc: TrackedProcess) -> int:
        """``proc`` is the newest launch of ``name``: every other widget of that name is
        released (comms closed, process and tail dropped) and forgotten. Returns how many."""
        with self._lock:
            old = [w for w in self._widgets if w.spec.name == name and w.proc is not proc]
            self._widgets = [w for w in self._widgets if w not in old]
        for widget in old:
            try:
                widget.release(f"{widget.status_text()} (replaced by pid {proc.pid})")
            except Exception:  # the new launch runs on; a stale widget must not undo it
                self._report.failed(widget, f"releasing the widget of {name!r}")
        return len(old)

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread; True once it has ended (no tick of it can run any more)."""
        self._stop.set()
        self.wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        """Tick at refresh_hz (read every tick, so %config applies at once) while output
        flows. When a tick sent no output, sleep until the Tracker reports a change (output,
        an exit, readiness), a widget changes, or IDLE_TICK passes for the stats (doubling
        up to MAX_IDLE_TICK while nothing changes): every wake costs kernel CPU (a few ms
        on a VM, plus a sample of every tree), and an idle notebook should cost ~none."""
        last_tick = 0.0
        idle = False
        idle_tick = IDLE_TICK
        while True:
            period = 1.0 / max(0.1, min(self._hz(), MAX_REFRESH_HZ))
            if self._stop.wait(max(0.0, last_tick + period - time.monotonic())):
                return
            if idle:
                woken = self.wake.wait(max(0.0, idle_tick - period))
                if self._stop.is_set():
                    return
                # a quiet tick after a quiet wait: the next wait may be longer
                idle_tick = IDLE_TICK if woken else min(2 * idle_tick, MAX_IDLE_TICK)
            self.wake.clear()
            last_tick = time.monotonic()
            self.output_sent = 0
            self.deferred = False
            try:
                sent = self.tick()
            except Exception:  # the thread must outlive any bug: the next tick may work
                self._report.failed(self, "a widget refresh tick")
                sent = 0
            idle = not (self.output_sent or self.deferred)
            if sent:
                idle_tick = IDLE_TICK

    def _sample_due(self, widgets: Sequence[ProcessWidget], now: float, force: bool) -> None:
        """Stats for every shown tree at once, when any widget's are STATS_INTERVAL old:
        so all widgets stay in step and N widgets cost one call, not N."""
        targets = [(w, p) for w in widgets if (p := w.stats_target()) is not None]
        if not targets:
            return
        if not force and all(w.stats_age(now) < STATS_INTERVAL for w, _ in targets):
            return
        exited = [p.returncode is not None for _, p in targets]
        try:
            stats = self._sample([p for _, p in targets])
        except Exception:  # the widgets then show no numbers; their output still flows
            self._report.failed(self._sample, "sampling the process trees")
            stats = [EMPTY_STATS] * len(targets)
        for (widget, proc), st, ended in zip(targets, stats, exited, strict=True):
            widget.set_stats(proc, st, now, exited=ended)

    def tick(self, *, force_stats: bool = False, final: bool = False) -> int:
        """Push the changed parts of every widget, oldest-refreshed first, within budget.
        Returns how many parts it sent. Runs on the refresher thread only (or once that
        thread has stopped): the budget and the widgets' sent state are not shared.
        ``final``: the last tick of the session: no budget, no sampling."""
        now = time.monotonic()
        with self._lock:  # a settled widget stays listed: its Restart button revives it
            widgets = sorted((w for w in self._widgets if not w.settled),
                             key=lambda w: w.last_sent)
        if not final:
            self._sample_due(widgets, now, force_stats)
        sent = 0
        for widget in widgets:
            try:  # one broken widget must not starve the others
                parts = widget.pending(now)
            except Exception:
                self._report.failed(widget, f"rendering the widget of {widget.spec.name!r}")
                widget.last_sent = time.monotonic()  # to the back of the queue
                continue
            for part, value in parts:
                if not final and not self.budget.try_take(time.monotonic()):
                    self.deferred = True
                    return sent  # a widget cut short keeps its place at the front
                try:
                    widget.apply(part, value)
                except Exception:
                    self._report.failed(widget, f"sending the widget of {widget.spec.name!r}")
                    continue
                sent += 1
                if part == "tail":
                    self.output_sent += 1
            if parts:
                widget.last_sent = time.monotonic()
        return sent
