"""Tracker: one session's registry of tracked processes (get, start, cleanup, close).

A session is one unique tag, one background loop thread (``loop.py``), one log directory.
Launch checks and spawning live in ``launch.py``, one launch in ``process.py``."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .. import _platform as plat
from .._keeper.client import Zygote, make_lifeline
from .._proc.discovery import ProcessInfo, discover, trees_of
from .._proc.scan import scan_processes
from .._proc.teardown import CleanupReport, run_teardown
from ..errors import LaunchError, NameInUseError, TrackerClosedError, UnknownProcessError
from .launch import argv_of, check_executable, checked_cwd, child_env, spawn_root
from .limits import parse_runtime, parse_size
from .logdirs import checked_log_dir, new_session_dir
from .logfiles import LogBudget, RotatingLog
from .loop import Loop
from .metrics import MetricsSampler
from .naming import base_name, free_name, log_stem
from .output import Deliveries, OutputSink
from .ports import bind_port, check_port_free, port_holder, resolve_port, with_port
from .process import TrackedProcess
from .ready import as_checks, close_checks
from .state import Phase

if TYPE_CHECKING:
    from .ready import ReadinessCheck

    ReadySpec = ReadinessCheck | Sequence[ReadinessCheck] | None
else:
    ReadySpec = Any

# TrackedProcess lives in process.py; it is exported here with the Tracker that makes it.
__all__ = ["TrackedProcess", "Tracker", "live_trackers"]

log = logging.getLogger(__name__)

#: The file in a Tracker's log directory that says how the kernel-end teardown went: written
#: by the notebook's kernel-end hooks, or appended to by each keeper that tore its tree down
#: because the kernel died without running any Python (SIGTERM, SIGKILL, OOM).
KERNEL_END_RECORD = "ipyproctrack-kernel-end.txt"

_live_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()


def _drop_lifelines_in_child() -> None:
    """A forked child (multiprocessing "fork") must not hold a lifeline open: the keepers
    would miss the kernel's death until their pidfd backup notices. Nor may its exit tear
    down its parent's processes, so it forgets the live trackers."""
    for tracker in list(_live_trackers):
        tracker._zygote.forget_in_child()
        if tracker._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(tracker._lifeline[1])
    _live_trackers.clear()


def live_trackers() -> list[Tracker]:
    """Every Tracker of this process that is not closed yet (a forked child has none)."""
    return list(_live_trackers)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_lifelines_in_child)


@atexit.register
def _close_live_trackers() -> None:
    """Plain Python scripts get the same promise as notebooks: nothing outlives us. A
    Tracker made with ``close_at_exit=False`` is closed by its owner's own exit hooks."""
    for tracker in list(_live_trackers):
        if tracker.close_at_exit:
            tracker.close(grace=1.0)


#: Defaults of the logs' disk use: per session (all its processes), and per process.
LOG_BUDGET_BYTES = 512 * 2**20
LOG_MAX_BYTES = 20 * 2**20
LOG_BACKUPS = 5


class Tracker(AbstractContextManager["Tracker"]):
    """One session: a unique tag, one background loop thread, one log directory."""

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        grace: float = 3.0,
        tail_lines: int = 2000,
        tail_bytes: int = 1 << 20,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
        log_budget_bytes: int = LOG_BUDGET_BYTES,
        on_change: Callable[[], None] | None = None,
        close_at_exit: bool = True,
        metrics_interval: float | None = 1.0,
        metrics_keep: float = 3600.0,
    ) -> None:
        """Logs go to ``log_dir`` (created 0700; refused if it is another user's or
        writable by others without the sticky bit), or by default to a fresh directory
        under ``<tmp>/ipyproctrack-<uid>/``, where the directories of ended sessions are
        deleted but for the newest 3. Each log rotates at ``log_max_bytes`` and keeps
        ``log_backups`` old files; all the session's logs together keep at most
        ``log_budget_bytes`` (the oldest rotated files go first). 0 or less: unlimited.

        ``on_change`` is called, from a background thread, whenever a tracked process
        writes output (at most 20 times a second while output flows, and once after it
        stops), exits or becomes ready: a cheap wake-up for a display (the widgets use it
        to sleep while nothing happens). It must not block. ``close_at_exit=False``: the
        caller closes the Tracker when the program ends (the notebook's hooks do). Every
        ``metrics_interval`` seconds (None: never) one thread samples every tree's CPU and
        RSS and keeps the last ``metrics_keep`` seconds of each
        (``TrackedProcess.metrics()``)."""
        self._metrics = MetricsSampler(metrics_interval, metrics_keep)
        self._on_change = on_change
        self.session_tag = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.log_dir = new_session_dir() if log_dir is None else checked_log_dir(log_dir)
        # Hundreds of tracked processes need more open files than the usual soft 1024.
        plat.raise_open_file_limit()
        self.close_at_exit = close_at_exit
        self.grace = grace
        self.tail_lines = tail_lines
        self.tail_bytes = tail_bytes
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.log_budget = LogBudget(log_budget_bytes)
        self._log_names: dict[str, str] = {}  # log file stem -> the name it belongs to
        self._deliveries = Deliveries()  # one subscriber thread for all our processes
        self.closed = False
        self._owner_pid = os.getpid()  # a forked child inherits this object, not its processes
        self._lock = threading.RLock()  # guards _procs, _lifeline and closed
        # Held for a whole launch: two starts of one name, or a close() racing a start,
        # must never leave a tree that the registry has forgotten.
        self._start_lock = threading.RLock()
        self._procs: dict[str, TrackedProcess] = {}
        self._counter = itertools.count(1)
        self._loop = Loop(on_output=self._changed if on_change is not None else None)
        self._lifeline: tuple[int, int] | None = None
        self._zygote = Zygote(self._lifeline_read)  # clones keepers (Linux), from the first launch
        self._on_change_failed = False
        # Windows Job Objects of every launch, replaced ones too: closed by close().
        self._containers: list[plat.Containment] = []
        _live_trackers.add(self)

    @property
    def kernel_end_record(self) -> Path:
        """Where the account of a kernel-end teardown goes (see ``KERNEL_END_RECORD``)."""
        return self.log_dir / KERNEL_END_RECORD

    def __repr__(self) -> str:
        return f"<Tracker {self.session_tag} {len(self._procs)} process(es)>"

    # --- registry ---------------------------------------------------------------------------
    def get(self, name: str) -> TrackedProcess:
        with self._lock:
            try:
                return self._procs[name]
            except KeyError:
                known = ", ".join(self._procs) or "none"
                raise UnknownProcessError(
                    f"no tracked process named {name!r} (known: {known})"
                ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._procs

    def __iter__(self) -> Iterator[TrackedProcess]:
        return iter(self.processes())

    def processes(self) -> list[TrackedProcess]:
        with self._lock:
            return list(self._procs.values())

    def trees(self) -> dict[str, list[ProcessInfo]]:
        """Every tracked tree's live members, from one scan: name -> members."""
        return trees_of([p._target() for p in self.processes()])

    # --- launch -----------------------------------------------------------------------------
    def start(
        self,
        command: str | Sequence[str],
        *,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        replace: bool = False,
        replace_grace: float | None = None,
        ready: ReadySpec = None,
        ready_timeout: float = 30.0,
        on_launched: Callable[[TrackedProcess], None] | None = None,
        port: int | str | None = None,
        max_memory: str | int | None = None,
        max_runtime: float | None = None,
    ) -> TrackedProcess:
        """Start ``command`` in its own session, tagged, with its output drained at once.

        A str is run by bash (or sh); a list is executed as it is. A name whose tree still
        runs is a NameInUseError, unless ``replace=True`` stops that tree first (with
        ``replace_grace``, default the Tracker's grace; an interrupt meanwhile kills the old
        tree at once and starts nothing). ``on_launched(proc)`` runs once the process
        exists, before any readiness wait; if it raises, the process is torn down and the
        exception propagates. With ``ready``, block until the checks pass (see
        wait_ready). ``port``: "auto" (a free 127.0.0.1 port) or a number, put in the
        environment as PORT and in place of ``{port}`` in the command and in the ``ready``
        checks (``HttpReady("http://127.0.0.1:{port}/")``); ``proc.port``. Raises
        LaunchError before anything runs when the command, its directory, the name or the
        port cannot be used. ``max_memory`` (bytes, "512M") and ``max_runtime`` (s): the
        keeper tears the tree down past one (``proc.limit_exceeded`` says which)."""
        limits = (parse_size(max_memory), parse_runtime(max_runtime))
        port_number = resolve_port(port)
        if port_number is not None:
            command = with_port(command, port_number)
            env = {**(env or {}), "PORT": str(port_number)}
        argv, display = argv_of(command)
        workdir = checked_cwd(cwd)
        full_env = child_env(env, session_tag=self.session_tag)
        check_executable(command, argv, full_env, workdir)
        checks = bind_port(as_checks(ready), port_number)
        with self._start_lock:
            self._check_open()
            name = self._name_to_launch(name, command, replace=replace, replace_grace=replace_grace)
            self._check_ports(checks)
            proc = self._launch(argv, display, name=name, cwd=workdir, env=full_env,
                                checks=checks, limits=limits)
            proc.port = port_number
        if on_launched is not None:
            self._call_on_launched(on_launched, proc)
        if checks:
            proc.wait_ready(ready_timeout)
        return proc

    @staticmethod
    def _call_on_launched(
        on_launched: Callable[[TrackedProcess], None], proc: TrackedProcess
    ) -> None:
        """A failing ``on_launched`` fails the launch: the tree is torn down (never left
        "starting" with no one waiting) and the exception goes to start()'s caller."""
        try:
            on_launched(proc)
        except BaseException:
            log.warning("%s: on_launched failed; stopping it", proc.name)
            proc._transition(Phase.FAILED)
            close_checks(proc._checks)
            proc.stop()
            raise

    def _check_open(self) -> None:
        if self.closed:
            raise TrackerClosedError("this Tracker is closed; create a new one")
        if self._foreign():
            raise TrackerClosedError(self._foreign_message())

    async def astart(
        self,
        command: str | Sequence[str],
        *,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        replace: bool = False,
        replace_grace: float | None = None,
        ready: ReadySpec = None,
        ready_timeout: float = 30.0,
        on_launched: Callable[[TrackedProcess], None] | None = None,
        port: int | str | None = None,
        max_memory: str | int | None = None,
        max_runtime: float | None = None,
    ) -> TrackedProcess:
        """start() on a worker thread, so the caller's event loop keeps running."""
        return await anyio.to_thread.run_sync(
            partial(self.start, command, name=name, cwd=cwd, env=env, replace=replace,
                    replace_grace=replace_grace, ready=ready, ready_timeout=ready_timeout,
                    on_launched=on_launched, port=port, max_memory=max_memory,
                    max_runtime=max_runtime)
        )

    def _name_to_launch(
        self,
        name: str | None,
        command: str | Sequence[str],
        *,
        replace: bool,
        replace_grace: float | None,
    ) -> str:
        """The name to launch under: ``name``, or a generated one. A name whose tree still
        runs is a NameInUseError, unless ``replace`` stops that tree first."""
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise LaunchError(f"bad name {name!r}: use a non-empty string")
        with self._lock:
            if name is None:
                name = free_name(base_name(command), self._procs)
            old = self._procs.get(name)
        if old is not None and old.has_live_tree():
            if not replace:
                what = ("is still running" if old.is_running()
                        else f"exited {old.returncode} but its tree still runs")
                raise NameInUseError(
                    f"{name!r} {what} (pid {old.pid}); stop it first or use replace=True"
                )
            old.stop_through_interrupts(grace=replace_grace)
        return name

    def _launch(
        self,
        argv: list[str],
        display: str,
        *,
        name: str,
        cwd: Path,
        env: dict[str, str],
        checks: list[ReadinessCheck],
        limits: tuple[int, float] = (0, 0.0),
    ) -> TrackedProcess:
        """Spawn, register and start draining; the checks see every byte of output.
        ``limits``: (max_memory bytes, max_runtime s), 0 for none."""
        tag = f"{self.session_tag}.{next(self._counter)}"
        env[plat.TAG_PROCESS] = tag
        root = spawn_root(argv, cwd=cwd, env=env, tag=tag, session=self.session_tag,
                          lifeline=self._lifeline_read, keeper_grace=min(self.grace, 1.5),
                          zygote=self._zygote,
                          name=name, record=str(self.kernel_end_record),
                          max_memory=limits[0], max_runtime=limits[1])
        sink = OutputSink(
            RotatingLog(self.log_dir / f"{self._log_stem(name)}.log",
                        max_bytes=self.log_max_bytes, backups=self.log_backups,
                        budget=self.log_budget),
            tail_bytes=self.tail_bytes,
            tail_lines=self.tail_lines,
            deliveries=self._deliveries,
        )
        proc = TrackedProcess(self, name=name, command=display, root=root, tag=tag, cwd=cwd,
                              sink=sink, checks=checks)
        with self._lock:
            if root.container is not None:
                self._containers.append(root.container)
            self._procs.pop(name, None)
            self._procs[name] = proc
        try:
            for check in checks:
                check.prepare(proc)  # before the drain: no output slips past
        except BaseException:
            self._supervise(proc)  # drained even now, and stopped: nothing is left
            proc._transition(Phase.FAILED)
            proc.stop()
            raise
        self._supervise(proc)
        self._metrics.track(proc)
        return proc

    def _log_stem(self, name: str) -> str:
        """One log per name, never shared with another name: a longer hash if two met."""
        with self._lock:
            for digits in (8, 16, 32):
                stem = log_stem(name, digits=digits)
                if self._log_names.setdefault(stem, name) == name:
                    return stem
        raise AssertionError(f"128-bit hash collision for {name!r}")  # pragma: no cover

    def _supervise(self, proc: TrackedProcess) -> None:
        self._loop.supervise(proc._root, proc._sink, on_exit=proc._root_exited,
                             drained=proc._drained, on_event=proc._keeper_event)

    def _lifeline_read(self) -> int:
        """The read end every keeper watches; only this process holds the write end."""
        with self._lock:
            if self._lifeline is None:
                self._lifeline = make_lifeline()
            return self._lifeline[0]

    def _close_lifeline(self) -> None:
        with self._lock:
            lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            for fd in lifeline:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # --- readiness --------------------------------------------------------------------------
    def _check_ports(self, checks: Sequence[ReadinessCheck]) -> None:
        """A taken port fails before anything starts, naming its holder (and, when it is
        one of ours, its tracked name). Scans only when a port is taken."""
        for c in checks:
            if c.port and port_holder(c.port, c.host) is not None:
                check_port_free(c.port, c.host, owners=self._owners())

    def _owners(self) -> dict[int, str]:
        """pid -> tracked name for every live member of every tree, from one scan."""
        procs = self.processes()
        found = discover([p._target() for p in procs], scan_processes(), exclude=set())
        return {pid: t.name for pid, (t, _, _) in found.items()}

    # --- teardown ---------------------------------------------------------------------------
    def cleanup(self, *names: str, grace: float | None = None) -> CleanupReport:
        """Phased teardown of the named trees, or of every tree. Blocks up to grace + ~1 s.
        Unknown names raise UnknownProcessError; the teardown itself never raises."""
        procs = [self.get(n) for n in names] if names else self.processes()
        return self._teardown(procs, grace)

    async def acleanup(self, *names: str, grace: float | None = None) -> CleanupReport:
        """cleanup() on a worker thread: the scans stay off the caller's event loop."""
        return await anyio.to_thread.run_sync(partial(self.cleanup, *names, grace=grace))

    def _changed(self) -> None:
        """Tell the display that something changed; its trouble is not ours."""
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:  # reported once: it runs for every read of output
            if not self._on_change_failed:
                self._on_change_failed = True
                log.exception("the on_change callback failed (further failures: debug)")
            else:
                log.debug("the on_change callback failed again", exc_info=True)

    def _foreign(self) -> bool:
        return os.getpid() != self._owner_pid

    def _foreign_message(self) -> str:
        return (f"this Tracker belongs to process {self._owner_pid}; a forked child "
                f"(pid {os.getpid()}) cannot start or stop its processes")

    def _teardown(self, procs: Sequence[TrackedProcess], grace: float | None) -> CleanupReport:
        if self._foreign():  # e.g. a multiprocessing worker: never touch the parent's trees
            return CleanupReport(messages=[self._foreign_message()])
        grace = self.grace if grace is None else grace
        was_running = [p for p in procs if p.is_running()]
        targets = [p._target() for p in procs]
        for p in was_running:  # before any signal: its exit must read "stopped", not a crash
            p._transition(Phase.STOPPED)
        report = run_teardown(targets, grace=grace)
        for p in procs:  # Windows ends the stop sequence with TerminateJobObject
            if p._root.container is not None:
                p._root.container.terminate()
        for p in procs:  # let the drain take in the last output before we report
            p._exited.wait(max(0.0, 1.0 - report.duration) if p in was_running else 0)
        return report

    def close(self, *, grace: float | None = None) -> CleanupReport:
        """Tear down every tree and stop the background loop. Idempotent; never raises."""
        with self._start_lock, self._lock:
            if self.closed:
                return CleanupReport()
            self.closed = True
        if self._foreign():
            return CleanupReport(messages=[self._foreign_message()])
        report = self._teardown(self.processes(), grace)
        deadline = time.monotonic() + 1.0
        for p in self.processes():
            p._drained.wait(max(0.0, deadline - time.monotonic()))
        self._metrics.stop()  # a last sample, and every remaining metrics CSV
        try:
            self._loop.stop()
        except Exception as exc:  # closing must not raise; say what went wrong
            log.exception("stopping the drain loop failed")
            report.messages.append(f"stopping the drain loop failed: {exc}")
        self._zygote.close()  # before the lifeline: its EOF would end the zygote too
        self._close_lifeline()
        with self._lock:
            jobs, self._containers = self._containers, []
        for job in jobs:  # Windows: closing a job kills what is left
            job.close()
        _live_trackers.discard(self)
        return report

    async def aclose(self, *, grace: float | None = None) -> CleanupReport:
        return await anyio.to_thread.run_sync(partial(self.close, grace=grace))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
