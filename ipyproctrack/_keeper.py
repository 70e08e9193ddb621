"""The POSIX keeper: one small helper process per tracked launch.

The engine starts it as ``python -I _keeper.py <json config>`` in a new session. The keeper
is the parent of the tracked command, a Linux child subreaper (so that double-forked
daemons re-parent to it, even the ones that wipe their environment), and the watchdog that
tears the launch down when the kernel is gone. It imports only the standard library at
start-up, so it starts in about 20 ms and stays near 10 MB of memory.

Config (argv[1], a JSON object):
    argv                the command to run (a list of strings; PATH is searched)
    lifeline_fd         read end of the session's lifeline pipe, or -1 for none
    status_fd           write end of this launch's status pipe, or -1 for none
    kernel_pid          the process whose death ends the session (the kernel)
    kernel_create_time  its start time in seconds since boot (``process_start_time``);
                        0.0 means unknown: no identity check
    grace               seconds between SIGTERM and SIGKILL in the teardown
    subreaper           become a child subreaper first (Linux only; ignored elsewhere)
    tag                 this launch's IPYPROCTRACK_PROCESS value
    session             the session's IPYPROCTRACK_SESSION value (informational)
    teardown            optional: "engine" (default; falls back when the import fails)
                        or "fallback" (always the stdlib-only teardown below)

Status events, one JSON object per line on ``status_fd``:
    {"event": "started", "pid": <command pid>, "start_time": <s since boot, 0.0 unknown>,
     "subreaper": <bool>}
    {"event": "error", "errno": <n>, "message": <strerror>}   the command did not start;
                                                              the keeper exits 127
                                                              (errno ESRCH, exit 1: the
                                                              kernel was already gone)
    {"event": "exited", "returncode": <rc>}      the command ended; rc < 0 is a signal,
                                                 as with Popen.returncode
    {"event": "teardown", "reason": "lifeline" | "kernel"}     the kernel is gone
    {"event": "teardown_done", "by": "engine" | "fallback", "seconds": <s>}
    {"event": "keeper_error", "message": <text>}  a bug in the keeper; it tore down

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
      parent, the kernel's pid is polled once a second. Then the keeper runs the phased
      teardown over its whole subtree plus every process tagged with its
      IPYPROCTRACK_PROCESS value, and exits.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Collection
from types import ModuleType

__all__ = ["Keeper", "main", "process_start_time"]

PR_SET_CHILD_SUBREAPER = 36
TAG_PROCESS = "IPYPROCTRACK_PROCESS"

_WATCH_MS = 1000  # how often the loop looks at the kernel without a wake-up
_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Python ignores SIGPIPE and SIGXFSZ; the command must get every one of these at default.
_RESET_IN_CHILD = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGPIPE", "SIGXFSZ", "SIGXFZ")
    if hasattr(signal, name)
)
_HAS_PROC = os.path.exists("/proc/self/stat")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if _HAS_PROC else 100


# --- /proc (Linux) -----------------------------------------------------------------------


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks since boot) from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = raw[raw.rfind(b")") + 2 :].split()
        return fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_start_time(pid: int) -> float:
    """Start time of ``pid`` in seconds since boot (Linux), or 0.0 when unknown.

    Seconds since boot, not since the epoch: the epoch form adds the boot time, which
    different processes can read a second apart. Two processes computing this for the
    same pid always agree exactly.
    """
    st = read_stat(pid) if _HAS_PROC else None
    return st[2] / _CLK_TCK if st is not None else 0.0


def _same_process(pid: int, start_time: float) -> bool:
    """Is ``pid`` alive (not a zombie) and, when ``start_time`` is known, that process?"""
    if _HAS_PROC:
        st = read_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return False
        return start_time <= 0.0 or abs(st[2] / _CLK_TCK - start_time) < 0.5 / _CLK_TCK
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError, ImportError):
        return False
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    return int(prctl(ctypes.c_int(PR_SET_CHILD_SUBREAPER), one, zero, zero, zero)) == 0


def _detach_stdio() -> None:
    """Let go of the command's stdout/stderr pipes: the engine then sees EOF when the
    command's own tree closes them, not when the keeper exits. From here on the keeper
    speaks only through the status pipe."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            if fd != null:
                os.dup2(null, fd)
        if null > 2:
            os.close(null)


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD handler: the wake-up fd does the work."""


# --- the keeper --------------------------------------------------------------------------


def _int(config: dict[str, object], key: str, default: int) -> int:
    value = config.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(config: dict[str, object], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


class Keeper:
    """The keeper's state and main loop. ``run()`` returns the process exit status."""

    def __init__(self, config: dict[str, object]) -> None:
        argv = config.get("argv")
        self.argv = [str(a) for a in argv] if isinstance(argv, list) else []
        self.lifeline_fd = _int(config, "lifeline_fd", -1)
        self.status_fd = _int(config, "status_fd", -1)
        self.kernel_pid = _int(config, "kernel_pid", 0)
        self.kernel_start = _float(config, "kernel_create_time", 0.0)
        self.grace = max(_float(config, "grace", 3.0), 0.0)
        self.subreaper = bool(config.get("subreaper", False))
        self.tag = str(config.get("tag", ""))
        self.session = str(config.get("session", ""))
        self.use_engine = config.get("teardown", "engine") != "fallback"
        self.main_pid = 0
        self.main_rc: int | None = None
        self.pidfd: int | None = None
        self.parent: int | None = None  # the kernel, when it is our parent
        self.wake_r = self.wake_w = -1
        self.gone_reason = ""
        self.is_subreaper = False  # orphans re-parent to us (set by run())
        self.tagged_seen: dict[int, Ident] = {}  # tagged escapees seen by the last look

    # status pipe

    def emit(self, event: dict[str, object]) -> None:
        if self.status_fd < 0:
            return
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with contextlib.suppress(OSError):  # the engine is gone or closed its end
            os.write(self.status_fd, line)

    # set-up

    def _own_fds(self) -> None:
        """The command must not inherit the lifeline or the status pipe."""
        for attr in ("lifeline_fd", "status_fd"):
            fd = getattr(self, attr)
            if fd < 0:
                continue
            try:
                os.set_inheritable(fd, False)
            except OSError:  # not open: behave as if none was given
                setattr(self, attr, -1)

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
        scan = _Scan(0, self.tag, exclude=(os.getpid(), self.kernel_pid))
        if _HAS_PROC:
            for pid, ident in self.tagged_seen.items():
                if _alive(pid, ident, None) and scan.has_tag(pid):
                    return True
        self.tagged_seen = scan.live_tagged()
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
        subreaper = self.is_subreaper = self.subreaper and _set_subreaper()
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
        start = process_start_time(self.main_pid)
        self.emit(
            {"event": "started", "pid": self.main_pid, "start_time": start, "subreaper": subreaper}
        )
        _detach_stdio()
        try:
            return self._loop()
        except Exception as exc:  # a keeper bug must not leave the command unkept
            self.emit({"event": "keeper_error", "message": f"{type(exc).__name__}: {exc}"})
            self.teardown()
            return self.exit_status()

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
            timeout = _WATCH_MS
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

    def teardown(self) -> None:
        """Phased teardown of our subtree and our tag; then reap what is left (bounded)."""
        signal.set_wakeup_fd(-1)
        t0 = time.monotonic()
        by = "engine" if self.use_engine and _engine_teardown(self) else "fallback"
        if by == "fallback":
            _fallback_teardown(
                root=os.getpid(),
                tag=self.tag,
                grace=self.grace,
                exclude=(os.getpid(), self.kernel_pid),
                reap=self.reap,
            )
        deadline = time.monotonic() + 1.0
        while self.reap() and time.monotonic() < deadline:
            time.sleep(0.02)
        seconds = round(time.monotonic() - t0, 3)
        self.emit({"event": "teardown_done", "by": by, "seconds": seconds})


# --- teardown ----------------------------------------------------------------------------


def _engine_teardown(keeper: Keeper) -> bool:
    """Run the engine's own phased teardown. False if it cannot be imported.

    Only ``ipyproctrack._platform`` and ``ipyproctrack._engine.teardown`` are loaded: the
    two parent packages are set up as bare namespaces, so that their ``__init__`` (which
    imports anyio and the whole engine) does not run. That keeps the kernel-gone teardown
    fast.
    """
    try:
        teardown = _import_engine_teardown()
        plat = sys.modules["ipyproctrack._platform"]
        me = os.getpid()
        record = plat.get_record(me)
        if record is None:
            return False
        target = teardown.Target(
            name=keeper.tag or "keeper",
            root=teardown.ProcId(me, record.create_time),  # ourselves: excluded, walked
            tag=keeper.tag,
            group=None,  # never killpg: the keeper is in its own group
            reap=keeper.reap_main,
        )
    except Exception:  # anything missing or renamed: the stdlib teardown does the job
        return False
    teardown.run_teardown([target], grace=keeper.grace, exclude_pids=(me, keeper.kernel_pid))
    return True


def _import_engine_teardown() -> ModuleType:
    import importlib
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for name, path in (("ipyproctrack", here), ("ipyproctrack._engine", f"{here}/_engine")):
        if name not in sys.modules:
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [path]
            sys.modules[name] = importlib.util.module_from_spec(spec)
    return importlib.import_module("ipyproctrack._engine.teardown")


Ident = int | str  # start ticks from /proc, or ps's lstart text


class _Scan:
    """One look at the process table: descendants of ``root`` plus exact tag matches."""

    def __init__(self, root: int, tag: str, exclude: Collection[int]) -> None:
        self.root = root
        self.entry = f"{TAG_PROCESS}={tag}".encode() if tag else b""
        self.exclude = set(exclude)

    def table(self) -> dict[int, tuple[int, Ident, bool]]:
        """pid -> (ppid, identity, zombie)."""
        out: dict[int, tuple[int, Ident, bool]] = {}
        if _HAS_PROC:
            for name in os.listdir("/proc"):
                if name.isdigit():
                    st = read_stat(int(name))
                    if st is not None:
                        out[int(name)] = (st[1], st[2], st[0] in ("Z", "X"))
            return out
        for line in _ps("-A", "-o", "pid=", "-o", "ppid=", "-o", "stat=", "-o", "lstart="):
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
                out[int(parts[0])] = (int(parts[1]), parts[3].strip(), parts[2][:1] == "Z")
        return out

    # What the tag scan sees. Linux: /proc/PID/environ, the environment block of the
    # process's last exec (as the process may have changed it in place), readable for our
    # own user's processes only (others are skipped), empty for zombies and kernel threads.
    # Elsewhere (macOS, BSD): ``ps -E`` appends to the command line the environment the
    # process was exec'd with; later setenv() calls do not show. ps shows it for our own
    # user's processes only, and our tag must be one whitespace-separated word of that
    # text: a tag with spaces never matches, and an argument that happens to read exactly
    # IPYPROCTRACK_PROCESS=<tag> does. A daemon that wiped or replaced its environment is
    # invisible to both: that is what the Linux subreaper is for; elsewhere it is not
    # found. (procps ps on Linux has no -E; Linux always uses /proc.)

    def has_tag(self, pid: int) -> bool:
        """Linux: does /proc/PID/environ hold exactly our tag entry?"""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            return False
        return self.entry in env and self.entry in env.split(b"\0")

    def tagged(self, table: dict[int, tuple[int, Ident, bool]]) -> set[int]:
        if not self.entry:
            return set()
        if _HAS_PROC:
            return {
                pid
                for pid, (_, _, zombie) in table.items()
                if not zombie and pid not in self.exclude and self.has_tag(pid)
            }
        return set(self._ps_tagged())

    def _ps_tagged(self) -> dict[int, bool]:
        """No /proc: pid -> zombie, for every process whose ``ps -E`` text has our tag as a
        whole word (see above for what ps shows)."""
        text = self.entry.decode()
        found: dict[int, bool] = {}
        for line in _ps("-A", "-E", "-ww", "-o", "pid=", "-o", "stat=", "-o", "command="):
            parts = line.split()
            if len(parts) > 2 and parts[0].isdigit() and text in parts[2:]:
                found[int(parts[0])] = parts[1][:1] == "Z"
        return found

    def live_tagged(self) -> dict[int, Ident]:
        """Live (non-zombie) processes carrying our exact tag, excluded ones left out:
        pid -> identity (start ticks on Linux; 0 elsewhere, where only the pid counts)."""
        if not self.entry:
            return {}
        found: dict[int, Ident] = {}
        if _HAS_PROC:  # environ first: most pids fail there, and cheaply
            for name in os.listdir("/proc"):
                if not name.isdigit() or int(name) in self.exclude:
                    continue
                if self.has_tag(int(name)):
                    st = read_stat(int(name))
                    if st is not None and st[0] not in ("Z", "X"):
                        found[int(name)] = st[2]
            return found
        return {
            pid: 0
            for pid, zombie in self._ps_tagged().items()
            if not zombie and pid not in self.exclude
        }

    def targets(self) -> dict[int, Ident]:
        """Live (non-zombie) members: pid -> identity."""
        table = self.table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        members = set()
        stack = [self.root]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in members:
                    members.add(child)
                    stack.append(child)
        members |= self.tagged(table)
        return {
            pid: table[pid][1]
            for pid in members
            if pid in table and not table[pid][2] and pid not in self.exclude
        }


def _ps(*args: str) -> list[str]:
    import subprocess

    # ps runs untagged: with our tag (the keeper's environment is its command's), it would
    # list itself among the tagged processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPYPROCTRACK_")}
    try:
        out = subprocess.run(
            ["ps", *args], capture_output=True, text=True, timeout=10, env=env, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return out.splitlines()


def _alive(pid: int, ident: Ident, table: dict[int, tuple[int, Ident, bool]] | None) -> bool:
    if table is not None:  # no /proc: judged from a fresh ps table
        rec = table.get(pid)
        return rec is not None and rec[1] == ident and not rec[2]
    st = read_stat(pid)
    return st is not None and st[2] == ident and st[0] not in ("Z", "X")


def _send(pid: int, ident: Ident, sig: int) -> None:
    """Signal ``pid`` only if it still is the process we identified (pid + start time)."""
    if _HAS_PROC:
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return
            except OSError:
                pidfd = -1
        try:
            if not _alive(pid, ident, None):
                return
            if pidfd >= 0:  # the pidfd cannot reach a recycled pid
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            pass
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return
    with contextlib.suppress(OSError):  # no /proc: the scan just before checked identity
        os.kill(pid, sig)


def _fallback_teardown(
    *,
    root: int,
    tag: str,
    grace: float,
    exclude: Collection[int],
    reap: Callable[[], object],
    poll: float = 0.05,
) -> None:
    """The stdlib-only phased teardown, for when the engine cannot be imported.

    Targets: every descendant of ``root`` plus every process whose environment has exactly
    ``IPYPROCTRACK_PROCESS=<tag>`` (``/proc`` on Linux; ``ps`` elsewhere). SIGTERM (and
    SIGCONT, for stopped ones) to each and to our own process group, wait up to ``grace``
    (zombies count as gone; newcomers get SIGTERM too), SIGKILL the survivors, then sweep
    until a scan finds nothing alive. Every signal goes through an identity check.
    """
    scan = _Scan(root, tag, exclude)
    known: dict[int, Ident] = {}

    def hit(found: dict[int, Ident], sig: int) -> None:
        for pid, ident in found.items():
            known[pid] = ident
            _send(pid, ident, sig)
            if sig == signal.SIGTERM:
                _send(pid, ident, signal.SIGCONT)

    hit(scan.targets(), signal.SIGTERM)
    if os.getpgrp() == os.getpid() == root:  # our own group: the keeper ignores SIGTERM
        with contextlib.suppress(OSError):
            os.killpg(root, signal.SIGTERM)
    # Wait up to grace; rescan now and then so that late forks get SIGTERM as well.
    deadline = time.monotonic() + grace
    next_scan = time.monotonic() + 0.25
    while True:
        reap()
        table = None if _HAS_PROC else scan.table()
        pending = {p: i for p, i in known.items() if _alive(p, i, table)}
        now = time.monotonic()
        if not pending or now >= next_scan:
            fresh = {p: i for p, i in scan.targets().items() if known.get(p) != i}
            hit(fresh, signal.SIGTERM)
            pending.update(fresh)
            next_scan = now + 0.25
        if not pending or now >= deadline:
            break
        time.sleep(poll)
    # SIGKILL the survivors, then sweep until nothing of ours is left (bounded).
    for _ in range(20):
        if not pending:
            break
        hit(pending, signal.SIGKILL)
        time.sleep(poll / 2)
        reap()
        pending = scan.targets()
    reap()


# --- entry point -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        config = json.loads(args[0])
        if not isinstance(config, dict):
            raise ValueError("the config is not a JSON object")
    except (IndexError, ValueError) as exc:
        print(f"usage: python -I _keeper.py '<json config>' ({exc})", file=sys.stderr)
        return 2
    return Keeper(config).run()


if __name__ == "__main__":
    sys.exit(main())
