"""Linux: read /proc directly (design.md fact 9) and signal through pidfds (fact 6)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal

from ._common import (
    TAG_PROCESS,
    TAG_SESSION,
    ProcRecord,
    SendResult,
    Signal,
    kill_pid,
    same_time,
)

DISCOVERY = "proc"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_F_SETPIPE_SZ = 1031
_SESSION_KEY = (TAG_SESSION + "=").encode()
_PROCESS_KEY = (TAG_PROCESS + "=").encode()
_MARK = b"IPYPROCTRACK_"


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    return 0.0


_BOOT_TIME = _boot_time()


def create_time_from_start(seconds: float) -> float | None:
    """A start time in seconds since boot (the keeper's report), as the epoch create time
    every scan uses; None when the keeper could not tell."""
    return _BOOT_TIME + seconds if seconds > 0 else None


def _read(path: str, size: int = 1 << 16) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size)
        if len(data) < size:
            return data
        parts = [data]
        while chunk := os.read(fd, size):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _parse_stat(pid: int, raw: bytes) -> tuple[int, float, int, int, bool]:
    # The command name may hold spaces and parentheses: split on the last ")". Only the
    # first 20 fields after it are needed (state ... starttime).
    fields = raw[raw.rfind(b")") + 2 :].split(None, 20)
    ppid, pgid, sid = int(fields[1]), int(fields[2]), int(fields[3])
    create_time = _BOOT_TIME + int(fields[19]) / _CLK_TCK
    return ppid, create_time, pgid, sid, fields[0] in (b"Z", b"X")


def _tags(env: bytes) -> tuple[str | None, str | None]:
    session = process = None
    if _MARK not in env:
        return None, None
    for entry in env.split(b"\0"):
        if entry.startswith(_SESSION_KEY):
            session = entry[len(_SESSION_KEY) :].decode("utf-8", "replace")
        elif entry.startswith(_PROCESS_KEY):
            process = entry[len(_PROCESS_KEY) :].decode("utf-8", "replace")
    return session, process


def read_tags(pid: int) -> tuple[str | None, str | None]:
    """The two tag values in a process's environment (exact variables, never substrings)."""
    try:
        return _tags(_read(f"/proc/{pid}/environ"))
    except OSError:
        return None, None


def get_record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
    """A fresh look at one pid, or None if it is gone."""
    try:
        ppid, ctime, pgid, sid, zombie = _parse_stat(pid, _read(f"/proc/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None
    session = process = None
    if with_tags:
        session, process = read_tags(pid)
    return ProcRecord(pid, ppid, ctime, pgid, sid, zombie, session, process)


def scan_processes(*, with_tags: bool = True) -> dict[int, ProcRecord]:
    """Every visible process, with its tags: two small reads per process, inlined because
    the teardown and the widgets run this scan over and over."""
    out: dict[int, ProcRecord] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid, ctime, pgid, sid, zombie = _parse_stat(0, _read(f"/proc/{name}/stat", 4096))
        except (OSError, ValueError, IndexError):
            continue
        session = process = None
        if with_tags and not zombie:
            try:
                env = _read(f"/proc/{name}/environ")
            except OSError:
                env = b""
            if _MARK in env:
                session, process = _tags(env)
        pid = int(name)
        out[pid] = ProcRecord(pid, ppid, ctime, pgid, sid, zombie, session, process)
    return out


def command_of(pid: int) -> str:
    try:
        raw = _read(f"/proc/{pid}/cmdline")
    except OSError:
        return ""
    if not raw:  # kernel threads and zombies have no cmdline
        try:
            return "[" + _read(f"/proc/{pid}/comm").decode("utf-8", "replace").strip() + "]"
        except OSError:
            return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def send_signal(pid: int, create_time: float, which: Signal) -> SendResult:
    """Signal one process by identity. The pidfd pins the process, so the identity check
    made after opening it cannot race with PID reuse."""
    sig = signal.SIGTERM if which == "term" else signal.SIGKILL
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except OSError:
        return _kill_checked(pid, create_time, sig)
    try:
        rec = get_record(pid)
        if rec is None or rec.zombie or not same_time(rec.create_time, create_time):
            return "gone"
        signal.pidfd_send_signal(pidfd, sig)
        return "sent"
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "denied"
    finally:
        os.close(pidfd)


def _kill_checked(pid: int, create_time: float, sig: int) -> SendResult:
    rec = get_record(pid)
    if rec is None or rec.zombie or not same_time(rec.create_time, create_time):
        return "gone"
    return kill_pid(pid, sig)


def enlarge_pipe(fd: int) -> None:
    """A 1 MiB pipe lets a fast writer run ahead between two reads of the drain loop."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)


def open_exit_waiter(pid: int) -> int | None:
    """A pidfd that turns readable when the process exits; None if unsupported."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None
