"""The engine's side of the POSIX keeper (``_keeper/main.py``).

One keeper per tracked launch: ``spawn_kept`` starts ``python -I -S _keeper/__main__.py
<config>`` in a new session, and the keeper starts the command as its own child. The engine
reaps the keeper through its ``Popen`` (never ``waitpid(-1)`` in the kernel) and reads the
keeper's status pipe for the command's pid and exit code (``protocol``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import _platform as plat
from .._proc.scan import start_seconds
from ..errors import LaunchError
from .protocol import MAX_LINE, config_arg, encode, read_status_events

__all__ = (
    "KEEPER_PATH",
    "ClonedKeeper",
    "KeeperProcess",
    "KeptProcess",
    "Zygote",
    "keeper_argv",
    "make_lifeline",
    "spawn_kept",
)

log = logging.getLogger(__name__)

KEEPER_PATH = Path(__file__).resolve().parent / "__main__.py"


class ClonedKeeper:
    """A keeper cloned by the zygote. Our own child, like a ``Popen``-started one, and
    reaped the same way: ``waitpid`` on its pid, never on -1."""

    def __init__(self, pid: int, program: str) -> None:
        self.pid = pid
        self.args = [program]
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else: Popen says 0 too
                    self.returncode = 0
                else:
                    if pid == self.pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (rc := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return rc

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped, so the pid is still this keeper's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


# What the engine holds of a keeper: its Popen, or the zygote's clone.
KeeperProcess = subprocess.Popen[bytes] | ClonedKeeper


class Zygote:
    """The engine's end of a keepers' zygote (``zygote.py``, Linux): started on the first
    launch, ended by ``close()``. ``spawn`` returns None whenever the zygote cannot serve
    (another OS, a forked child, the zygote died): the caller then starts the keeper
    itself, as without a zygote."""

    def __init__(self, lifeline: Callable[[], int]) -> None:
        self._lifeline = lifeline  # the session's lifeline read end, made on first use
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()
        self._usable = plat.IS_LINUX and os.environ.get("IPYPROCTRACK_ZYGOTE", "1") != "0"

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._sock is not None else None

    def _start(self) -> bool:
        lifeline = self._lifeline()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            from .zygote import ARG_ROOM, ENV_ROOM, PAD_VARIABLE

            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(KEEPER_PATH), "--zygote",
                 str(theirs.fileno()), str(lifeline), " " * ARG_ROOM],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                env={**os.environ, PAD_VARIABLE: " " * ENV_ROOM},
                pass_fds=(theirs.fileno(), lifeline), start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            log.warning("cannot start the keepers' zygote (%s): keepers start one by one", exc)
            return False
        finally:
            theirs.close()
        ours.settimeout(10.0)
        self._sock = ours
        return True

    def spawn(self, config: Mapping[str, object], *, program: str, cwd: str,
              env: Mapping[str, str], stdout: int, stderr: int,
              status_w: int, pump: Sequence[int] = ()) -> ClonedKeeper | None:
        """A keeper cloned for ``config``, with the command's stdout and stderr, the
        status pipe's write end and ``pump``'s descriptors (the pipes' read ends and a
        socket: ``pump.py``); None when the zygote cannot do it."""
        if not self._usable or os.getpid() != self._owner:
            return None
        from .zygote import ARG_ROOM, ENV_ROOM

        items = [f"{k}={v}" for k, v in env.items()]
        size = len(config_arg(config).encode("utf-8", "surrogateescape"))
        env_size = sum(len(i.encode("utf-8", "surrogateescape")) + 1 for i in items)
        if size > ARG_ROOM - 512 or env_size > ENV_ROOM - 512:
            return None  # /proc could not show the clone as its keeper: start one
        request = encode({**config, "cwd": cwd, "env": items, "umask": _umask(),
                          "rlimits": _rlimits()})
        with self._lock:
            if self._sock is None and not self._start():
                self._usable = False
                return None
            assert self._sock is not None
            try:
                self._sock.sendmsg(
                    [request.encode("utf-8", "surrogateescape")],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                      array("i", [stdout, stderr, status_w, *pump]))])
                reply = self._sock.recv(64).decode("ascii", "replace")
            except OSError as exc:
                reply = str(exc)
            key, _, value = reply.partition("=")
            if key == "pid" and value.isdigit():
                return ClonedKeeper(int(value), program)
            # For good: a zygote that failed once is not trusted with the next launch.
            log.warning("the keepers' zygote failed (%s): keepers start one by one",
                        os.strerror(int(value)) if key == "error" and value.isdigit()
                        else reply or "no reply")
            self._stop_locked()
            self._usable = False
            return None

    def close(self) -> None:
        """End the zygote (its keepers live on) and reap it. Idempotent."""
        with self._lock:
            self._stop_locked()

    def forget_in_child(self) -> None:
        """In a forked child: close our copy of the socket, touch nothing else."""
        sock, self._sock, self._proc = self._sock, None, None
        self._usable = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _stop_locked(self) -> None:
        sock, proc = self._sock, self._proc
        self._sock = self._proc = None
        if sock is not None:
            # An empty message ends the zygote even while a forked child of ours still
            # holds a copy of this socket (so no EOF would come).
            with contextlib.suppress(OSError):
                sock.send(b"")
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                log.warning("the keepers' zygote (pid %d) did not exit; sent SIGKILL", proc.pid)
                proc.kill()
                proc.wait()


def _umask() -> int:
    """Our umask, read without setting it (os.umask would change it for an instant, for
    every thread): -1 when /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return -1


def _rlimits() -> list[str]:
    """Our resource limits, as "number=soft,hard" items."""
    import resource

    out = []
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            number = getattr(resource, name)
            with contextlib.suppress(OSError, ValueError):
                soft, hard = resource.getrlimit(number)
                out.append(f"{number}={soft},{hard}")
    return out


@dataclass
class KeptProcess:
    keeper: KeeperProcess  # our direct child: the keeper (reap it through this)
    pid: int  # the command's pid (from the "started" event)
    status_fd: int  # read end of the status pipe, non-blocking, owned by the engine now
    subreaper: bool = False  # the keeper did become a child subreaper
    # The command's start time in seconds since boot (Linux; 0.0 elsewhere), read by the
    # keeper before it could reap the command, so it is the command's even if that exited
    # at once. Its epoch create time is identity.create_time_from_start(start_time).
    start_time: float = 0.0


def make_lifeline() -> tuple[int, int]:
    """A session's lifeline: (read end, write end).

    Both ends are non-inheritable. The read end goes to every keeper through ``pass_fds``;
    the write end stays in the kernel and must never be closed while the session lives:
    its EOF (the kernel died, or closed it on purpose) makes every keeper tear down.
    """
    return os.pipe()


def keeper_argv(config: Mapping[str, object]) -> list[str]:
    """The keeper's command line. ``-S``: the keeper needs no site-packages (its
    ``__main__`` puts our package on sys.path), and skipping ``site`` is a large part of
    its start-up."""
    return [sys.executable, "-I", "-S", str(KEEPER_PATH), config_arg(config)]


_kernel_start: tuple[int, float] | None = None


def _kernel_start_time() -> float:
    """Our own start time, as the keeper computes it (cached per process, fork-aware)."""
    global _kernel_start
    pid = os.getpid()
    if _kernel_start is None or _kernel_start[0] != pid:
        _kernel_start = (pid, start_seconds(pid))
    return _kernel_start[1]


def _launch_message(program: str, event: Mapping[str, object]) -> str:
    n = event.get("errno")
    message = str(event.get("message") or "")
    if n == errno.ENOENT:
        return f"command not found: {program}"
    if n == errno.EACCES:
        return f"permission denied: {program}"
    if n == errno.ENOTDIR:
        return f"command not found: {program} (a part of its path is not a directory)"
    return f"cannot start {program}: {message or 'unknown error'}"


def _read_line(fd: int, deadline: float) -> bytes | None:
    """One line from the status pipe, read byte by byte so that nothing after it is
    consumed (the engine reads the rest). None on EOF; TimeoutError at the deadline."""
    line = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if not poller.poll(max(1, int(remaining * 1000))):
            continue
        while True:
            try:
                byte = os.read(fd, 1)
            except BlockingIOError:
                break
            if not byte:
                return None
            if byte == b"\n":
                return bytes(line)
            line += byte
            if len(line) > MAX_LINE:
                return bytes(line)


def _kill_keeper(keeper: KeeperProcess) -> None:
    """SIGKILL the keeper's whole group (it leads it; not reaped yet, so the id is ours)."""
    if keeper.poll() is None:
        try:
            os.killpg(keeper.pid, signal.SIGKILL)
        except OSError:
            keeper.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        keeper.wait(timeout=5.0)


def spawn_kept(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdout: int,
    stderr: int,
    lifeline_fd: int,
    grace: float,
    subreaper: bool,
    tag: str,
    session: str,
    name: str = "",
    record: str = "",
    max_memory: int = 0,
    max_runtime: float = 0.0,
    start_timeout: float = 10.0,
    zygote: Zygote | None = None,
    pump: Sequence[int] = (),
) -> KeptProcess:
    """Start ``argv`` under a new keeper; block until the command has started.

    ``stdout``/``stderr`` are file descriptors (or ``subprocess.PIPE``) the command writes
    to, through the keeper. ``env`` is the command's complete, tagged environment. Raises
    ``LaunchError`` when the command cannot start (the keeper is reaped first).
    ``record``: the file the keeper appends its report to if it tears down because the
    kernel is gone (the kernel-end record; ``name`` labels it). ``max_memory`` (bytes of
    the tree's RSS) and ``max_runtime`` (seconds), when > 0, are held by the keeper.
    ``zygote``: clone the keeper from it when it can (``zygote.py``). ``pump``: the read
    ends of stdout and stderr and a socket, for the keeper to write the log (``pump.py``).
    """
    args = [os.fspath(a) for a in argv]
    if not args or not args[0]:
        raise LaunchError("empty command")
    status_r, status_w = os.pipe()
    config = {
        "argv": args,
        "lifeline_fd": lifeline_fd,
        "status_fd": status_w,
        "kernel_pid": os.getpid(),
        "kernel_start": _kernel_start_time(),
        "grace": grace,
        "subreaper": subreaper,
        "tag": tag,
        "session": session,
        "name": name,
        "record": record,
        "max_memory": max_memory,
        "max_runtime": max_runtime,
    }
    keeper: KeeperProcess | None = None
    if zygote is not None and stdout >= 0 and stderr >= 0 and os.path.isdir(cwd):
        keeper = zygote.spawn(config, program=args[0], cwd=cwd, env=env, stdout=stdout,
                              stderr=stderr, status_w=status_w, pump=pump)
    if keeper is not None:
        os.close(status_w)
        return _await_started(keeper, status_r, args[0], start_timeout)
    if pump:
        config["pump"] = list(pump)
    try:
        keeper = subprocess.Popen(
            keeper_argv(config),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=dict(env),
            pass_fds=tuple(fd for fd in (lifeline_fd, status_w, *pump) if fd >= 0),
            start_new_session=True,
        )
    except OSError as exc:
        os.close(status_r)
        if not os.path.isdir(cwd):
            raise LaunchError(f"working directory does not exist: {cwd}") from exc
        raise LaunchError(f"cannot start the keeper for {args[0]}: {exc}") from exc
    finally:
        os.close(status_w)
    return _await_started(keeper, status_r, args[0], start_timeout)


def _await_started(
    keeper: KeeperProcess, status_r: int, program: str, start_timeout: float
) -> KeptProcess:
    """Read the keeper's first event: "started" (the command runs) or why it did not."""
    try:
        os.set_blocking(status_r, False)
        line = _read_line(status_r, time.monotonic() + start_timeout)
    except TimeoutError:
        _kill_keeper(keeper)
        os.close(status_r)
        raise LaunchError(
            f"cannot start {program}: its keeper did not report within {start_timeout:g} s"
        ) from None
    except BaseException:
        _kill_keeper(keeper)
        os.close(status_r)
        raise
    events = read_status_events(bytearray(), line + b"\n") if line is not None else []
    event = events[0] if events else {}
    if event.get("event") == "started" and isinstance(event.get("pid"), int):
        pid = event["pid"]
        assert isinstance(pid, int)
        start = event.get("start_time")
        start_time = float(start) if isinstance(start, int | float) else 0.0
        return KeptProcess(keeper, pid, status_r, bool(event.get("subreaper")), start_time)
    os.close(status_r)
    if event.get("event") == "error":
        try:
            keeper.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            _kill_keeper(keeper)
        raise LaunchError(_launch_message(program, event))
    _kill_keeper(keeper)
    raise LaunchError(
        f"cannot start {program}: its keeper failed (exit status {keeper.returncode})"
    )
