"""The engine's side of the POSIX keeper (``_keeper/main.py``).

One keeper per tracked launch: ``spawn_kept`` starts ``python -I -S _keeper/__main__.py
<config>`` in a new session, and the keeper starts the command as its own child. The engine
reaps the keeper through its ``Popen`` (never ``waitpid(-1)`` in the kernel) and reads the
keeper's status pipe for the command's pid and exit code (``protocol``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._proc.scan import start_seconds
from ..errors import LaunchError
from .protocol import MAX_LINE, config_arg, read_status_events

__all__ = (
    "KEEPER_PATH",
    "KeptProcess",
    "keeper_argv",
    "make_lifeline",
    "spawn_kept",
)

KEEPER_PATH = Path(__file__).resolve().parent / "__main__.py"


@dataclass
class KeptProcess:
    keeper: subprocess.Popen[bytes]  # our direct child: the keeper (reap it through this)
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


def _kill_keeper(keeper: subprocess.Popen[bytes]) -> None:
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
) -> KeptProcess:
    """Start ``argv`` under a new keeper; block until the command has started.

    ``stdout``/``stderr`` are file descriptors (or ``subprocess.PIPE``) the command writes
    to, through the keeper. ``env`` is the command's complete, tagged environment. Raises
    ``LaunchError`` when the command cannot start (the keeper is reaped first).
    ``record``: the file the keeper appends its report to if it tears down because the
    kernel is gone (the kernel-end record; ``name`` labels it). ``max_memory`` (bytes of
    the tree's RSS) and ``max_runtime`` (seconds), when > 0, are held by the keeper.
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
    try:
        keeper = subprocess.Popen(
            keeper_argv(config),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=dict(env),
            pass_fds=tuple(fd for fd in (lifeline_fd, status_w) if fd >= 0),
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
    keeper: subprocess.Popen[bytes], status_r: int, program: str, start_timeout: float
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
