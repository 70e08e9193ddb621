"""The one ``/proc`` reader (Linux): stat, environ tags, cmdline, and one full scan.

Kept fast on purpose (design.md fact 9): the teardown, ``tree()`` and the widgets scan
over and over. Each file is read with one ``open``/``read``/``close`` relative to an open
``/proc`` directory, kernel threads' environments are never read, and only the two tag
values of a tagged environment are decoded.

Reading another process's environment is most of a scan's cost (the kernel walks that
process's memory). ``/proc/<pid>/environ`` is the environment of the last exec, so a
scan remembers the tags it read per (pid, command name, start time): the same process
that has not exec'd a program of another name since. Only new ones are read again.
"""

from __future__ import annotations

import os

from .identity import CLK_TCK, ProcRecord, boot_time

_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_MARK = b"IPYPROCTRACK_"
_SESSION_KEY = b"IPYPROCTRACK_SESSION="
_PROCESS_KEY = b"IPYPROCTRACK_PROCESS="
_KTHREADD = 2  # the parent of every kernel thread: they have no environment to read
_READ = 1 << 14
_NO_TAGS: tuple[str | None, str | None] = (None, None)
# (stat up to the end of the command name, start ticks) -> tags, from the last scan
_tag_cache: dict[tuple[bytes, bytes], tuple[str | None, str | None]] = {}


def _read(path: str, dir_fd: int | None = None, size: int = _READ) -> bytes:
    fd = os.open(path, _FLAGS, dir_fd=dir_fd)
    try:
        data = os.read(fd, size)
        if len(data) < size:
            return data
        parts = [data]
        while chunk := os.read(fd, 1 << 16):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _parse_stat(raw: bytes) -> tuple[bytes, int, int, int, int]:
    """(state, ppid, pgid, sid, start ticks). The command name may hold spaces and
    parentheses: split after the last ")"; only the fields up to starttime are split."""
    f = raw[raw.rfind(b")") + 2 :].split(b" ", 20)
    return f[0], int(f[1]), int(f[2]), int(f[3]), int(f[19])


def read_stat(pid: int) -> tuple[bytes, int, int, int, int] | None:
    """(state, ppid, pgid, sid, start ticks since boot) of ``pid``, or None if it is gone."""
    try:
        return _parse_stat(_read(f"/proc/{pid}/stat", size=1024))
    except (OSError, ValueError, IndexError):
        return None


def start_seconds(pid: int) -> float:
    """Start time of ``pid`` in seconds since boot, or 0.0 when unknown. Two processes
    computing it for the same pid always agree exactly (no boot time involved)."""
    st = read_stat(pid)
    return st[4] / CLK_TCK if st is not None else 0.0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_usage(pid: int) -> tuple[float, int, float] | None:
    """(user + system CPU seconds, resident bytes, create time) of ``pid`` from one read
    of its ``stat`` (fields 14, 15, 24 and 22), or None if it is gone. The create time is
    the one ``scan`` gives: compare them with ``identity.same_process``."""
    try:
        raw = _read(f"/proc/{pid}/stat", size=1024)
        f = raw[raw.rfind(b")") + 2 :].split(b" ", 22)
        created = boot_time() + int(f[19]) / CLK_TCK
        return (int(f[11]) + int(f[12])) / CLK_TCK, int(f[21]) * _PAGE, created
    except (OSError, ValueError, IndexError):
        return None


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``/proc/<pid>/statm``), or None if gone."""
    try:
        return int(_read(f"/proc/{pid}/statm", size=256).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _value(env: bytes, key: bytes) -> str | None:
    """The value of an exact variable ``key`` (b"NAME=") in an environment block."""
    if env.startswith(key):
        start = len(key)
    else:
        i = env.find(b"\0" + key)
        if i < 0:
            return None
        start = i + 1 + len(key)
    end = env.find(b"\0", start)
    return env[start : end if end >= 0 else len(env)].decode("utf-8", "replace")


def _tags(env: bytes) -> tuple[str | None, str | None]:
    if _MARK not in env:
        return None, None
    return _value(env, _SESSION_KEY), _value(env, _PROCESS_KEY)


def read_tags(pid: int) -> tuple[str | None, str | None]:
    """The two tag values in a process's environment: exact variables, never substrings.
    (None, None) for zombies, kernel threads and other users' processes."""
    try:
        return _tags(_read(f"/proc/{pid}/environ"))
    except OSError:
        return None, None


def record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
    """A fresh look at one pid, or None if it is gone."""
    st = read_stat(pid)
    if st is None:
        return None
    state, ppid, pgid, sid, ticks = st
    zombie = state in (b"Z", b"X")
    session = process = None
    if with_tags and not zombie:
        session, process = read_tags(pid)
    ctime = boot_time() + ticks / CLK_TCK
    return ProcRecord(pid, ppid, ctime, pgid, sid, zombie, session, process)


def scan(*, with_tags: bool = True) -> dict[int, ProcRecord]:
    """Every visible process (kernel threads included, never their environment)."""
    global _tag_cache
    boot, tck = boot_time(), CLK_TCK
    out: dict[int, ProcRecord] = {}
    old, cache = _tag_cache, {}
    dfd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(dfd):
            if not name.isdigit():
                continue
            try:
                fd = os.open(name + "/stat", _FLAGS, dir_fd=dfd)
                try:
                    raw = os.read(fd, 1024)
                finally:
                    os.close(fd)
                end = raw.rfind(b")")
                f = raw[end + 2 :].split(b" ", 20)
                ppid, zombie = int(f[1]), f[0] in (b"Z", b"X")
                pid = int(name)
                rec = ProcRecord(pid, ppid, boot + int(f[19]) / tck, int(f[2]), int(f[3]), zombie)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            out[pid] = rec
            if not with_tags or zombie or ppid == _KTHREADD or pid == _KTHREADD:
                continue
            key = (raw[:end], f[19])
            tags = old.get(key)
            if tags is None:
                try:
                    env = _read(name + "/environ", dfd)
                except OSError:  # another user's process, or gone
                    env = None
                tags = _tags(env) if env and _MARK in env else _NO_TAGS
                if env == b"":
                    # Not remembered: a process in the middle of an exec shows an empty
                    # environment (its new command name already set) for an instant.
                    rec.session_tag, rec.process_tag = tags
                    continue
            cache[key] = tags
            rec.session_tag, rec.process_tag = tags
    finally:
        os.close(dfd)
    if with_tags:
        _tag_cache = cache
    return out


def forget_tags() -> None:
    """Drop the remembered tags: the next scan reads every environment (benchmarks)."""
    global _tag_cache
    _tag_cache = {}


def argv(pid: int) -> list[str]:
    """The command line as its arguments ([] when gone, a zombie or a kernel thread)."""
    try:
        raw = _read(f"/proc/{pid}/cmdline")
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0")[:-1]] if raw else []


def owner(pid: int) -> int | None:
    """The uid that owns ``pid``, or None when it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def command(pid: int) -> str:
    """The command line as one string; "[comm]" for kernel threads and zombies; "" when
    the process is gone."""
    try:
        raw = _read(f"/proc/{pid}/cmdline")
    except OSError:
        return ""
    if not raw:
        try:
            return "[" + _read(f"/proc/{pid}/comm").decode("utf-8", "replace").strip() + "]"
        except OSError:
            return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
