"""TrackedProcess: one launch (its root, its output, its tree) and its state machine."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .._keeper.limits import describe as describe_limit
from .._proc.discovery import ProcessInfo, Target, tree_of
from .._proc.identity import ProcId
from .._proc.teardown import CleanupReport
from ..errors import ExitTimeout, NotReadyError
from .launch import Root
from .metrics import MetricsSample, MetricsSeries, metrics_frame
from .output import OutputChunk, OutputSink
from .ready import close_checks, wait_until_ready
from .state import TRANSITIONS, Phase, ProcessState

if TYPE_CHECKING:
    from .ready import ReadinessCheck
    from .tracker import Tracker

log = logging.getLogger(__name__)


class TrackedProcess:
    """One tracked launch: its root process, its output and its tree."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        name: str,
        command: str,
        root: Root,
        tag: str,
        cwd: Path,
        sink: OutputSink,
        checks: Sequence[ReadinessCheck] = (),
    ) -> None:
        self.tracker = tracker
        self.name = name
        self.command = command
        self.pid = root.pid
        self.tag = tag
        self.cwd = cwd
        self.log_path = sink.log.path
        self.started_at = time.time()
        self.create_time = root.create_time
        self.returncode: int | None = None
        self.port: int | None = None  # the port given to start(port=...), also in $PORT
        self.metrics_series: MetricsSeries = tracker._metrics.series_for(
            root.create_time, self.log_path)
        self.ready_seconds: float | None = None
        #: Which limit the keeper stopped this tree for, and by how much ("memory: tree RSS
        #: 301 MiB > limit 100 MiB"); None while no limit was exceeded.
        self.limit_exceeded: str | None = None
        self._reason: str | None = None  # the state's short form of it
        # Guards _phase, returncode, _exited_alone and _exit_callbacks: the loop thread
        # reports the exit while callers wait, stop and read the state.
        self._lock = threading.Lock()
        self._phase = Phase.STARTING if checks else Phase.RUNNING
        # when the phase or the return code last changed (monotonic): a metrics sample
        # older than this predates the change (say, the root's exit): displays distrust it
        self.changed_at = time.monotonic()
        self._exited_alone = False  # the root exited before any teardown of ours
        self._root = root
        self._helpers = root.helpers  # our keeper: never signalled or reported
        self._sink = sink
        self._checks = list(checks)
        self._exited = threading.Event()
        self._drained = threading.Event()
        self._exit_callbacks: list[Callable[[TrackedProcess], None]] = []

    def __repr__(self) -> str:
        return f"<TrackedProcess {self.name!r} pid={self.pid} {self.state}>"

    # --- state ------------------------------------------------------------------------------
    @property
    def state(self) -> ProcessState:
        """The state machine's current state (see ``_engine/state.py``)."""
        with self._lock:
            return ProcessState(self._phase, self.returncode, self.ready_seconds, self._reason)

    @property
    def stopped(self) -> bool:
        """True once our teardown of the running root began (stop, cleanup, replace)."""
        return self.state.phase is Phase.STOPPED

    def _transition(self, new: Phase) -> bool:
        """Move to ``new`` if the table allows it from where we are; False (and nothing
        changes) when not: it lost a race with a move that already happened, such as the
        root's exit against the end of a readiness wait."""
        with self._lock:
            old = self._phase
            allowed = new in TRANSITIONS[old]
            if allowed:
                self._phase = new
                self.changed_at = time.monotonic()
        if not allowed:
            log.debug("%s: %s -> %s ignored", self.name, old.value, new.value)
            return False
        log.debug("%s: %s -> %s", self.name, old.value, new.value)
        self.tracker._changed()
        return True

    def is_running(self) -> bool:
        """True while the root command runs (its tree may outlive it: see tree())."""
        return self.returncode is None

    def has_live_tree(self) -> bool:
        """True while the root or anything of its tree lives (a launcher such as
        ``pg_ctl start`` exits 0 and leaves its server running)."""
        if self.returncode is None:
            return True
        if self._helpers and self._root.popen.poll() is not None:
            return False  # the keeper exits once its subtree is empty: a cheap answer
        return bool(self.tree())

    @property
    def output_done(self) -> bool:
        """True once stdout and stderr are closed and every byte is in the log and tail."""
        return self._drained.is_set()

    def wait_output_done(self, timeout: float | None = None) -> bool:
        """Block until output_done; False on timeout."""
        return self._drained.wait(timeout)

    # --- output -----------------------------------------------------------------------------
    @property
    def output_version(self) -> int:
        return self._sink.version

    @property
    def bytes_received(self) -> int:
        return self._sink.bytes_received

    @property
    def log_error(self) -> str | None:
        """Why the log cannot be written (``no log: permission denied on …``), or None.
        The process runs on either way; its tail is still kept in memory."""
        return self._sink.log.error

    @property
    def log_status(self) -> str:
        """The log's path, or, where there is no log, why (what to show for "the log")."""
        return self.log_error or str(self.log_path)

    def log_files(self) -> list[Path]:
        """The log and its rotated backups, oldest first."""
        return self._sink.log.files()

    def tail(self, lines: int = 50, *, stream: str | None = None) -> str:
        """The last ``lines`` lines of output (stdout and stderr interleaved, or one stream),
        as a terminal shows them: ``\\r`` overwrites its line, escape sequences are gone."""
        return self._sink.tail(lines, stream=stream)

    def tail_chunks(self, lines: int = 50, *, raw: bool = False) -> list[tuple[str, str]]:
        """The last lines as (stream, text) runs, oldest first: for telling stderr apart.
        As a terminal shows them (``\\r`` applied, escapes removed); ``raw``: as written."""
        return self._sink.tail_chunks(lines, raw=raw)

    def release_output(self) -> None:
        """Drop the in-memory tail (the log on disk keeps every byte): an ended process
        that was replaced keeps no output in memory. tail() is empty afterwards."""
        self._sink.release_tail()

    def subscribe(self, callback: Callable[[list[OutputChunk]], None]) -> Callable[[], None]:
        """Call ``callback`` with batches of new output, on a thread of its own.
        Returns the function that unsubscribes."""
        return self._sink.subscribe(callback)

    def on_exit(self, callback: Callable[[TrackedProcess], None]) -> None:
        """Call ``callback(self)`` once the root exits, on a thread of its own (at once, on
        the caller's thread, if it already has)."""
        with self._lock:
            if not self._exited.is_set():
                self._exit_callbacks.append(callback)
                return
        callback(self)

    # --- resources --------------------------------------------------------------------------
    def metrics(self) -> list[MetricsSample]:
        """The tree's samples since launch, oldest first (``t`` seconds since launch,
        ``cpu_percent`` of one core, ``rss`` bytes, live ``processes``), one every
        ``metrics_interval``; the last hour by default. Kept after the exit."""
        return self.metrics_series.samples()

    def metrics_frame(self) -> Any:
        """metrics() as a pandas DataFrame; an ImportError naming the extra without pandas."""
        return metrics_frame(self.metrics())

    @property
    def metrics_csv(self) -> Path | None:
        """Where the samples are written once the tree is gone (None: not sampled)."""
        return self.metrics_series.csv_path

    # --- lifetime ---------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the root command exits; its return code, or None on timeout."""
        self._exited.wait(timeout)
        return self.returncode

    def wait_exit(self, timeout: float | None = None) -> int:
        """Block until the root command exits; its return code. On timeout the tree is
        torn down and ExitTimeout says so. An interrupt (KeyboardInterrupt) stops only the
        wait: the process runs on."""
        if self._exited.wait(timeout):
            assert self.returncode is not None
            return self.returncode
        summary = self.stop().summary_lines()
        how = summary[0].partition(": ")[2] if summary else "nothing was left"
        raise ExitTimeout(f"{self.name!r} did not exit within {timeout:g} s; "
                          f"its tree was torn down ({how})")

    def tree(self) -> list[ProcessInfo]:
        """The live processes of this tree: descendants, group members and tag matches."""
        return tree_of(self._target())

    def stop(self, *, grace: float | None = None) -> CleanupReport:
        """Phased teardown of this tree; blocks up to grace + about 1 s. Never raises."""
        return self.tracker._teardown([self], grace)

    def stop_through_interrupts(self, *, grace: float | None = None) -> None:
        """Stop this tree (blocks), even when a KeyboardInterrupt comes meanwhile: an
        interrupted replace must never leave the old tree running under a "stopped" name.
        An interrupt cuts the grace short (SIGKILL at once), waits until the tree is gone,
        then propagates: the new process is not started."""
        done = threading.Event()

        def stop() -> None:
            try:
                self.stop(grace=grace)
            finally:
                done.set()

        threading.Thread(target=stop, name="ipyproctrack-replace", daemon=True).start()
        interrupt: BaseException | None = None
        while not done.is_set():
            try:
                if interrupt is None:
                    done.wait()
                else:  # hurry: the caller wants out; the grace is over
                    log.warning("%s: replace interrupted; killing the old tree now", self.name)
                    self.stop(grace=0)
                    done.wait()
            except KeyboardInterrupt as exc:
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt

    async def astop(self, *, grace: float | None = None) -> CleanupReport:
        return await anyio.to_thread.run_sync(partial(self.stop, grace=grace))

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Block until every readiness check passes; the seconds that took (a second call
        returns them at once). On failure the tree is torn down and a NotReadyError names
        why, with the last output lines."""
        if not self._checks:
            return 0.0
        if self.ready_seconds is not None:
            return self.ready_seconds
        if self.state.phase is Phase.RUNNING:  # an earlier wait was interrupted
            self._transition(Phase.STARTING)
        future: Future[float] | None = None
        try:
            future = self.tracker._loop.run_soon(
                partial(wait_until_ready, self, self._checks, timeout=timeout)
            )
            seconds = future.result()
        except NotReadyError:
            self._transition(Phase.FAILED)
            close_checks(self._checks)
            self.stop()
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt): stop waiting; the process runs on, as an
            # interrupt must never stop a tracked process, and wait_ready() may be called
            # again, so the checks stay armed.
            if future is not None:
                future.cancel()
            self._transition(Phase.RUNNING)
            raise
        close_checks(self._checks)
        with self._lock:
            self.ready_seconds = seconds
        if not self._transition(Phase.READY):  # a launcher's root exited: it stays EXITED
            self.tracker._changed()
        return float(seconds)

    async def await_ready(self, timeout: float = 30.0) -> float:
        return await anyio.to_thread.run_sync(partial(self.wait_ready, timeout))

    # --- engine internals -------------------------------------------------------------------
    def _target(self) -> Target:
        return Target(
            name=self.name,
            root=ProcId(self.pid, self.create_time),
            tag=self.tag,
            # Each launch leads a new group: the keeper's when there is one (it ignores the
            # group SIGTERM and is spared the group SIGKILL), else the root's.
            group=self._helpers[0].pid if self._helpers else self.pid,
            helpers=self._helpers,
            reap=self._reap,
            root_exited=self.returncode is not None and self._exited_alone,
            command=self.command,
        )

    def _reap(self) -> bool:
        return self._root.popen.poll() is not None

    def _keeper_event(self, event: dict[str, object]) -> None:
        """A status event from the keeper other than the exit (on the loop thread)."""
        if event.get("event") != "limit_exceeded":
            return
        limit, used, allowed = event.get("limit"), event.get("used"), event.get("allowed")
        if not (isinstance(limit, str) and isinstance(used, float)
                and isinstance(allowed, float)):
            return
        full, short = describe_limit(limit, used, allowed)
        log.warning("%s: %s; its keeper stops the tree", self.name, full)
        with self._lock:
            self.limit_exceeded = full
            if self._phase in (Phase.STARTING, Phase.RUNNING, Phase.READY):
                self._reason = short
        self._transition(Phase.STOPPED)

    def _root_exited(self, returncode: int) -> None:
        """The loop's report that the root exited (on the loop thread: must not block)."""
        with self._lock:
            self.returncode = returncode
            self.changed_at = time.monotonic()  # also in a final phase (STOPPED) that stays
            self._exited_alone = self._phase not in (Phase.STOPPED, Phase.FAILED)
            self._exited.set()
            callbacks, self._exit_callbacks = self._exit_callbacks, []
        if not self._transition(Phase.KILLED if returncode < 0 else Phase.EXITED):
            self.tracker._changed()  # the return code is news in a final phase too
        if callbacks:  # off the loop thread: a listener may start, stop or block
            threading.Thread(
                target=self._run_exit_callbacks, args=(callbacks,), daemon=True,
                name="ipyproctrack-on-exit",
            ).start()

    def _run_exit_callbacks(self, callbacks: list[Callable[[TrackedProcess], None]]) -> None:
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # a broken listener harms no other, but is reported
                log.exception("%s: on_exit callback %r failed", self.name, cb)
