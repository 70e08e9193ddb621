"""The extension's session for one shell: config, the Tracker, launching, and its endings.

Every ending (``%unload_ext``, or a kernel end reported by :mod:`.hooks`) tears every
tracked tree down. A kernel-ending teardown finishes within about 2 s, uses a grace of at
most :data:`KERNEL_END_GRACE`, never raises, and writes what it did (which trigger, how
long, the report) to :data:`KERNEL_END_RECORD` in the log directory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipyproctrack._engine import tracker as _engine_tracker
from ipyproctrack._engine.logfiles import open_private
from ipyproctrack._engine.naming import free_name

from .config import ProcTrackConfig
from .hooks import KERNEL_END_BUDGET, KernelEndHooks
from .refresher import Refresher
from .spec import LaunchSpec
from .stats import TreeStats, sample_trees
from .views import failure_text
from .widget import ProcessWidget, has_widget_frontend
from .worker import ClickWorker

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ipyproctrack import CleanupReport, TrackedProcess, Tracker

__all__ = ["INLINE_GRACE", "KERNEL_END_GRACE", "KERNEL_END_RECORD", "NotebookSession"]

log = logging.getLogger(__name__)

#: Grace used when the kernel ends (shutdown, restart, SIGTERM, exit): at most this.
KERNEL_END_GRACE = 0.8
#: Grace when no helper thread can bound the teardown (interpreter shutdown): it runs
#: inline, so it must be short by itself (grace + about 1 s of sweeping and reaping).
INLINE_GRACE = 0.3
#: File in the Tracker's log directory that says how the kernel-end teardown went.
KERNEL_END_RECORD = _engine_tracker.KERNEL_END_RECORD


class NotebookSession:
    """Everything ``%load_ext ipyproctrack`` sets up for one shell."""

    def __init__(self, shell: InteractiveShell, config: ProcTrackConfig) -> None:
        self.shell = shell
        self._config = config
        self._lock = threading.RLock()
        self._tracker: Tracker | None = None
        self.widgets_enabled = has_widget_frontend(shell)  # decided once, here
        self.refresher = Refresher(lambda: float(self._config.refresh_hz), self.sample_trees)
        #: the launch of each name, for the Restart button and the grace of a replace
        self.specs: dict[str, LaunchSpec] = {}
        self.hooks = KernelEndHooks(self.kernel_end_teardown)
        self.clicks = ClickWorker()  # the one thread that runs Stop and Restart clicks
        self.closed = False

    @property
    def config(self) -> ProcTrackConfig:
        return self._config

    # ------------------------------------------------------------------ the tracker

    @property
    def has_tracker(self) -> bool:
        return self._tracker is not None

    @property
    def tracker(self) -> Tracker:
        """The session's Tracker, created on first use with the configured defaults."""
        with self._lock:
            if self.closed:
                from ipyproctrack.errors import TrackerClosedError

                raise TrackerClosedError("the ipyproctrack extension was unloaded")
            if self._tracker is None:
                from ipyproctrack._engine.tracker import Tracker

                cfg = self._config
                self._tracker = Tracker(
                    log_dir=cfg.log_dir or None,
                    grace=cfg.grace,
                    log_max_bytes=cfg.log_max_bytes,
                    log_backups=cfg.log_backups,
                    log_budget_bytes=cfg.log_budget_bytes,
                    on_change=self.refresher.wake.set,
                    close_at_exit=False,  # our KernelEndHooks close it, once
                )
            return self._tracker

    def grace(self, override: float | None = None) -> float:
        return float(self._config.grace if override is None else override)

    def sample_trees(self, procs: Sequence[TrackedProcess], *, wait: float = 0.0
                     ) -> list[TreeStats]:
        """Count, CPU%, RSS and ports of several trees (``stats.sample_trees``)."""
        return sample_trees(procs, wait=wait)

    # ------------------------------------------------------------------ launching

    def free_name(self, base: str) -> str:
        """The engine's rule (``base-1``, ``base-2``...), applied before the launch so the
        widget can show its name while the process starts."""
        return free_name(base, self._tracker if self._tracker is not None else ())

    def launch(
        self, spec: LaunchSpec, *, on_launched: Callable[[TrackedProcess], None] | None = None
    ) -> TrackedProcess:
        """Start ``spec``. A live tree of that name is replaced: the engine stops it with
        the grace it was started with. ``on_launched`` sees the process before any
        readiness wait."""
        old = self.specs.get(spec.name)
        previous = self.launched(spec.name)

        def launched(proc: TrackedProcess) -> None:
            self.specs[spec.name] = spec
            if on_launched is not None:
                on_launched(proc)
            # the replaced launch is gone from the registry: nobody shows it any more, so
            # it keeps no tail (its log stays on disk) and its widgets close
            if previous is not None and previous is not proc:
                previous.release_output()
            self.refresher.release_replaced(spec.name, proc)

        return self.tracker.start(
            spec.command,
            name=spec.name,
            cwd=spec.cwd,
            env=spec.env,
            replace=True,
            replace_grace=self.grace(old.grace if old is not None else None),
            ready=list(spec.ready) or None,
            ready_timeout=spec.ready_timeout,
            on_launched=launched,
            port=spec.port,
            max_memory=spec.max_memory,
            max_runtime=spec.max_runtime,
        )

    def launch_in_widget(self, spec: LaunchSpec) -> TrackedProcess:
        """Show a widget, then start ``spec`` in it: the widget attaches as soon as the
        process exists (pid, live output and Stop while a readiness check still waits).
        Whatever goes wrong, the widget never stays at "starting…"; the error is re-raised.
        """
        from IPython.display import display as _display

        display: Callable[..., Any] = _display
        widget = ProcessWidget(self, spec)
        handle = display(widget.view, display_id=True)
        widget.handle = handle
        self.add_widget(widget)
        before = self.launched(spec.name)
        try:
            proc = self.launch(spec, on_launched=widget.attach)
        except BaseException as exc:
            started = widget.proc or self.launched(spec.name)
            if started is not None and started is not before and started.returncode is None:
                widget.attach(started)  # e.g. an interrupted wait: the process runs on
            else:
                widget.fail(failure_text(exc))
            _update_display(handle, widget)
            raise
        _update_display(handle, widget)  # the saved text/plain becomes the status line
        return proc

    def launched(self, name: str) -> TrackedProcess | None:
        """The newest launch called ``name`` (None if nothing by that name exists)."""
        tracker = self._tracker
        if tracker is None or name not in tracker:
            return None
        return tracker.get(name)

    def relaunch(
        self, spec: LaunchSpec, *, on_launched: Callable[[TrackedProcess], None] | None = None
    ) -> TrackedProcess:
        """The Restart button: the same command, with fresh readiness checks."""
        return self.launch(spec.for_restart(), on_launched=on_launched)

    def wake(self) -> None:
        self.refresher.wake.set()

    def submit(self, job: Callable[[], object], what: str) -> bool:
        return self.clicks.submit(job, what)

    def stop_process(self, proc: TrackedProcess, grace: float | None) -> None:
        proc.stop(grace=self.grace(grace))

    def add_widget(self, widget: ProcessWidget) -> None:
        self.refresher.add(widget)

    # ------------------------------------------------------------------ endings

    def close(self, *, grace: float | None = None) -> CleanupReport | None:
        """``%unload_ext``: tear everything down, show the final state, stop the thread.
        None if it was closed already (also by a kernel-end teardown, whose work this
        completes: that one may have left the drain loop running)."""
        with self._lock:
            was_closed, self.closed = self.closed, True
            tracker = self._tracker
        self.hooks.uninstall()
        self.clicks.close()
        # The refresher thread ends first: the final tick below must be the only one.
        stopped = self.refresher.stop()
        report = tracker.close(grace=self.grace(grace)) if tracker is not None else None
        if stopped:
            try:
                self.refresher.tick(force_stats=True)  # "stopped" and the last lines
            except Exception:  # the teardown is done; a stale widget must not undo that
                log.exception("the final widget refresh failed")
            for widget in self.refresher.widgets:  # shown on, holding no shell
                try:
                    widget.detach()
                except Exception:  # the frontend may be gone; the unload goes on
                    log.exception("detaching the widget of %r failed", widget.spec.name)
        return None if was_closed else report

    def show_kernel_end(self, reason: str = "kernel shut down", *, timeout: float = 0.5) -> bool:
        """Every live widget shows ``stopped: reason`` with its buttons disabled, and the
        messages leave the kernel before it exits (the page must not show a green
        "running" for a process that is gone). False if that could not be done in time."""
        if not self.refresher.stop(timeout=timeout):
            log.warning("the widget refresher is still busy; the widgets keep their state")
            return False
        for widget in self.refresher.widgets:
            widget.end(reason)
        try:
            self.refresher.tick(final=True)
        except Exception:  # the teardown is done; a stale widget must not undo that
            log.exception("the final widget refresh failed")
            return False
        return _flush_iopub(getattr(self.shell, "kernel", None), timeout)

    def kernel_end_teardown(self, trigger: str = "kernel end", inline: bool = False) -> None:
        """The kernel is ending: tear down fast (within about 2 s), never raise.

        ``inline``: no helper thread bounds this call, so use a short grace and skip
        stopping the drain loop (the process is about to end anyway)."""
        started = time.monotonic()
        with self._lock:
            self.closed = True
            tracker = self._tracker
        self.clicks.close()
        self.refresher.stop(timeout=0.2)
        if tracker is None:
            return
        report: CleanupReport | None = None
        if inline:
            grace = min(self.grace(), INLINE_GRACE)
        else:
            budget = KERNEL_END_BUDGET - (time.monotonic() - started)
            grace = max(0.0, min(self.grace(), KERNEL_END_GRACE, budget - 1.0))
        try:
            report = tracker.cleanup(grace=grace) if inline else tracker.close(grace=grace)
        except Exception:  # the engine's teardown reports; this is a bug, and the end goes on
            log.exception("the kernel-end teardown (%s) failed", trigger)
        if not inline and self.widgets_enabled:
            self.show_kernel_end(timeout=max(0.05, min(0.5, KERNEL_END_BUDGET - 0.2
                                                      - (time.monotonic() - started))))
        took = time.monotonic() - started
        try:
            _write_record(tracker, trigger, inline, grace, took, report)
        except OSError as exc:
            log.warning("cannot write the kernel-end record: %s", exc)


def _flush_iopub(kernel: Any, timeout: float) -> bool:
    """Wait until ipykernel's IOPub thread has sent everything queued before this call
    (it runs its queue in order); True once it has, or when there is no such thread."""
    iopub = getattr(kernel, "iopub_thread", None)
    if iopub is None:
        return True
    done = threading.Event()
    try:
        iopub.schedule(done.set)
    except Exception as exc:  # the kernel is ending: its sockets may be closed already
        log.warning("cannot flush the widget messages: %s", exc)
        return False
    return done.wait(timeout)


def _update_display(handle: Any, widget: ProcessWidget) -> None:
    try:
        handle.update(widget.view)
    except Exception:  # the frontend may be gone; the widget itself is fine
        log.warning("cannot update the display of %r", widget.spec.name, exc_info=True)


def _write_record(
    tracker: Tracker, trigger: str, inline: bool, grace: float, took: float,
    report: CleanupReport | None,
) -> None:
    """Say in the log directory how the kernel-end teardown went (a post-mortem)."""
    head = (f"kernel end by {trigger}{' (inline)' if inline else ''}: teardown took "
            f"{took:.2f} s, grace {grace:g} s, pid {os.getpid()}")
    lines = [head, *(report.summary_lines() if report is not None else ["(no report)"])]
    # 0600 and never through a symlink planted at its path
    fd = open_private(tracker.kernel_end_record, append=False)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
