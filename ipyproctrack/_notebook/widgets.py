"""One live widget per tracked process, refreshed by one thread for the whole session.

Built from standard ipywidgets only (VBox, HBox, HTML, Button), so it renders in
JupyterLab, Notebook 7 and VS Code without a custom frontend.

Rules from design.md fact 8:
- never ``Output.append_stdout`` and never ``with output:`` from a thread: the tail is an
  ``HTML`` value holding a bounded ``<pre>``, replaced as a whole;
- ONE :class:`Refresher` thread per session wakes at ``refresh_hz`` (at most 5 Hz),
  updates only what changed, and a sliding one-second budget keeps the whole session
  under :data:`MESSAGE_BUDGET` widget messages per second, whatever the processes write;
- the resources of every shown tree come from ONE process scan per
  :data:`STATS_INTERVAL` (``Tracker.trees()``), however many widgets there are.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import html
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .render import (
    EMPTY_STATS,
    TreeStats,
    badge_html,
    format_bytes,
    format_clock,
    process_state,
    status_line,
    tail_html,
)

if TYPE_CHECKING:
    import ipywidgets
    from IPython.core.interactiveshell import InteractiveShell

    from ipyproctrack import TrackedProcess

    from .config import ProcTrackConfig

__all__ = [
    "MESSAGE_BUDGET",
    "LaunchSpec",
    "ProcessWidget",
    "Refresher",
    "WidgetHost",
    "has_widget_frontend",
]

#: Widget messages the whole session may send in any one-second window (bound: 50).
#: Below the bound on purpose: on a loaded machine iopub delivers in bursts, which packs
#: more than one second of sends into one second of arrivals (measured: 49 arrived in one
#: second with a budget of 40, 12 widgets and 36 MB of output drained on 2 cores; and 49
#: with a budget of 35 and 16 flooders), hence 30.
MESSAGE_BUDGET = 30
#: Seconds between two resource samples (one process scan, psutil, ports) of the trees.
STATS_INTERVAL = 2.0
# With nothing new to show, the refresher ticks this often, for the clocks and the stats.
IDLE_TICK = 5.0

#: Samples the trees of several processes at once: one stats entry per process.
Sampler = Callable[[Sequence["TrackedProcess"]], list[TreeStats]]


def has_widget_frontend(shell: InteractiveShell | None) -> bool:
    """The one seam that decides widget or text (like tqdm.auto): decided once per load.

    True when the shell runs inside an ipykernel (it has a ``kernel`` with comms) and
    ipywidgets imports. Terminal IPython and plain ``InteractiveShell`` get text.
    """
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    if "ipykernel" not in sys.modules:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class LaunchSpec:
    """Everything needed to start (and restart) one tracked command."""

    command: str | list[str]
    name: str
    cwd: str | None = None
    env: dict[str, str] | None = None
    grace: float | None = None
    ready: list[Any] = field(default_factory=list)
    ready_timeout: float = 30.0
    #: builds fresh readiness checks for a restart (checks keep per-launch state)
    make_ready: Callable[[], list[Any]] | None = None

    def describe_ready(self) -> str:
        return ", ".join(
            r.describe() if callable(getattr(r, "describe", None)) else str(r) for r in self.ready
        )

    def for_restart(self) -> LaunchSpec:
        """The same launch with fresh readiness checks."""
        ready = self.make_ready() if self.make_ready is not None else list(self.ready)
        return dataclasses.replace(self, ready=ready)


class WidgetHost(Protocol):
    """What a widget needs from the notebook session."""

    @property
    def config(self) -> ProcTrackConfig: ...

    def relaunch(
        self, spec: LaunchSpec, *, on_launched: Callable[[TrackedProcess], None] | None = None
    ) -> TrackedProcess: ...

    def stop_process(self, proc: TrackedProcess, grace: float | None) -> None: ...

    def wake(self) -> None:
        """Something changed: let the refresher tick now instead of at its idle pace."""


class MessageBudget:
    """A sliding one-second window of sent widget messages."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._sent: collections.deque[float] = collections.deque()
        self.deferred = 0

    def try_take(self, now: float) -> bool:
        while self._sent and now - self._sent[0] >= 1.0:
            self._sent.popleft()
        if len(self._sent) >= self.per_second:
            self.deferred += 1
            return False
        self._sent.append(now)
        return True


def _process_view_class() -> type[ipywidgets.VBox]:
    import ipywidgets

    class ProcessView(ipywidgets.VBox):  # type: ignore[misc]
        """A VBox whose text form (nbconvert, terminals) is the status line, as it is at
        the moment the frontend is sent the display (or its update)."""

        status: Callable[[], str] | None = None

        def __repr__(self) -> str:
            return self.status() if self.status is not None else "ProcessView()"

    return ProcessView


_VIEW_CLASS: type[ipywidgets.VBox] | None = None


class ProcessWidget:
    """The widget of one tracked process (or of a launch that is still getting ready)."""

    def __init__(self, host: WidgetHost, spec: LaunchSpec) -> None:
        global _VIEW_CLASS
        import ipywidgets

        if _VIEW_CLASS is None:
            _VIEW_CLASS = _process_view_class()
        self.host = host
        self.spec = spec
        self.proc: TrackedProcess | None = None
        self.phase = "starting"  # starting | attached | failed | restarting
        self.error = ""
        self.created = time.monotonic()
        self.last_sent = 0.0
        self.settled = False
        self._lock = threading.Lock()
        self._stats: TreeStats = EMPTY_STATS
        self._stats_at = -1e9
        self._stats_state: tuple[object, ...] = ()
        self._tree_gone = False  # a sample taken after the root exited found no process
        self._tail_key: tuple[int, int] | None = None
        self._tail_value = ""

        self.header = ipywidgets.HTML(value=self._header_html(time.monotonic()))
        self.stop_button = ipywidgets.Button(
            description="Stop", icon="stop", tooltip="phased teardown of the whole tree",
            layout=ipywidgets.Layout(width="auto"), disabled=True,
        )
        self.restart_button = ipywidgets.Button(
            description="Restart", icon="refresh", tooltip="stop the tree and start it again",
            layout=ipywidgets.Layout(width="auto"),
        )
        self.tail = ipywidgets.HTML(value=self._wrap_tail(""))
        self.stop_button.on_click(self._on_stop)
        self.restart_button.on_click(self._on_restart)
        row = ipywidgets.HBox(
            [self.header, self.stop_button, self.restart_button],
            layout=ipywidgets.Layout(align_items="center"),
        )
        self.view = _VIEW_CLASS([row, self.tail])
        self.view.status = self.status_text
        self._sent: dict[str, Any] = {
            "header": self.header.value,
            "tail": self.tail.value,
            "stop_disabled": True,
        }

    # ------------------------------------------------------------------ state changes

    def attach(self, proc: TrackedProcess) -> None:
        with self._lock:
            self.proc = proc
            self.phase = "attached"
            self.error = ""
            self.settled = False
            self._stats = EMPTY_STATS
            self._stats_at = -1e9
            self._tree_gone = False
            self._tail_key = None
        self.host.wake()

    def fail(self, message: str) -> None:
        """Show a failed launch; a process it did start keeps its pid, tail and end."""
        with self._lock:
            self.phase = "failed"
            self.error = message
            self.settled = False
        self.host.wake()

    def _on_stop(self, _button: Any) -> None:
        proc = self.proc
        if proc is None:
            return
        threading.Thread(
            target=self.host.stop_process, args=(proc, self.spec.grace),
            name=f"ipyproctrack-stop-{self.spec.name}", daemon=True,
        ).start()

    def _on_restart(self, _button: Any) -> None:
        with self._lock:
            if self.phase not in ("attached", "failed"):
                return  # still starting, or already restarting
            self.phase = "restarting"
            self.settled = False
        self.host.wake()
        threading.Thread(
            target=self._restart, name=f"ipyproctrack-restart-{self.spec.name}", daemon=True
        ).start()

    def _restart(self) -> None:
        try:  # attached once the process exists: live while a readiness check waits
            proc = self.host.relaunch(self.spec, on_launched=self.attach)
        except Exception as exc:  # shown in the badge; a click must never raise
            self.fail(f"restart failed: {str(exc).splitlines()[0] if str(exc) else exc!r}")
            return
        if self.proc is not proc:
            self.attach(proc)

    # ------------------------------------------------------------------ rendering

    def status_text(self) -> str:
        """The plain one-line form: ``web: pid 12 running; ready in 0.42 s``."""
        if self.phase == "failed":
            return f"{self.spec.name}: failed: {self.error}"
        proc = self.proc
        if proc is None or self.phase == "restarting":
            return f"{self.spec.name}: {'restarting' if proc else 'starting'}…"
        return status_line(proc, full=False)

    def _state(self, now: float) -> str:
        proc = self.proc
        if self.phase == "failed":
            return "failed"
        if self.phase == "restarting":
            return "restarting…"
        if proc is None:
            return f"starting… {format_clock(now - self.created)}"
        return process_state(proc)

    def _header_html(self, now: float) -> str:
        proc = self.proc
        name = html.escape(self.spec.name)
        state = self._state(now)
        parts = [f"<b>{name}</b>"]
        if proc is not None:
            parts.append(f"pid {proc.pid}")
        parts.append(badge_html(state))
        st = self._stats
        if proc is not None and (proc.returncode is None or st.count):
            parts.append(f"up {format_clock(time.time() - proc.started_at)}")
        if st.count:
            parts.append(f"{st.count} proc{'s' if st.count != 1 else ''}")
            parts.append(f"CPU {st.cpu_text()}")
            parts.append(f"RSS {format_bytes(st.rss)}")
            parts.append(f"ports {html.escape(st.ports_text())}")
        line = " · ".join(parts)
        sub = ""
        if self.phase == "failed" and self.error:
            sub = f'<div style="color:#c62828">{html.escape(self.error)}</div>'
        elif proc is not None:
            sub = (
                f'<div style="font-size:80%;opacity:0.7">{html.escape(_short(proc.command))}'
                f" · log <code>{html.escape(str(proc.log_path))}</code></div>"
            )
        elif self.spec.ready:
            sub = (
                f'<div style="font-size:80%;opacity:0.7">waiting for '
                f"{html.escape(self.spec.describe_ready())}</div>"
            )
        return f'<div style="line-height:1.5">{line}{sub}</div>'

    def _wrap_tail(self, inner: str) -> str:
        if not inner:
            inner = '<span style="opacity:0.5">(no output yet)</span>'
        # column-reverse keeps the view scrolled to the newest line
        return (
            '<div style="max-height:18em;overflow-y:auto;display:flex;'
            'flex-direction:column-reverse;border:1px solid rgba(128,128,128,0.3)">'
            '<pre style="margin:0;padding:4px 6px;white-space:pre-wrap;word-break:break-all;'
            f'font-size:85%">{inner}</pre></div>'
        )

    def _tail_html(self) -> str:
        proc = self.proc
        if proc is None:
            return self._sent["tail"] if self._tail_key is None else self._tail_value
        key = (id(proc), proc.output_version)
        if key != self._tail_key:
            lines = self.host.config.tail_lines
            try:
                chunks = proc.tail_chunks(lines)
            except Exception:
                chunks = []
            self._tail_value = self._wrap_tail(tail_html(chunks))
            self._tail_key = key
        return self._tail_value

    # ------------------------------------------------------------------ refreshing

    def stats_target(self) -> TrackedProcess | None:
        """The process whose tree still needs sampling (None once it is gone for good)."""
        with self._lock:
            proc = self.proc
            if proc is None or (proc.returncode is not None and self._tree_gone):
                return None
            return proc

    def stats_age(self, now: float) -> float:
        """Seconds since the last sample; infinite once the process changed state since
        (became ready, exited): the header then shows its new ports and counts at once."""
        proc = self.proc
        if proc is not None and _state_key(proc) != self._stats_state:
            return float("inf")
        return now - self._stats_at

    def set_stats(self, proc: TrackedProcess, stats: TreeStats, now: float, *,
                  exited: bool) -> None:
        """A sample of ``proc``'s tree; ``exited``: the root had exited before it was taken."""
        with self._lock:
            if proc is not self.proc:
                return  # restarted meanwhile
            self._stats = stats
            self._stats_at = now
            self._stats_state = _state_key(proc)
            if exited and stats.count == 0:
                self._tree_gone = True

    def pending(self, now: float) -> list[tuple[str, Any]]:
        """What differs from what the frontend last got: [(part, value)]."""
        with self._lock:
            proc = self.proc
            # read before the tail is built: once True, that tail holds the last bytes
            drained = proc is not None and proc.output_done
            finished = (
                proc is not None and proc.returncode is not None and self._tree_gone
            )
            wanted = {
                "header": self._header_html(now),
                "tail": self._tail_html(),
                "stop_disabled": proc is None or finished or self.phase != "attached",
            }
        out = [(k, v) for k, v in wanted.items() if self._sent.get(k) != v]
        # settled once the end is shown: return code, an empty tree and every last line
        ended = (proc is None and self.phase == "failed") or (finished and drained)
        if not out and ended and self.phase in ("attached", "failed"):
            self.settled = True
        return out

    def apply(self, part: str, value: Any) -> None:
        if part == "header":
            self.header.value = value
        elif part == "tail":
            self.tail.value = value
        elif part == "stop_disabled":
            self.stop_button.disabled = value
        self._sent[part] = value


def _state_key(proc: TrackedProcess) -> tuple[object, ...]:
    return (proc.state,)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Refresher:
    """The single refresher thread of a session.

    ``sample`` measures several trees at once (one process scan for all of them); it is
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
        an exit, readiness), a widget changes, or IDLE_TICK passes for the clocks: every
        wake costs kernel CPU (a few ms on a VM), and an idle notebook should cost ~none."""
        last_tick = 0.0
        idle = False
        while True:
            period = 1.0 / max(0.1, min(self._hz(), 5.0))
            if self._stop.wait(max(0.0, last_tick + period - time.monotonic())):
                return
            if idle:
                self.wake.wait(max(0.0, IDLE_TICK - period))
                if self._stop.is_set():
                    return
            self.wake.clear()
            last_tick = time.monotonic()
            self.output_sent = 0
            self.deferred = False
            with contextlib.suppress(Exception):  # survive anything a widget does
                self.tick()
            idle = not (self.output_sent or self.deferred)

    def _sample_due(self, widgets: Sequence[ProcessWidget], now: float, force: bool) -> None:
        """One scan for every shown tree, once any widget's sample is STATS_INTERVAL old:
        so all widgets' samples stay in step and N widgets cost one scan, not N."""
        targets = [(w, p) for w in widgets if (p := w.stats_target()) is not None]
        if not targets:
            return
        if not force and all(w.stats_age(now) < STATS_INTERVAL for w, _ in targets):
            return
        exited = [p.returncode is not None for _, p in targets]
        try:
            stats = self._sample([p for _, p in targets])
        except Exception:
            stats = [EMPTY_STATS] * len(targets)
        for (widget, proc), st, ended in zip(targets, stats, exited, strict=True):
            widget.set_stats(proc, st, now, exited=ended)

    def tick(self, *, force_stats: bool = False) -> int:
        """Push the changed parts of every widget, oldest-refreshed first, within budget.
        Returns how many parts it sent. Runs on the refresher thread only (or once that
        thread has stopped): the budget and the widgets' sent state are not shared."""
        now = time.monotonic()
        with self._lock:  # a settled widget stays listed: its Restart button revives it
            widgets = sorted((w for w in self._widgets if not w.settled),
                             key=lambda w: w.last_sent)
        self._sample_due(widgets, now, force_stats)
        sent = 0
        for widget in widgets:
            try:  # one broken widget must not starve the others
                parts = widget.pending(now)
            except Exception:
                widget.last_sent = time.monotonic()  # to the back of the queue
                continue
            for part, value in parts:
                if not self.budget.try_take(time.monotonic()):
                    self.deferred = True
                    return sent  # a widget cut short keeps its place at the front
                try:
                    widget.apply(part, value)
                except Exception:
                    continue
                sent += 1
                if part == "tail":
                    self.output_sent += 1
            if parts:
                widget.last_sent = time.monotonic()
        return sent
