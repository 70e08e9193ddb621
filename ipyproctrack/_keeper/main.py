"""The POSIX keeper: one small helper process per tracked launch.

The engine starts it as ``python -I -S <pkgdir>/_keeper/__main__.py <config>`` in a new
session (``client.spawn_kept``; the config and the status events are in ``protocol``).
The keeper is the parent of the tracked command, a Linux child subreaper (so that
double-forked daemons re-parent to it, even the ones that wipe their environment), and
the watchdog that tears the launch down when the kernel is gone. It imports only the
standard library, ``_platform``, ``_proc`` and ``protocol``, and the teardown modules only
when the kernel is gone, so it starts fast and stays small.

Lifetime:
    * Once the command runs, the keeper points its own stdin/stdout/stderr at /dev/null,
      so the command's output pipes reach EOF when the command's tree closes them.
    * SIGTERM, SIGINT and SIGHUP are ignored (the command gets them back at their
      defaults). The engine's teardown signals the keeper's process group; the keeper
      just keeps reaping until its subtree is empty.
    * Every child, including orphans re-parented to the subreaper, is reaped by
      ``waitpid(-1)`` on SIGCHLD. This is fine here: the keeper is our own process and
      has no other child-waiting code.
    * When no child is left (ECHILD), the keeper exits with the command's exit status,
      or 128 + n when the command was killed by signal n (like a shell; the exact
      negative returncode is in the "exited" event).
    * Without the subreaper (macOS, BSD; on Linux when ``subreaper`` is false or the
      prctl failed), orphans leave the keeper's subtree, so "no child left" does not mean
      "nothing left". The keeper then stays while a live (non-zombie) process still
      carries its exact IPYPROCTRACK_PROCESS tag, the daemons that kept their
      environment: it looks about once a second (a poll with a timeout, no busy loop),
      and exits once none is left. Should the kernel die meanwhile, it tears them down.
    * The kernel is gone when the lifeline reads EOF (only the kernel holds the write
      end, so closing it on purpose also means "tear the session down"), when the
      kernel's pidfd turns readable (Linux), or when the keeper's parent changes (the
      kernel started it). Elsewhere, without a pidfd and when the kernel is not the
      parent, the kernel's pid is polled once a second. Then the keeper runs the one
      phased teardown (``_proc.teardown.run_teardown``) over its whole subtree plus
      every process tagged with its IPYPROCTRACK_PROCESS value, and exits.
    * With a limit (``max_memory``, ``max_runtime``: ``limits.py``) the keeper samples its
      tree about every 0.5 s; past a limit it reports ``limit_exceeded`` on the status
      pipe, runs the same phased teardown, and exits once its subtree is empty.
"""

from __future__ import annotations

import _thread
import errno
import os
import select
import sys
import time

from .. import _platform as plat
from .._platform._csignal import signal
from .._proc import procfs
from .._proc.identity import CLK_TCK, ProcId, same_process
from .._proc.scan import get_record, scan_processes, start_seconds
from .limits import CHECK_EVERY, Limits, describe
from .protocol import encode_event, read_config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _thread import LockType

__all__ = ("Keeper", "main")

_WATCH_MS = 1000  # how often the loop looks at the kernel without a wake-up
PUMP_LINGER = 5.0  # s the keeper waits, at its end, for its pump to read the pipes' end
_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Python ignores SIGPIPE and SIGXFSZ; the command must get every one of these at default.
_RESET_IN_CHILD = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGPIPE", "SIGXFSZ")
    if hasattr(signal, name)
)


def _same_process(pid: int, start: float) -> bool:
    """Is ``pid`` alive (not a zombie) and, when ``start`` is known, that process?"""
    if plat.HAS_PROCFS:
        st = procfs.read_stat(pid)
        if st is None or st[0] in (b"Z", b"X"):
            return False
        return start <= 0.0 or same_process(st[4] / CLK_TCK, start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _detach_stdio() -> None:
    """Let go of the command's stdout/stderr pipes: the engine then sees EOF when the
    command's own tree closes them, not when the keeper exits. From here on the keeper
    speaks only through the status pipe."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD handler: the wake-up fd does the work."""


def _int(config: dict[str, object], key: str, default: int) -> int:
    value = config.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(config: dict[str, object], key: str, default: float) -> float:
    value = config.get(key, default)
    return float(value) if isinstance(value, int | float) else default


class Keeper:
    """The keeper's state and main loop. ``run()`` returns the process exit status."""

    def __init__(self, config: dict[str, object]) -> None:
        argv = config.get("argv")
        self.argv = [str(a) for a in argv] if isinstance(argv, list) else []
        self.lifeline_fd = _int(config, "lifeline_fd", -1)
        self.status_fd = _int(config, "status_fd", -1)
        self.kernel_pid = _int(config, "kernel_pid", 0)
        self.kernel_start = _float(config, "kernel_start", 0.0)
        self.grace = max(_float(config, "grace", 3.0), 0.0)
        self.subreaper = bool(config.get("subreaper", False))
        self.tag = str(config.get("tag", ""))
        self.session = str(config.get("session", ""))
        self.name = str(config.get("name", "")) or self.tag or "keeper"
        self.record = str(config.get("record", ""))
        self.limits = Limits(max_memory=_int(config, "max_memory", 0),
                             max_runtime=_float(config, "max_runtime", 0.0))
        self.started_at = 0.0  # monotonic time the command started (for max_runtime)
        self.next_limit_check = 0.0
        self.main_pid = 0
        self.main_rc: int | None = None
        self.pidfd: int | None = None
        self.parent: int | None = None  # the kernel, when it is our parent
        self.wake_r = self.wake_w = -1
        self.gone_reason = ""
        self.is_subreaper = False  # orphans re-parent to us (set by run())
        self.tagged_seen: list[ProcId] = []  # tagged escapees seen by the last look
        pump = config.get("pump")  # [stdout, stderr, socket]: the pump's (pump.py)
        self.pump_fds = [int(fd) for fd in pump] if isinstance(pump, list) and len(pump) == 3 \
            else []
        self.pump_done: LockType | None = None  # released by the pump's thread at its end

    # status pipe

    def emit(self, event: dict[str, object]) -> None:
        if self.status_fd < 0:
            return
        try:  # noqa: SIM105 (no contextlib: the keeper imports little)
            os.write(self.status_fd, encode_event(event))
        except OSError:  # the engine is gone or closed its end: nobody to tell
            pass

    # set-up

    def _own_fds(self) -> None:
        """The command must not inherit the lifeline, the status pipe or the pump's ends."""
        for attr in ("lifeline_fd", "status_fd"):
            fd = getattr(self, attr)
            if fd < 0:
                continue
            try:
                os.set_inheritable(fd, False)
            except OSError:  # not open: behave as if none was given
                setattr(self, attr, -1)
        try:
            for fd in self.pump_fds:
                os.set_inheritable(fd, False)
        except OSError:
            self.pump_fds = []

    def _start_pump(self) -> None:
        if not self.pump_fds:
            return
        from .pump import Pump

        pump = Pump(*self.pump_fds)
        done = self.pump_done = _thread.allocate_lock()
        done.acquire()

        def run() -> None:
            try:
                pump.run()
            except Exception as exc:  # the output is lost from here on: say so
                self.emit({"event": "keeper_error",
                           "message": f"pump: {type(exc).__name__}: {exc}"})
            finally:
                done.release()

        # _thread, not threading: the keeper imports little (threading is a module tree)
        _thread.start_new_thread(run, ())

    def _finish_pump(self) -> None:
        """Let the pump take in the last output: the command's tree is gone, so its pipes
        end at once, unless something outside the tree holds them."""
        if self.pump_done is not None and self.pump_done.acquire(timeout=PUMP_LINGER):
            self.pump_done.release()

    def _watch_kernel(self) -> bool:
        """Start watching the kernel. False when it is already gone."""
        if self.lifeline_fd >= 0:
            # poll, never select: the kernel of a busy notebook may have more than 1023
            # fds open, and select() cannot take an fd number of 1024 or more.
            poller = select.poll()
            poller.register(self.lifeline_fd, select.POLLIN)
            for _, events in poller.poll(0):
                if events & select.POLLNVAL:  # not open after all: no lifeline
                    self.lifeline_fd = -1
                elif not self._read_lifeline():
                    return False
        pid = self.kernel_pid
        if pid <= 0:
            return True
        if os.getppid() == pid:
            self.parent = pid
        if hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return False
            except OSError:
                fd = -1
            if fd >= 0:
                # The pidfd pins whatever process had the pid when it was opened; if that
                # one still has the kernel's start time, the pidfd is the kernel's.
                if not _same_process(pid, self.kernel_start):
                    os.close(fd)
                    return False
                self.pidfd = fd
                return True
        return _same_process(pid, self.kernel_start)

    def _read_lifeline(self) -> bool:
        """Read what is there; False on EOF (the kernel closed or lost the write end)."""
        try:
            return bool(os.read(self.lifeline_fd, 512))
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _kernel_gone(self) -> bool:
        if self.gone_reason:
            return True
        if self.parent is not None:  # the kernel started us: re-parenting means it died
            gone = os.getppid() != self.parent
        elif self.pidfd is None and self.kernel_pid > 0:  # no pidfd: poll the pid
            gone = not _same_process(self.kernel_pid, self.kernel_start)
        else:
            gone = False
        if gone:
            self.gone_reason = "kernel"
        return gone

    # reaping

    def reap(self) -> bool:
        """Reap every child that has exited. False once no child is left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.main_pid and self.main_rc is None:
                self.main_rc = os.waitstatus_to_exitcode(status)
                self.emit({"event": "exited", "returncode": self.main_rc})

    def reap_main(self) -> bool:
        """For the engine's teardown: reap, and say whether the command has exited."""
        self.reap()
        return self.main_rc is not None

    def tagged_alive(self) -> bool:
        """Does a live (non-zombie) process other than us and the kernel still carry our
        exact tag? For the keeper without a subreaper, whose orphans are not its children.

        The ones the last look found are checked first (two small reads each on Linux);
        only when all of them are gone does a full scan run.
        """
        if not self.tag:
            return False
        for ident in self.tagged_seen:
            rec = get_record(ident.pid, with_tags=True)
            if (rec is not None and not rec.zombie and ident.matches(rec.create_time)
                    and rec.process_tag == self.tag):
                return True
        skip = (os.getpid(), self.kernel_pid)
        self.tagged_seen = [
            r.ident for r in scan_processes(with_tags=True).values()
            if r.process_tag == self.tag and not r.zombie and r.pid not in skip
        ]
        return bool(self.tagged_seen)

    def exit_status(self) -> int:
        rc = self.main_rc
        if rc is None:
            return 0
        return 128 - rc if rc < 0 else rc & 0xFF

    # the run

    def run(self) -> int:
        for sig in _IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        self._own_fds()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, _noop)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        if not self.argv:
            self.emit({"event": "error", "errno": errno.EINVAL, "message": "empty command"})
            return 127
        subreaper = self.is_subreaper = self.subreaper and plat.set_subreaper()
        if not self._watch_kernel():
            self.emit({"event": "error", "errno": errno.ESRCH, "message": "the kernel is gone"})
            return 1
        try:
            self.main_pid = os.posix_spawnp(
                self.argv[0], self.argv, os.environ, setsigdef=_RESET_IN_CHILD
            )
        except OSError as exc:
            n = exc.errno or 0
            message = (exc.strerror or os.strerror(n)) if n else str(exc)
            self.emit({"event": "error", "errno": n, "message": message})
            return 127
        # Unreaped until the loop below, so its start time cannot belong to a reused pid.
        start = start_seconds(self.main_pid)
        self.started_at = self.next_limit_check = time.monotonic()
        self.emit(
            {"event": "started", "pid": self.main_pid, "start_time": start, "subreaper": subreaper}
        )
        _detach_stdio()
        self._start_pump()
        try:
            return self._loop()
        except Exception as exc:  # a keeper bug must not leave the command unkept
            self.emit({"event": "keeper_error", "message": f"{type(exc).__name__}: {exc}"})
            self.teardown()
            return self.exit_status()
        finally:
            self._finish_pump()

    def _loop(self) -> int:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if self.lifeline_fd >= 0:
            poller.register(self.lifeline_fd, select.POLLIN)
        if self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        next_look = 0.0  # when to look for tagged escapees again (no subreaper only)
        empty_looks = 0
        while True:
            children = self.reap()
            if self._kernel_gone():  # first: a tagged escapee may live outside our subtree
                self.emit({"event": "teardown", "reason": self.gone_reason})
                self.teardown()
                return self.exit_status()
            if children and self.limits and self.check_limits():
                return self.exit_status()
            timeout = self.limit_timeout(_WATCH_MS)
            if not children:
                if self.is_subreaper:  # every orphan was our child: nothing is left
                    return self.exit_status()
                # No subreaper: orphans went to init. Stay the watchdog of those that
                # kept our tag while one lives; look about once a second.
                now = time.monotonic()
                if now >= next_look:
                    if self.tagged_alive():
                        empty_looks = 0
                        next_look = now + _WATCH_MS / 1000
                    else:
                        # Twice, 0.2 s apart: a process in the middle of an exec shows an
                        # empty environment for an instant.
                        empty_looks += 1
                        if empty_looks >= 2:
                            return self.exit_status()
                        next_look = now + 0.2
                timeout = max(1, int((next_look - now) * 1000) + 1)
            for fd, events in poller.poll(timeout):
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif fd == self.lifeline_fd:
                    if events & select.POLLNVAL:
                        poller.unregister(fd)
                        self.lifeline_fd = -1
                    elif not self._read_lifeline():
                        self.gone_reason = "lifeline"
                elif fd == self.pidfd:
                    self.gone_reason = "kernel"

    def check_limits(self) -> bool:
        """Sample the tree when it is time; past a limit, report it and tear the tree
        down. True when it did."""
        now = time.monotonic()
        if now < self.next_limit_check:
            return False
        self.next_limit_check = now + CHECK_EVERY
        hit = self.limits.check(root=os.getpid(), tag=self.tag,
                                exclude=(os.getpid(), self.kernel_pid),
                                runtime=now - self.started_at)
        if hit is None:
            return False
        limit, used, allowed = hit
        message = describe(limit, used, allowed)[0]
        self.emit({"event": "limit_exceeded", "limit": limit, "used": used,
                   "allowed": allowed, "message": message})
        self.teardown(why=message)
        return True

    def limit_timeout(self, default_ms: int) -> int:
        """The poll timeout: the time to the next limit check, while a limit is set."""
        if not self.limits:
            return default_ms
        wait = int((self.next_limit_check - time.monotonic()) * 1000) + 1
        return max(1, min(default_ms, wait))

    def teardown(self, *, why: str = "") -> None:
        """The one phased teardown of our subtree and our tag; then reap what is left
        (bounded). Its modules load only now: the kernel is gone, or ``why``: a limit
        was exceeded (then no kernel-end record is written: the kernel hears of it)."""
        from .._proc.discovery import Target
        from .._proc.teardown import run_teardown

        signal.set_wakeup_fd(-1)
        t0 = time.monotonic()
        me = os.getpid()
        rec = get_record(me)
        target = Target(
            name=self.name,
            root=ProcId(me, rec.create_time if rec else 0.0),  # ourselves: excluded, walked
            tag=self.tag,
            group=None,  # never killpg: the keeper is in its own group
            reap=self.reap_main,
        )
        report = run_teardown([target], grace=self.grace, exclude_pids=(me, self.kernel_pid))
        deadline = time.monotonic() + 1.0
        while self.reap() and time.monotonic() < deadline:
            time.sleep(0.02)
        seconds = round(time.monotonic() - t0, 3)
        self.emit({"event": "teardown_done", "seconds": seconds})
        if why:
            return
        self.write_record(
            [f"kernel gone ({self.gone_reason or 'keeper error'}): the keeper of {self.name} "
             f"(pid {me}) tore its tree down in {seconds:.2f} s, grace {self.grace:g} s",
             *("  " + line for line in report.summary_lines()),
             *("  " + line for line in report.messages)]
        )

    def write_record(self, lines: list[str]) -> None:
        """Append to the kernel-end record: the kernel ran no Python when it died (SIGTERM,
        SIGKILL, OOM), so this is the only account of the teardown. Never follows a link."""
        if not self.record:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.record, flags, 0o600)
            try:
                os.write(fd, ("\n".join(lines) + "\n").encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError as exc:  # the log directory may be gone: say so where we still can
            self.emit({"event": "keeper_error", "message": f"kernel-end record: {exc}"})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -I -S _keeper/__main__.py '<config>'", file=sys.stderr)
        return 2
    return Keeper(read_config(args[0])).run()
