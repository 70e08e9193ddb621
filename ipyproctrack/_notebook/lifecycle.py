"""The extension's session (config, Tracker, widgets) and its teardown on every kernel ending.

design.md fact 3: IPython 9 has no shutdown hook. The measured triggers are
- ``shutdown_kernel()`` / ``restart_kernel()``: ipykernel runs ``kernel.do_shutdown`` on its
  Control thread; we wrap it (keeping its signature, sync or async);
- a bare SIGTERM: nothing runs unless we install a handler, so we install one that tears
  down, restores the previous handler and re-raises the signal;
- ``atexit`` as the last resort (it runs only if the exit finishes in time).
SIGKILL / OOM / the server dying are the engine's watchdog's job, not ours.

Every one of these paths finishes within about 2 s (jupyter_client sends SIGTERM at 2.5 s),
uses a grace of at most :data:`KERNEL_END_GRACE` and never raises. What it did (which
trigger, how long, the report) is written to :data:`KERNEL_END_RECORD` in the log directory.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from ipyproctrack._engine.naming import free_name

from .config import ProcTrackConfig
from .render import TreeSampler, TreeStats, sample_trees
from .widgets import LaunchSpec, ProcessWidget, Refresher, has_widget_frontend

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ipyproctrack import CleanupReport, TrackedProcess, Tracker

__all__ = [
    "KERNEL_END_GRACE",
    "KERNEL_END_RECORD",
    "KernelEndHooks",
    "NotebookSession",
    "run_bounded",
]

#: Grace used when the kernel ends (shutdown, restart, SIGTERM, exit): at most this.
KERNEL_END_GRACE = 0.8
#: A kernel-ending teardown gives up waiting after this many seconds.
KERNEL_END_BUDGET = 2.0
#: Grace when no helper thread can bound the teardown (interpreter shutdown): it runs
#: inline, so it must be short by itself (grace + about 1 s of sweeping and reaping).
INLINE_GRACE = 0.3
#: File in the Tracker's log directory that says how the kernel-end teardown went.
KERNEL_END_RECORD = "ipyproctrack-kernel-end.txt"

_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def run_bounded(
    fn: Callable[[], object], timeout: float, *, inline: Callable[[], object] | None = None
) -> bool:
    """Run ``fn`` on a helper thread and wait at most ``timeout``; True if it finished.

    A thread keeps a signal handler or the Control thread from hanging on a lock the
    interrupted code holds. If no thread can be started (interpreter shutdown), nothing
    can bound ``fn``: run ``inline`` instead (default ``fn``), which must bound itself.
    """
    done = threading.Event()

    def target(call: Callable[[], object] = fn) -> None:
        try:
            call()
        except BaseException:
            pass
        finally:
            done.set()

    try:
        thread = threading.Thread(target=target, name="ipyproctrack-teardown", daemon=True)
        thread.start()
    except RuntimeError:
        target(fn if inline is None else inline)
        return True
    return done.wait(timeout)


class KernelEndHooks:
    """Installs (and removes) the teardown triggers of design.md fact 3.

    ``teardown(trigger, inline)`` does the work; ``inline`` is True when it runs without a
    helper thread to bound it (so it must be quick by itself).
    """

    def __init__(self, teardown: Callable[[str, bool], None]) -> None:
        self._teardown = teardown
        self._active = False
        self._kernel: Any = None
        self._wrapper: Callable[..., Any] | None = None
        self._original: Callable[..., Any] | None = None
        self._had_instance_attr = False
        self._previous_sigterm: _SignalHandler = None
        self._sigterm_installed = False
        self._pid = os.getpid()

    # ------------------------------------------------------------------ install / remove

    def install(self, shell: InteractiveShell) -> None:
        self._active = True
        # Forked children (multiprocessing workers) inherit the SIGTERM handler and atexit;
        # Pool.terminate() SIGTERMs them. They must never tear down the kernel's trees.
        self._pid = os.getpid()
        self._wrap_do_shutdown(getattr(shell, "kernel", None))
        self._install_sigterm()
        atexit.register(self._on_atexit)

    def uninstall(self) -> None:
        self._active = False
        atexit.unregister(self._on_atexit)
        kernel, wrapper = self._kernel, self._wrapper
        # if someone wrapped it after us, our wrapper stays but is inert (_active)
        if (
            kernel is not None
            and wrapper is not None
            and kernel.__dict__.get("do_shutdown") is wrapper
        ):
            if self._had_instance_attr:
                kernel.do_shutdown = self._original
            else:
                del kernel.do_shutdown
        self._kernel = self._wrapper = None
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._restorable(self._previous_sigterm))
            except (ValueError, OSError):
                pass
            self._sigterm_installed = False

    # ------------------------------------------------------------------ triggers

    def _run(self, trigger: str) -> None:
        if not self._active or os.getpid() != self._pid:
            return
        self._active = False
        run_bounded(
            functools.partial(self._teardown, trigger, False),
            KERNEL_END_BUDGET,
            inline=functools.partial(self._teardown, trigger, True),
        )

    def _wrap_do_shutdown(self, kernel: Any) -> None:
        original = getattr(kernel, "do_shutdown", None) if kernel is not None else None
        if original is None:
            return
        hooks = self

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def do_shutdown(restart: bool) -> Any:
                hooks._run("do_shutdown")
                return await original(restart)

            wrapper: Callable[..., Any] = do_shutdown
        else:

            @functools.wraps(original)
            def do_shutdown_sync(restart: bool) -> Any:
                hooks._run("do_shutdown")
                return original(restart)

            wrapper = do_shutdown_sync
        self._had_instance_attr = "do_shutdown" in kernel.__dict__
        kernel.do_shutdown = wrapper
        self._kernel, self._wrapper, self._original = kernel, wrapper, original

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            return
        self._sigterm_installed = True

    @staticmethod
    def _restorable(handler: _SignalHandler) -> Any:
        return signal.SIG_DFL if handler is None else handler

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        try:
            self._run("SIGTERM")
        finally:
            previous = self._restorable(self._previous_sigterm)
            self._sigterm_installed = False
            try:
                signal.signal(signal.SIGTERM, previous)
            except (ValueError, OSError):
                previous = signal.SIG_DFL
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)  # dies here, by SIGTERM as asked

    def _on_atexit(self) -> None:
        self._run("atexit")


class NotebookSession:
    """Everything ``%load_ext ipyproctrack`` sets up for one shell."""

    def __init__(self, shell: InteractiveShell, config: ProcTrackConfig) -> None:
        self.shell = shell
        self._config = config
        self._lock = threading.RLock()
        self._tracker: Tracker | None = None
        self._sampler = TreeSampler()
        self.widgets_enabled = has_widget_frontend(shell)  # decided once, here
        self.refresher = Refresher(lambda: float(self._config.refresh_hz), self.sample_trees)
        #: the launch of each name, for the Restart button and the grace of a replace
        self.specs: dict[str, LaunchSpec] = {}
        self.hooks = KernelEndHooks(self.kernel_end_teardown)
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
                from ipyproctrack import TrackerClosedError

                raise TrackerClosedError("the ipyproctrack extension was unloaded")
            if self._tracker is None:
                from ipyproctrack import Tracker

                cfg = self._config
                self._tracker = Tracker(
                    log_dir=cfg.log_dir or None,
                    grace=cfg.grace,
                    log_max_bytes=cfg.log_max_bytes,
                    log_backups=cfg.log_backups,
                    on_change=self.refresher.wake.set,
                )
            return self._tracker

    def grace(self, override: float | None = None) -> float:
        return float(self._config.grace if override is None else override)

    def sample_trees(self, procs: Sequence[TrackedProcess], prime: float = 0.0
                     ) -> list[TreeStats]:
        """Count, CPU%, RSS and ports of several trees, from one process scan."""
        return sample_trees(self._sampler, procs, prime=prime)

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

        def launched(proc: TrackedProcess) -> None:
            self.specs[spec.name] = spec
            if on_launched is not None:
                on_launched(proc)

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
        )

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
        # The refresher thread ends first: the final tick below must be the only one.
        stopped = self.refresher.stop()
        report = tracker.close(grace=self.grace(grace)) if tracker is not None else None
        if stopped:
            with contextlib.suppress(Exception):
                self.refresher.tick(force_stats=True)  # "stopped" and the last lines
        return None if was_closed else report

    def kernel_end_teardown(self, trigger: str = "kernel end", inline: bool = False) -> None:
        """The kernel is ending: tear down fast (within about 2 s), never raise.

        ``inline``: no helper thread bounds this call, so use a short grace and skip
        stopping the drain loop (the process is about to end anyway)."""
        started = time.monotonic()
        with self._lock:
            self.closed = True
            tracker = self._tracker
        self.refresher.stop(timeout=0.2)
        if tracker is None:
            return
        report: CleanupReport | None = None
        if inline:
            grace = min(self.grace(), INLINE_GRACE)
            with contextlib.suppress(Exception):
                report = tracker.cleanup(grace=grace)
        else:
            budget = KERNEL_END_BUDGET - (time.monotonic() - started)
            grace = max(0.0, min(self.grace(), KERNEL_END_GRACE, budget - 1.0))
            with contextlib.suppress(Exception):
                report = tracker.close(grace=grace)
        took = time.monotonic() - started
        with contextlib.suppress(Exception):
            _write_record(tracker, trigger, inline, grace, took, report)


def _write_record(
    tracker: Tracker, trigger: str, inline: bool, grace: float, took: float,
    report: CleanupReport | None,
) -> None:
    """Say in the log directory how the kernel-end teardown went (a post-mortem)."""
    head = (f"kernel end by {trigger}{' (inline)' if inline else ''}: teardown took "
            f"{took:.2f} s, grace {grace:g} s, pid {os.getpid()}")
    lines = [head, *(report.summary_lines() if report is not None else ["(no report)"])]
    (tracker.log_dir / KERNEL_END_RECORD).write_text("\n".join(lines) + "\n")
