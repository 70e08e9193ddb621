"""Tracker (one session) and TrackedProcess (one launch). No IPython, no widgets."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .. import _platform as plat
from .._keeper.client import make_lifeline, spawn_kept
from .._keeper.protocol import read_status_events
from .._proc.discovery import ProcessInfo, Target, discover, tree_of, trees_of
from .._proc.identity import ProcId, create_time_from_start
from .._proc.scan import get_record, scan_processes
from .._proc.teardown import CleanupReport, run_teardown
from ..errors import (
    LaunchError,
    NameInUseError,
    NotReadyError,
    TrackerClosedError,
    UnknownProcessError,
)
from .drain import STDERR, STDOUT, OutputChunk, OutputSink, RotatingLog
from .naming import base_name, free_name
from .state import Phase, ProcessState

if TYPE_CHECKING:
    from .ready import ReadinessCheck

    ReadySpec = ReadinessCheck | Sequence[ReadinessCheck] | None
else:
    ReadySpec = Any

_FAIR_SHARE = 4 << 20
_READ_SIZE = 1 << 18  # larger single writes to the log get slower on some disks
# Words a shell runs itself: a script that starts with one of these needs no executable.
_SHELL_WORDS = frozenset(
    {
        "!", ".", ":", "[", "[[", "{", "(", "alias", "bg", "break", "builtin", "caller", "case",
        "cd", "command", "compgen", "complete", "continue", "declare", "dirs", "disown", "echo",
        "enable", "eval", "exec", "exit", "export", "false", "fc", "fg", "for", "function",
        "getopts", "hash", "help", "history", "if", "jobs", "kill", "let", "local", "logout",
        "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray", "readonly", "return",
        "select", "set", "shift", "shopt", "source", "suspend", "test", "time", "times", "trap",
        "true", "type", "typeset", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
        "coproc"
    }
)
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]+")

_live_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()


def _drop_lifelines_in_child() -> None:
    """A forked child (multiprocessing "fork") must not hold a lifeline open: the keepers
    would miss the kernel's death until their pidfd backup notices. Nor may its exit tear
    down its parent's processes, so it forgets the live trackers."""
    for tracker in list(_live_trackers):
        if tracker._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(tracker._lifeline[1])
    _live_trackers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_lifelines_in_child)


@atexit.register
def _close_live_trackers() -> None:
    """Plain Python scripts get the same promise as notebooks: nothing outlives us."""
    for tracker in list(_live_trackers):
        tracker.close(grace=1.0)


class TrackedProcess:
    """One tracked launch: its root process, its output and its tree."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        name: str,
        command: str,
        popen: subprocess.Popen[bytes],
        pid: int,
        create_time: float,
        tag: str,
        cwd: Path,
        sink: OutputSink,
    ) -> None:
        self.tracker = tracker
        self.name = name
        self.command = command
        self.pid = pid
        self.tag = tag
        self.cwd = cwd
        self.log_path = sink.log.path
        self.started_at = time.time()
        self.create_time = create_time
        self.returncode: int | None = None
        self.stopped = False
        self.ready_state: str | None = None
        self.ready_seconds: float | None = None
        self._popen = popen
        self._sink = sink
        self._exited = threading.Event()
        self._drained = threading.Event()
        self._exit_callbacks: list[Callable[[TrackedProcess], None]] = []
        self._checks: list[ReadinessCheck] = []
        self._fds: tuple[int, int] = (-1, -1)
        self._helpers: tuple[ProcId, ...] = ()  # our keeper: never signalled or reported
        self._status_fd: int | None = None  # the keeper's status pipe (POSIX)

    def __repr__(self) -> str:
        return f"<TrackedProcess {self.name!r} pid={self.pid} {self.state}>"

    @property
    def state(self) -> ProcessState:
        """The state machine's current state (see ``_engine/state.py``)."""
        rc, ready = self.returncode, self.ready_state
        if ready == "failed":
            phase = Phase.FAILED
        elif rc is None:
            phase = {"starting": Phase.STARTING, "ready": Phase.READY}.get(
                ready or "", Phase.RUNNING)
        elif self.stopped:
            phase = Phase.STOPPED
        else:
            phase = Phase.KILLED if rc < 0 else Phase.EXITED
        return ProcessState(phase, rc, self.ready_seconds if ready == "ready" else None)

    def is_running(self) -> bool:
        """True while the root command runs (its tree may outlive it: see tree())."""
        return self.returncode is None

    def has_live_tree(self) -> bool:
        """True while the root or anything of its tree lives (a launcher such as
        ``pg_ctl start`` exits 0 and leaves its server running)."""
        if self.returncode is None:
            return True
        if self._helpers and self._popen.poll() is not None:
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
        return self._sink.log.error

    def log_files(self) -> list[Path]:
        """The log and its rotated backups, oldest first."""
        return self._sink.log.files()

    def tail(self, lines: int = 50, *, stream: str | None = None) -> str:
        """The last ``lines`` lines of output (stdout and stderr interleaved, or one stream)."""
        return self._sink.tail(lines, stream=stream)

    def tail_chunks(self, lines: int = 50) -> list[tuple[str, str]]:
        """The last lines as (stream, text) runs, oldest first: for telling stderr apart."""
        return self._sink.tail_chunks(lines)

    def subscribe(self, callback: Callable[[list[OutputChunk]], None]) -> Callable[[], None]:
        """Call ``callback`` with batches of new output, on a thread of its own.
        Returns the function that unsubscribes."""
        return self._sink.subscribe(callback)

    def on_exit(self, callback: Callable[[TrackedProcess], None]) -> None:
        """Call ``callback(self)`` once the root exits, on a thread of its own (at once, on
        the caller's thread, if it already has)."""
        with self.tracker._lock:
            if not self._exited.is_set():
                self._exit_callbacks.append(callback)
                return
        callback(self)

    # --- lifetime ---------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the root command exits; its return code, or None on timeout."""
        self._exited.wait(timeout)
        return self.returncode

    def tree(self) -> list[ProcessInfo]:
        """The live processes of this tree: descendants, group members and tag matches."""
        return tree_of(self._target())

    def stop(self, *, grace: float | None = None) -> CleanupReport:
        """Phased teardown of this tree; blocks up to grace + about 1 s. Never raises."""
        return self.tracker._teardown([self], grace)

    async def astop(self, *, grace: float | None = None) -> CleanupReport:
        return await anyio.to_thread.run_sync(partial(self.stop, grace=grace))

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Block until every readiness check passes; seconds it took. On failure the
        tree is torn down and a NotReadyError names why, with the last output lines."""
        return self.tracker._wait_ready(self, timeout)

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
            root_exited=self.returncode is not None and not self.stopped,
            command=self.command,
        )

    def _reap(self) -> bool:
        return self._popen.poll() is not None

    def _set_exited(self, returncode: int) -> None:
        with self.tracker._lock:
            self.returncode = returncode
            self._exited.set()
            callbacks, self._exit_callbacks = self._exit_callbacks, []
        self.tracker._changed()
        if callbacks:  # off the loop thread: a listener may start, stop or block
            threading.Thread(
                target=self._run_exit_callbacks, args=(callbacks,), daemon=True,
                name="ipyproctrack-on-exit",
            ).start()

    def _run_exit_callbacks(self, callbacks: list[Callable[[TrackedProcess], None]]) -> None:
        for cb in callbacks:
            with contextlib.suppress(Exception):  # a broken listener harms no other
                cb(self)


class Tracker(AbstractContextManager["Tracker"]):
    """One session: a unique tag, one background loop thread, one log directory."""

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        grace: float = 3.0,
        tail_lines: int = 2000,
        tail_bytes: int = 1 << 20,
        log_max_bytes: int = 50 * 2**20,
        log_backups: int = 10,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change`` is called, from the drain thread, whenever a tracked process writes
        output, exits or becomes ready: a cheap wake-up for a display (the widgets use it
        to sleep while nothing happens). It must not block."""
        self._on_change = on_change
        self.session_tag = f"{os.getpid()}-{secrets.token_hex(6)}"
        if log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix=f"ipyproctrack-{self.session_tag}-"))
        else:
            self.log_dir = Path(log_dir).expanduser().resolve()
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LaunchError(f"cannot create log directory {self.log_dir}: "
                                  f"{exc.strerror}") from None
        self.grace = grace
        self.tail_lines = tail_lines
        self.tail_bytes = tail_bytes
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.closed = False
        self._owner_pid = os.getpid()  # a forked child inherits this object, not its processes
        self._lock = threading.RLock()
        self._start_lock = threading.RLock()
        self._procs: dict[str, TrackedProcess] = {}
        self._counter = itertools.count(1)
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._lifeline: tuple[int, int] | None = None
        self._containers: dict[int, plat.Containment | None] = {}
        _live_trackers.add(self)

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
    ) -> TrackedProcess:
        """Start ``command`` in its own session, tagged, with its output drained at once.

        A str is run by bash (or sh); a list is executed as it is. A name whose tree still
        runs is a NameInUseError, unless ``replace=True`` stops that tree first (with
        ``replace_grace``, default the Tracker's grace). ``on_launched(proc)`` runs once the
        process exists, before any readiness wait. With ``ready``, block until the checks
        pass (see wait_ready). Raises LaunchError before anything runs when the command,
        its directory or the name cannot be used."""
        argv, display = _argv_of(command)
        workdir = _checked_cwd(cwd)
        full_env = self._child_env(env)
        _check_executable(command, argv, full_env, workdir)
        checks = _as_checks(ready)
        # One launch at a time: two starts of one name, or a close() racing a start, must
        # never leave a tree that the registry has forgotten.
        with self._start_lock:
            self._check_open()
            with self._lock:
                name = self._pick_name(name, command)
                old = self._procs.get(name)
            if old is not None and old.has_live_tree():
                if not replace:
                    what = ("is still running" if old.is_running()
                            else f"exited {old.returncode} but its tree still runs")
                    raise NameInUseError(
                        f"{name!r} {what} (pid {old.pid}); stop it first or use replace=True"
                    )
                old.stop(grace=replace_grace)
            self._check_ports(checks)
            proc = self._launch(argv, display, name=name, cwd=workdir, env=full_env)
            try:
                if checks:
                    proc._checks = checks
                    proc.ready_state = "starting"
                    for check in checks:
                        check.prepare(proc)  # before the drain: no output slips past
            except BaseException:
                self._portal_start(proc)  # drained even now, and stopped: nothing is left
                proc.ready_state = "failed"
                proc.stop()
                raise
            self._portal_start(proc)

        if on_launched is not None:
            on_launched(proc)
        if checks:
            self._wait_ready(proc, ready_timeout)
        return proc

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
    ) -> TrackedProcess:
        """start() on a worker thread, so the caller's event loop keeps running."""
        return await anyio.to_thread.run_sync(
            partial(self.start, command, name=name, cwd=cwd, env=env, replace=replace,
                    replace_grace=replace_grace, ready=ready, ready_timeout=ready_timeout,
                    on_launched=on_launched)
        )

    def _child_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        full = dict(os.environ)
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key:
                raise LaunchError(f"bad environment entry {key!r}={value!r}: "
                                  "keys and values must be strings, keys without '='")
            full[key] = value
        full[plat.TAG_SESSION] = self.session_tag
        return full

    def _pick_name(self, name: str | None, command: str | Sequence[str]) -> str:
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise LaunchError(f"bad name {name!r}: use a non-empty string")
            return name
        return free_name(base_name(command), self._procs)

    def _launch(
        self, argv: list[str], display: str, *, name: str, cwd: Path, env: dict[str, str]
    ) -> TrackedProcess:
        tag = f"{self.session_tag}.{next(self._counter)}"
        env[plat.TAG_PROCESS] = tag
        log_path = self.log_dir / f"{_NAME_OK.sub('_', name)}.log"
        sink = OutputSink(
            RotatingLog(log_path, max_bytes=self.log_max_bytes, backups=self.log_backups),
            tail_bytes=self.tail_bytes,
            tail_lines=self.tail_lines,
            on_output=self._on_change,
        )
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        kept = None
        try:
            if plat.USE_KEEPER:
                # The keeper is the command's parent: a subreaper (Linux) and a watchdog
                # that tears the tree down if this process dies without running any Python.
                kept = spawn_kept(
                    argv, cwd=str(cwd), env=env, stdout=out_w, stderr=err_w,
                    lifeline_fd=self._lifeline_read(), grace=min(self.grace, 1.5),
                    subreaper=plat.HAS_SUBREAPER, tag=tag, session=self.session_tag,
                )
                popen = kept.keeper
            else:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    cwd=cwd,
                    env=env,
                    close_fds=True,
                    **plat.popen_kwargs(),
                )
        except (OSError, LaunchError) as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            sink.close()
            if isinstance(exc, LaunchError):
                raise
            raise LaunchError(_launch_failure(argv[0], exc)) from None
        finally:
            os.close(out_w)
            os.close(err_w)
        helpers: tuple[ProcId, ...] = ()
        if kept is not None:
            pid = kept.pid
            # The keeper read the start time before anyone could reap the command, so it
            # cannot belong to a recycled pid; a fresh read is only the fallback.
            ctime = create_time_from_start(kept.start_time)
            if ctime is None:
                rec = get_record(pid)
                ctime = rec.create_time if rec else time.time()
            keeper_rec = get_record(popen.pid)
            helpers = (ProcId(popen.pid, keeper_rec.create_time if keeper_rec else 0.0),)
        else:
            pid = popen.pid
            self._containers[pid] = plat.contain(pid)  # Windows: a kill-on-close Job Object
            rec = get_record(pid)  # not reaped yet, so the pid cannot be reused
            ctime = rec.create_time if rec else time.time()
        proc = TrackedProcess(
            self, name=name, command=display, popen=popen, pid=pid,
            create_time=ctime, tag=tag, cwd=cwd, sink=sink,
        )
        proc._helpers = helpers
        proc._status_fd = kept.status_fd if kept is not None else None
        proc._fds = (out_r, err_r)
        with self._lock:
            self._procs.pop(name, None)
            self._procs[name] = proc
        return proc

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

    # --- the background loop ----------------------------------------------------------------
    def _get_portal(self) -> anyio.from_thread.BlockingPortal:
        with self._lock:
            if self._portal is None:
                cm = anyio.from_thread.start_blocking_portal()
                self._portal = cm.__enter__()
                self._portal_cm = cm
            return self._portal

    def _portal_start(self, proc: TrackedProcess) -> None:
        self._get_portal().start_task_soon(self._supervise, proc)

    async def _supervise(self, proc: TrackedProcess) -> None:
        out_fd, err_fd = proc._fds
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, proc._sink, out_fd, STDOUT)
                tg.start_soon(_drain, proc._sink, err_fd, STDERR)
                tg.start_soon(_watch_exit, proc)
        finally:
            try:
                proc._sink.close()
            finally:
                proc._drained.set()

    # --- readiness --------------------------------------------------------------------------
    def _check_ports(self, checks: Sequence[ReadinessCheck]) -> None:
        """A taken port fails before anything starts, naming its holder (and, when it is
        one of ours, its tracked name). Scans only when a port is taken."""
        from .ports import check_port_free, port_holder

        for c in checks:
            if c.port and port_holder(c.port, c.host) is not None:
                check_port_free(c.port, c.host, owners=self._owners())

    def _owners(self) -> dict[int, str]:
        """pid -> tracked name for every live member of every tree, from one scan."""
        procs = self.processes()
        found = discover([p._target() for p in procs], scan_processes(), exclude=set())
        return {pid: t.name for pid, (t, _, _) in found.items()}

    def _wait_ready(self, proc: TrackedProcess, timeout: float) -> float:
        from .ready import close_checks, wait_until_ready

        if not proc._checks:
            return 0.0
        proc.ready_state = "starting"
        future = self._get_portal().start_task_soon(
            partial(wait_until_ready, proc, proc._checks, timeout=timeout)
        )
        try:
            seconds = future.result()
        except NotReadyError:
            proc.ready_state = "failed"
            close_checks(proc._checks)
            proc.stop()
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt): stop waiting; the process runs on, as an
            # interrupt must never stop a tracked process, and wait_ready() may be called
            # again, so the checks stay armed.
            future.cancel()
            proc.ready_state = None
            raise
        close_checks(proc._checks)
        proc.ready_state, proc.ready_seconds = "ready", seconds
        self._changed()
        return float(seconds)

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
        if self._on_change is not None:
            with contextlib.suppress(Exception):  # a display's trouble is not ours
                self._on_change()

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
            p.stopped = True
        report = run_teardown(targets, grace=grace)
        for p in procs:  # Windows ends the stop sequence with TerminateJobObject
            job = self._containers.get(p.pid)
            if job is not None:
                job.terminate()
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
        with self._lock:
            portal, cm = self._portal, self._portal_cm
            self._portal = self._portal_cm = None
        if portal is not None and cm is not None:
            try:
                portal.call(portal.stop, True)
                cm.__exit__(None, None, None)
            except Exception as exc:  # closing must not raise; say what went wrong
                report.messages.append(f"stopping the drain loop failed: {exc}")
        self._close_lifeline()
        for job in self._containers.values():  # Windows: closing a job kills what is left
            if job is not None:
                job.close()
        self._containers.clear()
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


# --- the loop's tasks ------------------------------------------------------------------------


async def _drain(sink: OutputSink, fd: int, stream: str) -> None:
    """Read until EOF, whatever the caller's thread is doing."""
    try:
        if not plat.ASYNC_PIPES:
            await _drain_threaded(sink, fd, stream)
            return
        os.set_blocking(fd, False)
        plat.enlarge_pipe(fd)
        run = 0  # bytes read since the loop last ran anything else
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                run = 0
                continue
            if not data:
                return
            sink.feed(stream, data)
            run += len(data)
            if run >= _FAIR_SHARE:  # in a flood, other pipes get their turn now and then
                run = 0
                await anyio.lowlevel.checkpoint()
    except OSError as exc:
        sink.feed(STDERR, f"\n[ipyproctrack: reading {stream} failed: {exc}]\n".encode())
    finally:
        os.close(fd)


async def _drain_threaded(sink: OutputSink, fd: int, stream: str) -> None:
    limiter = anyio.CapacityLimiter(1)
    while data := await anyio.to_thread.run_sync(
        os.read, fd, _READ_SIZE, abandon_on_cancel=True, limiter=limiter
    ):
        sink.feed(stream, data)


async def _watch_exit(proc: TrackedProcess) -> None:
    popen = proc._popen
    if proc._status_fd is not None:
        await _follow_keeper(proc, proc._status_fd)
    else:
        waiter = plat.open_exit_waiter(popen.pid)
        if waiter is not None:
            try:
                await anyio.wait_readable(waiter)
            finally:
                os.close(waiter)
    delay = 0.005
    while (rc := popen.poll()) is None:
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.2)
    if proc.returncode is None:
        # Without a keeper this is the command's code; with one, the keeper died before it
        # could report (it mirrors signal deaths as 128+n).
        if proc._status_fd is not None and rc > 128:
            rc = 128 - rc
        proc._set_exited(rc)


async def _follow_keeper(proc: TrackedProcess, fd: int) -> None:
    """Read the keeper's status events until it exits (EOF)."""
    buf = bytearray()
    try:
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not data:
                return
            for event in read_status_events(buf, data):
                if event.get("event") == "exited" and isinstance(event.get("returncode"), int):
                    rc = event["returncode"]
                    assert isinstance(rc, int)
                    proc._set_exited(rc)
    except OSError:
        return
    finally:
        os.close(fd)


# --- argument checks -------------------------------------------------------------------------


def _argv_of(command: str | Sequence[str]) -> tuple[list[str], str]:
    if isinstance(command, str):
        if not command.strip():
            raise LaunchError("empty command: give a shell script or a list of arguments")
        return plat.shell_argv(command), command.strip()
    if isinstance(command, bytes):
        raise LaunchError("command must be str or a list of str, not bytes")
    argv = [os.fspath(a) for a in command]
    if not argv or not argv[0]:
        raise LaunchError("empty command: give a shell script or a list of arguments")
    return argv, shlex.join(argv)


def _checked_cwd(cwd: str | os.PathLike[str] | None) -> Path:
    path = Path(cwd).expanduser() if cwd is not None else Path.cwd()
    if not path.exists():
        raise LaunchError(f"directory not found: {path}")
    if not path.is_dir():
        raise LaunchError(f"not a directory: {path}")
    return path.resolve()


def _check_executable(
    command: str | Sequence[str], argv: list[str], env: Mapping[str, str], cwd: Path
) -> None:
    """Catch the missing command before anything runs, also for one-line shell scripts."""
    if isinstance(command, str):
        first = command.strip().splitlines()[0]
        try:
            words = shlex.split(first, comments=True)
        except ValueError:
            return  # unbalanced quotes and the like: let the shell say what it thinks
        words = [w for w in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]
        if not words or words[0] in _SHELL_WORDS or any(c in first for c in "(){}|&;<>`$"):
            return
        exe = words[0]
    else:
        exe = argv[0]
    if os.sep in exe or (os.altsep and os.altsep in exe):
        path = exe if os.path.isabs(exe) else str(cwd / exe)
        if not os.path.exists(path):
            raise LaunchError(f"command not found: {exe}")
        return
    if shutil.which(exe, path=env.get("PATH")) is None:
        raise LaunchError(f"command not found: {exe}")


def _launch_failure(exe: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exe}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exe}"
    return f"cannot start {exe}: {exc.strerror or exc}"


def _as_checks(ready: ReadySpec) -> list[ReadinessCheck]:
    if ready is None:
        return []
    from .ready import as_checks

    return as_checks(ready)
