"""One live widget per tracked process (the :class:`Refresher` pushes its changes).

Built from standard ipywidgets only (VBox, HBox, HTML, Button), so it renders in
JupyterLab, Notebook 7 and VS Code without a custom frontend.

Rules from design.md fact 8: never ``Output.append_stdout`` and never ``with output:``
from a thread. The tail is an ``HTML`` value holding a bounded ``<pre>``, replaced as a
whole, and only the refresher thread sets values (:meth:`ProcessWidget.apply`).
"""

from __future__ import annotations

import collections
import enum
import functools
import html
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ipyproctrack._engine.state import Phase, ProcessState
from ipyproctrack.errors import ProcTrackError

from .engines import is_engine
from .links import port_url, ports_html
from .sparkline import sparklines_html
from .stats import EMPTY_STATS, TreeStats
from .views import (
    ERROR_COLOR,
    badge_html,
    command_summary,
    detail_line_html,
    first_line,
    format_bytes,
    format_clock,
    format_start,
    status_line,
    tail_box_html,
    tail_html,
)

if TYPE_CHECKING:
    import ipywidgets
    from IPython.core.interactiveshell import InteractiveShell

    from ipyproctrack import TrackedProcess

    from .config import ProcTrackConfig
    from .spec import LaunchSpec

__all__ = ["MessageBudget", "ProcessWidget", "WidgetHost", "WidgetPhase", "has_widget_frontend"]

log = logging.getLogger(__name__)

_STARTING = ProcessState(Phase.STARTING)


def has_widget_frontend(shell: InteractiveShell | None) -> bool:
    """The one seam that decides widget or text (like tqdm.auto): decided once per load.

    True when the shell runs inside an ipykernel (it has a ``kernel`` with comms) and
    ipywidgets imports. Terminal IPython, plain ``InteractiveShell`` and ipyparallel
    engines (``%px`` relays no comm messages) get text.
    """
    if shell is None or getattr(shell, "kernel", None) is None or is_engine(shell):
        return False
    if "ipykernel" not in sys.modules:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


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

    def submit(self, job: Callable[[], object], what: str) -> bool:
        """Run a click's ``job`` on the session's one button worker."""


class _DetachedHost:
    """The host of a widget whose session closed (``%unload_ext``): the widget keeps its
    final state on the page, but no longer holds the session and, through it, the shell.
    Its clicks are gone; a copy of the settings (without the shell as parent) remains."""

    def __init__(self, config: ProcTrackConfig) -> None:
        from .config import ProcTrackConfig

        self.config = ProcTrackConfig(
            **{name: getattr(config, name) for name in config.trait_names(config=True)})

    def relaunch(
        self, spec: LaunchSpec, *, on_launched: Callable[[TrackedProcess], None] | None = None
    ) -> TrackedProcess:
        raise ProcTrackError("ipyproctrack was unloaded")

    def stop_process(self, proc: TrackedProcess, grace: float | None) -> None:
        return None

    def wake(self) -> None:
        return None

    def submit(self, job: Callable[[], object], what: str) -> bool:
        return False


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


class WidgetPhase(enum.StrEnum):
    """Where the widget is; the process (once attached) has its own ``ProcessState``."""

    STARTING = "starting"  # no process yet
    ATTACHED = "attached"  # shows its process
    FAILED = "failed"  # the launch failed (a process it did start keeps its pid and tail)
    RESTARTING = "restarting"  # the Restart button was clicked; no new process yet
    RELEASED = "released"  # replaced by a newer launch of its name: closed, holds nothing


@functools.cache
def _process_view_class() -> type[ipywidgets.VBox]:
    import ipywidgets

    class ProcessView(ipywidgets.VBox):  # type: ignore[misc]
        """A VBox whose text form (nbconvert, terminals) is the status line, as it is at
        the moment the frontend is sent the display (or its update)."""

        status: Callable[[], str] | None = None

        def __repr__(self) -> str:
            return self.status() if self.status is not None else "ProcessView()"

    return ProcessView


class ProcessWidget:
    """The widget of one tracked process (or of a launch that is still getting ready)."""

    def __init__(self, host: WidgetHost, spec: LaunchSpec) -> None:
        import ipywidgets

        self.host = host
        self.spec = spec
        self.proc: TrackedProcess | None = None
        self.phase = WidgetPhase.STARTING
        self.error = ""
        self.created = time.monotonic()
        self.last_sent = 0.0
        self.settled = False
        self._lock = threading.Lock()
        self._stats: TreeStats = EMPTY_STATS
        self._stats_at = -1e9
        self._stats_state: ProcessState | None = None
        self._tree_gone = False  # a sample taken after the root exited found no process
        self._tail_key: tuple[int, int] | None = None
        self._tail_value = ""
        self.ended = ""  # why the kernel ended: the final state, buttons disabled
        self.handle: Any = None  # the display handle, for the text left behind on release

        # The header takes the room the buttons leave and cuts its own lines (ellipsis);
        # the buttons never shrink. The CSS classes name the parts (tests, user styles).
        self.header = ipywidgets.HTML(
            value=self._header_html(time.monotonic()),
            layout=ipywidgets.Layout(flex="1 1 auto", min_width="0", overflow="hidden"),
        )
        button_layout = {"width": "auto", "flex": "0 0 auto"}
        self.stop_button = ipywidgets.Button(
            description="Stop", icon="stop", tooltip="phased teardown of the whole tree",
            layout=ipywidgets.Layout(**button_layout), disabled=True,
        )
        self.restart_button = ipywidgets.Button(
            description="Restart", icon="refresh", tooltip="stop the tree and start it again",
            layout=ipywidgets.Layout(**button_layout),
        )
        self.tail = ipywidgets.HTML(value=tail_box_html(""))
        self.stop_button.on_click(self._on_stop)
        self.restart_button.on_click(self._on_restart)
        row = ipywidgets.HBox(
            [self.header, self.stop_button, self.restart_button],
            layout=ipywidgets.Layout(align_items="center"),
        )
        for part, name in ((self.header, "header"), (self.stop_button, "stop"),
                           (self.restart_button, "restart"), (self.tail, "tail")):
            part.add_class(f"ipyproctrack-{name}")
        self.view = _process_view_class()([row, self.tail])
        self.view.status = self.status_text
        self.view.add_class("ipyproctrack-widget")
        self._sent: dict[str, Any] = {
            "header": self.header.value,
            "tail": self.tail.value,
            "stop_disabled": True,
            "restart_disabled": False,
        }

    # ------------------------------------------------------------------ state changes

    def attach(self, proc: TrackedProcess) -> None:
        with self._lock:
            if self.phase is WidgetPhase.RELEASED:
                return
            self.proc = proc
            self.phase = WidgetPhase.ATTACHED
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
            if self.phase is WidgetPhase.RELEASED:
                return
            self.phase = WidgetPhase.FAILED
            self.error = message
            self.settled = False
        self.host.wake()

    def end(self, reason: str) -> None:
        """The kernel is ending: show ``stopped: reason`` with every button disabled."""
        with self._lock:
            if self.phase is WidgetPhase.RELEASED:
                return
            self.ended = reason
            self.settled = False
            self._stats = EMPTY_STATS
            self._tree_gone = True

    def detach(self) -> None:
        """The session closed (``%unload_ext``), after the widget's final refresh: keep
        what it shows, with both buttons disabled, and let go of the session."""
        self.stop_button.on_click(self._on_stop, remove=True)
        self.restart_button.on_click(self._on_restart, remove=True)
        self.stop_button.disabled = self.restart_button.disabled = True
        self.host = _DetachedHost(self.host.config)

    def release(self, text: str) -> None:
        """A newer launch of this name took over: leave ``text`` where the widget was
        shown, close every comm of the widget and drop the process and its tail."""
        with self._lock:
            self.phase = WidgetPhase.RELEASED
            self.proc = None
            self.settled = True
            self._stats = EMPTY_STATS
            self._tail_key, self._tail_value = None, ""
            self._sent = {}
        if self.handle is not None:
            try:  # a no-op where the cell was re-run: its old output is gone already
                self.handle.update({"text/plain": text}, raw=True)
            except Exception:  # the frontend may be gone; the release goes on
                log.warning("cannot update the display of %r", self.spec.name, exc_info=True)
            self.handle = None
        _close_tree(self.view)

    def _on_stop(self, _button: Any) -> None:
        proc = self.proc
        if proc is None or self.ended:
            return
        self.host.submit(functools.partial(self.host.stop_process, proc, self.spec.grace),
                         f"the Stop click of {self.spec.name!r}")

    def _on_restart(self, _button: Any) -> None:
        with self._lock:
            if self.phase not in (WidgetPhase.ATTACHED, WidgetPhase.FAILED) or self.ended:
                return  # still starting, already restarting, or the kernel is ending
            self.phase = WidgetPhase.RESTARTING
            self.settled = False
        self.host.wake()
        if not self.host.submit(self._restart, f"the Restart click of {self.spec.name!r}"):
            self.fail("restart failed: the session is closed")

    def _restart(self) -> None:
        try:  # attached once the process exists: live while a readiness check waits
            proc = self.host.relaunch(self.spec, on_launched=self.attach)
        except Exception as exc:  # shown in the badge; a click must never raise
            expected = isinstance(exc, ProcTrackError)
            log.warning("restart of %r failed: %s", self.spec.name, exc, exc_info=not expected)
            self.fail(f"restart failed: {first_line(exc)}")
            return
        if self.proc is not proc:
            self.attach(proc)

    # ------------------------------------------------------------------ rendering

    def status_text(self) -> str:
        """The plain one-line form: ``web: pid 12 running · ready in 0.42 s``."""
        if self.phase is WidgetPhase.FAILED:
            return f"{self.spec.name}: failed: {self.error}"
        proc = self.proc
        if proc is None or self.phase is WidgetPhase.RESTARTING:
            return f"{self.spec.name}: {'restarting…' if proc else _STARTING.describe()}"
        return status_line(proc, full=False)

    def _badge(self, now: float) -> str:
        if self.ended:
            return badge_html(ProcessState(Phase.STOPPED), text=f"stopped: {self.ended}")
        if self.phase is WidgetPhase.FAILED:
            return badge_html(ProcessState(Phase.FAILED))
        if self.phase is WidgetPhase.RESTARTING:
            return badge_html(_STARTING, text="restarting…")
        if self.proc is None:
            clock = format_clock(now - self.created)
            return badge_html(_STARTING, text=f"{_STARTING.describe()} {clock}")
        return badge_html(self.proc.state)

    def _header_html(self, now: float) -> str:
        proc = self.proc
        parts = [f"<b>{html.escape(self.spec.name)}</b>"]
        if proc is not None:
            parts.append(f"pid {proc.pid}")
        parts.append(self._badge(now))
        st = self._stats
        if proc is not None and not self.ended and (proc.returncode is None or st.count):
            # a start time, not a ticking uptime: an idle widget then sends nothing
            parts.append(f"since {format_start(proc.started_at)}")
        if st.count:
            parts.append(f"{st.count} proc{'s' if st.count != 1 else ''}")
            parts.append(f"CPU {st.cpu_text()}")
            parts.append(f"RSS {format_bytes(st.rss)}")
            link = functools.partial(port_url, proxy_url=self.host.config.proxy_url)
            parts.append(f"ports {ports_html(st.ports, link)}")
        spark = sparklines_html(proc.metrics()) if proc is not None else ""
        if spark:
            parts.append(spark)
        sub = ""
        if self.phase is WidgetPhase.FAILED and self.error:
            sub = f'<div style="color:{ERROR_COLOR}">{html.escape(self.error)}</div>'
        elif proc is not None:
            log_text = proc.log_error or str(proc.log_path)  # "no log: …" when none
            sub = detail_line_html(
                "ipyproctrack-command", "", command_summary(proc.command), tooltip=proc.command
            ) + detail_line_html(
                "ipyproctrack-log", "" if proc.log_error else "log", log_text, tooltip=log_text
            )
        elif self.spec.ready:
            ready = self.spec.describe_ready()
            sub = detail_line_html("ipyproctrack-waiting", "waiting for", ready, tooltip=ready)
        # wraps only between parts, after their "·"; `contain:inline-size` keeps the long
        # detail lines from widening the header (they end in an ellipsis, not under the buttons)
        last = len(parts) - 1
        status = " ".join(
            f'<span style="white-space:nowrap">{p}{" ·" if i < last else ""}</span>'
            for i, p in enumerate(parts)
        )
        return f'<div style="line-height:1.5;contain:inline-size">{status}{sub}</div>'

    def _tail_html(self) -> str:
        proc = self.proc
        if proc is None:
            return self._sent["tail"] if self._tail_key is None else self._tail_value
        key = (id(proc), proc.output_version)
        if key != self._tail_key:
            chunks = proc.tail_chunks(self.host.config.tail_lines, raw=True)
            self._tail_value = tail_box_html(tail_html(chunks))
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
        if proc is not None and proc.state != self._stats_state:
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
            self._stats_state = proc.state
            if exited and stats.count == 0:
                self._tree_gone = True

    def pending(self, now: float) -> list[tuple[str, Any]]:
        """What differs from what the frontend last got: [(part, value)]."""
        with self._lock:
            proc = self.proc
            # read before the tail is built: once True, that tail holds the last bytes
            drained = proc is not None and proc.output_done
            finished = proc is not None and proc.returncode is not None and self._tree_gone
            if self.phase is WidgetPhase.RELEASED:
                return []
            wanted = {
                "header": self._header_html(now),
                "tail": self._tail_html(),
                "stop_disabled": proc is None or finished or bool(self.ended)
                or self.phase is not WidgetPhase.ATTACHED,
                "restart_disabled": bool(self.ended),
            }
        out = [(k, v) for k, v in wanted.items() if self._sent.get(k) != v]
        # settled once the end is shown: return code, an empty tree and every last line
        ended = (proc is None and self.phase is WidgetPhase.FAILED) or (finished and drained) \
            or bool(self.ended)
        if not out and ended and self.phase in (WidgetPhase.ATTACHED, WidgetPhase.FAILED):
            self.settled = True
        return out

    def apply(self, part: str, value: Any) -> None:
        """Send one part to the frontend (the refresher thread's job, nobody else's)."""
        if part == "header":
            self.header.value = value
        elif part == "tail":
            self.tail.value = value
        elif part == "stop_disabled":
            self.stop_button.disabled = value
        elif part == "restart_disabled":
            self.restart_button.disabled = value
        self._sent[part] = value


def _close_tree(widget: Any) -> None:
    """Close ``widget``, its children and their layouts and styles: each is a widget with
    a comm of its own, kept alive by ipywidgets until it is closed."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if part is not None:
            part.close()
    widget.close()
