"""One live widget per tracked process, refreshed by one thread for the whole session.

Built from standard ipywidgets only (VBox, HBox, HTML, Button), so it renders in
JupyterLab, Notebook 7 and VS Code without a custom frontend.

Rules from design.md fact 8:
- never ``Output.append_stdout`` and never ``with output:`` from a thread: the tail is an
  ``HTML`` value holding a bounded ``<pre>``, replaced as a whole;
- ONE :class:`Refresher` thread per session wakes at ``refresh_hz`` (at most 5 Hz),
  updates only what changed, and a sliding one-second budget keeps the whole session
  under :data:`MESSAGE_BUDGET` widget messages per second, whatever the processes write.
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
    TreeSampler,
    TreeStats,
    badge_html,
    format_bytes,
    format_duration,
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
MESSAGE_BUDGET = 40
#: Seconds between two resource samples (psutil, ports) of one tree.
STATS_INTERVAL = 1.0


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

    @property
    def sampler(self) -> TreeSampler: ...

    def relaunch(self, spec: LaunchSpec) -> TrackedProcess: ...

    def stop_process(self, proc: TrackedProcess, grace: float | None) -> None: ...


class MessageBudget:
    """A sliding one-second window of sent widget messages."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._sent: collections.deque[float] = collections.deque()
        self.total = 0
        self.deferred = 0

    def try_take(self, now: float) -> bool:
        while self._sent and now - self._sent[0] >= 1.0:
            self._sent.popleft()
        if len(self._sent) >= self.per_second:
            self.deferred += 1
            return False
        self._sent.append(now)
        self.total += 1
        return True


def _process_view_class() -> type[ipywidgets.VBox]:
    import ipywidgets

    class ProcessView(ipywidgets.VBox):  # type: ignore[misc]
        """A VBox whose text form (nbconvert, terminals) is the status line."""

        status_text = ""

        def __repr__(self) -> str:
            return self.status_text or "ProcessView()"

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
        self.phase = "starting"  # starting | attached | failed | restarting | closed
        self.error = ""
        self.created = time.monotonic()
        self.last_sent = 0.0
        self.settled = False
        self._lock = threading.Lock()
        self._stats: TreeStats = EMPTY_STATS
        self._stats_at = -1e9
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
        self.view.status_text = f"{spec.name}: starting…"
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
            self._stats_at = -1e9
            self._tail_key = None
        self.view.status_text = status_line(proc, full=False)

    def fail(self, message: str) -> None:
        with self._lock:
            self.phase = "failed"
            self.error = message
            self.settled = False

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
                return  # still starting, already restarting, or closed
            self.phase = "restarting"
            self.settled = False
        threading.Thread(
            target=self._restart, name=f"ipyproctrack-restart-{self.spec.name}", daemon=True
        ).start()

    def _restart(self) -> None:
        try:
            proc = self.host.relaunch(self.spec)
        except Exception as exc:  # shown in the badge; a click must never raise
            self.fail(f"restart failed: {str(exc).splitlines()[0] if str(exc) else exc!r}")
            return
        self.attach(proc)

    # ------------------------------------------------------------------ rendering

    def _state(self, now: float) -> str:
        proc = self.proc
        if self.phase == "failed":
            return "failed"
        if self.phase == "restarting":
            return "restarting…"
        if proc is None:
            return f"starting… {format_duration(now - self.created)}"
        state = process_state(proc)
        if state == "starting":
            return "starting…"
        if state == "running" and getattr(proc, "ready_state", None) == "ready":
            seconds = getattr(proc, "ready_seconds", None)
            if seconds is not None:
                return f"running · ready in {seconds:.2f} s"
        return state

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
            parts.append(f"up {format_duration(time.time() - proc.started_at)}")
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

    def pending(self, now: float) -> list[tuple[str, Any]]:
        """What differs from what the frontend last got: [(part, value)]."""
        with self._lock:
            proc = self.proc
            if proc is not None and now - self._stats_at >= STATS_INTERVAL:
                if proc.returncode is None or self._stats.count:
                    try:
                        self._stats = self.host.sampler.sample(proc)
                    except Exception:
                        self._stats = EMPTY_STATS
                else:
                    self._stats = EMPTY_STATS
                self._stats_at = now
            wanted = {
                "header": self._header_html(now),
                "tail": self._tail_html(),
                "stop_disabled": proc is None
                or (proc.returncode is not None and self._stats.count == 0)
                or self.phase != "attached",
            }
            if proc is not None:
                self.view.status_text = status_line(proc, full=False)
        out = [(k, v) for k, v in wanted.items() if self._sent.get(k) != v]
        if (
            not out
            and proc is not None
            and proc.returncode is not None
            and self._stats.count == 0
            and self.phase == "attached"
        ):
            self.settled = True
        if not out and self.phase == "failed":
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

    def close(self) -> None:
        """Remove the widget from the frontend (its comms close)."""
        self.phase = "closed"
        row = self.view.children[0] if self.view.children else None
        for widget in (self.header, self.stop_button, self.restart_button, self.tail, row):
            if widget is not None:
                with contextlib.suppress(Exception):
                    widget.close()
        with contextlib.suppress(Exception):
            self.view.close()


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Refresher:
    """The single refresher thread of a session."""

    def __init__(self, hz: Callable[[], float], budget: int = MESSAGE_BUDGET) -> None:
        self._hz = hz
        self.budget = MessageBudget(budget)
        self._widgets: list[ProcessWidget] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    @property
    def widgets(self) -> Sequence[ProcessWidget]:
        with self._lock:
            return list(self._widgets)

    def add(self, widget: ProcessWidget) -> None:
        with self._lock:
            self._widgets.append(widget)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="ipyproctrack-widgets", daemon=True
                )
                self._thread.start()

    def remove(self, widget: ProcessWidget) -> None:
        with self._lock:
            if widget in self._widgets:
                self._widgets.remove(widget)

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        """Tick at refresh_hz (read every tick, so %config applies at once). A tick that
        sends nothing doubles the pause, up to 1 s: every wake costs CPU in the kernel
        (about a millisecond on a VM), and an idle widget only changes once a second."""
        last_tick = 0.0
        idle = 0
        while True:
            period = 1.0 / max(0.1, min(self._hz(), 5.0))
            period = min(max(period, 1.0), period * 2**idle)
            if self._stop.wait(max(0.0, last_tick + period - time.monotonic())):
                return
            last_tick = time.monotonic()
            sent = 0
            with contextlib.suppress(Exception):  # survive anything a widget does
                sent = self.tick()
            idle = 0 if sent else min(idle + 1, 4)

    def tick(self) -> int:
        """Push the changed parts of every widget, oldest-refreshed first, within budget.
        Returns how many parts it sent."""
        self.ticks += 1
        now = time.monotonic()
        with self._lock:
            self._widgets = [w for w in self._widgets if w.phase != "closed"]
            widgets = sorted(
                (w for w in self._widgets if not w.settled and w.phase != "closed"),
                key=lambda w: w.last_sent,
            )
        sent = 0
        for widget in widgets:
            try:  # one broken widget must not starve the others
                parts = widget.pending(now)
            except Exception:
                widget.last_sent = time.monotonic()  # to the back of the queue
                continue
            for part, value in parts:
                if not self.budget.try_take(time.monotonic()):
                    return sent
                try:
                    widget.apply(part, value)
                except Exception:
                    continue
                sent += 1
                widget.last_sent = time.monotonic()
        return sent
