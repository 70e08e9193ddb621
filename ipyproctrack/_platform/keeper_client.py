"""The engine's side of the POSIX keeper (``ipyproctrack/_keeper.py``).

One keeper per tracked launch: ``spawn_kept`` starts ``python -I _keeper.py <config>`` in a
new session, and the keeper starts the command as its own child. The engine reaps the
keeper through its ``Popen`` (never ``waitpid(-1)`` in the kernel) and reads the keeper's
status pipe for the command's pid and exit code. The protocol is documented at the top of
``_keeper.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import _keeper
from .._errors import LaunchError

__all__ = [
    "KEEPER_PATH",
    "KeptProcess",
    "keeper_argv",
    "make_lifeline",
    "read_status_events",
    "spawn_kept",
]

KEEPER_PATH = Path(__file__).resolve().parent.parent / "_keeper.py"
_MAX_LINE = 1 << 16  # a status line is tens of bytes; anything longer is garbage


@dataclass
class KeptProcess:
    keeper: subprocess.Popen[bytes]  # our direct child: the keeper (reap it through this)
    pid: int  # the command's pid (from the "started" event)
    status_fd: int  # read end of the status pipe, non-blocking, owned by the engine now
    subreaper: bool = False  # the keeper did become a child subreaper
    # The command's start time in seconds since boot (Linux; 0.0 elsewhere), read by the
    # keeper before it could reap the command, so it is the command's even if that exited
    # at once. The epoch create time (psutil's, _platform.linux's) is boot time + this.
    start_time: float = 0.0


def make_lifeline() -> tuple[int, int]:
    """A session's lifeline: (read end, write end).

    Both ends are non-inheritable. The read end goes to every keeper through ``pass_fds``;
    the write end stays in the kernel and must never be closed while the session lives:
    its EOF (the kernel died, or closed it on purpose) makes every keeper tear down.
    """
    return os.pipe()


def keeper_argv(config: Mapping[str, object]) -> list[str]:
    return [sys.executable, "-I", str(KEEPER_PATH), json.dumps(dict(config))]


_kernel_start: tuple[int, float] | None = None


def _kernel_start_time() -> float:
    """Our own start time, as the keeper computes it (cached per process, fork-aware)."""
    global _kernel_start
    pid = os.getpid()
    if _kernel_start is None or _kernel_start[0] != pid:
        _kernel_start = (pid, _keeper.process_start_time(pid))
    return _kernel_start[1]


def read_status_events(buf: bytearray, data: bytes) -> list[dict[str, object]]:
    """Feed ``data`` read from a status pipe; return the complete events it finished.

    ``buf`` keeps a partial last line between calls. Lines that are not JSON objects are
    skipped, and a runaway partial line is dropped rather than kept growing.
    """
    buf += data
    events: list[dict[str, object]] = []
    end = buf.rfind(b"\n")
    if end < 0:
        if len(buf) > _MAX_LINE:
            del buf[:]
        return events
    lines = bytes(buf[:end]).split(b"\n")
    del buf[: end + 1]
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


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
            if len(line) > _MAX_LINE:
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
    start_timeout: float = 10.0,
    keeper_teardown: str = "engine",
) -> KeptProcess:
    """Start ``argv`` under a new keeper; block until the command has started.

    ``stdout``/``stderr`` are file descriptors (or ``subprocess.PIPE``) the command writes
    to, through the keeper. ``env`` is the command's complete, tagged environment. Raises
    ``LaunchError`` when the command cannot start (the keeper is reaped first).
    ``keeper_teardown="fallback"`` makes the keeper use its stdlib-only teardown (tests).
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
        "kernel_create_time": _kernel_start_time(),
        "grace": grace,
        "subreaper": subreaper,
        "tag": tag,
        "session": session,
        "teardown": keeper_teardown,
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
    try:
        os.set_blocking(status_r, False)
        line = _read_line(status_r, time.monotonic() + start_timeout)
    except TimeoutError:
        _kill_keeper(keeper)
        os.close(status_r)
        raise LaunchError(
            f"cannot start {args[0]}: its keeper did not report within {start_timeout:g} s"
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
        raise LaunchError(_launch_message(args[0], event))
    _kill_keeper(keeper)
    raise LaunchError(
        f"cannot start {args[0]}: its keeper failed (exit status {keeper.returncode})"
    )
