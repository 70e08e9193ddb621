"""POSIX: sessions, process groups, signals, and a ``ps`` scan where /proc is absent."""

from __future__ import annotations

import os

from ._csignal import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import PsTable, SendResult, Signal

_TAG_PREFIX = "IPYPROCTRACK_"
_SESSION_KEY = "IPYPROCTRACK_SESSION="
_PROCESS_KEY = "IPYPROCTRACK_PROCESS="


def popen_kwargs() -> dict[str, Any]:
    return {"start_new_session": True}


def shell_argv(script: str) -> list[str]:
    import shutil  # here: it pulls in re and fnmatch, which the keeper never needs

    shell = shutil.which("bash") or "/bin/sh"
    return [shell, "-c", script]


def signal_number(which: Signal) -> int | None:
    return signal.SIGTERM if which == "term" else signal.SIGKILL


def signal_group(pgid: int, which: Signal) -> SendResult:
    if pgid <= 1 or pgid == os.getpgid(0):
        return "denied"  # never our own group: that would kill the kernel's parents
    try:
        os.killpg(pgid, signal.SIGTERM if which == "term" else signal.SIGKILL)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "denied"
    return "sent"


def owned_by_someone_else(st: os.stat_result) -> bool:
    return st.st_uid != os.geteuid()


def user_id() -> str:
    return str(os.geteuid())


def raise_open_file_limit() -> tuple[int, int] | None:
    import resource  # only here: the keeper never needs it

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
            # macOS refuses RLIM_INFINITY for files: OPEN_MAX is its real ceiling
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 10240)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                return soft, hard
            soft = target
    except (ValueError, OSError):
        return None
    return soft, hard


def _ps(*args: str) -> list[str] | None:
    import subprocess  # only here: the keeper's kill path must not pay for it on Linux

    # ps runs untagged: with our tag (a keeper's environment is its command's) it would
    # list itself among the tagged processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_TAG_PREFIX)}
    try:
        done = subprocess.run(
            ["ps", *args], capture_output=True, text=True, timeout=10, env=env, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.splitlines() if done.returncode == 0 else None


def _lstart(text: str) -> float:
    """``ps -o lstart`` ("Mon Nov 30 04:51:07 2026") as an epoch time (1 s resolution:
    every create time on such a system comes from this same formula)."""
    import time

    try:
        return time.mktime(time.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return 0.0


def _ps_tags() -> dict[int, tuple[str | None, str | None]]:
    """pid -> tags, from ``ps -E`` (BSD, macOS): the environment of the last exec is
    appended to the command line, so a tag must be one whitespace-separated word."""
    out: dict[int, tuple[str | None, str | None]] = {}
    for line in _ps("-A", "-E", "-ww", "-o", "pid=", "-o", "command=") or ():
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit() or _TAG_PREFIX not in line:
            continue
        session = process = None
        for word in parts[1:]:
            if word.startswith(_SESSION_KEY):
                session = word[len(_SESSION_KEY) :]
            elif word.startswith(_PROCESS_KEY):
                process = word[len(_PROCESS_KEY) :]
        out[int(parts[0])] = (session, process)
    return out


def ps_table(*, with_tags: bool) -> PsTable | None:
    lines = _ps("-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid=", "-o", "stat=", "-o", "lstart=")
    if lines is None:
        return None
    tags = _ps_tags() if with_tags else {}
    out: dict[int, tuple[int, int, bool, float, str | None, str | None]] = {}
    for line in lines:
        parts = line.split(None, 4)
        if len(parts) == 5 and all(p.isdigit() for p in parts[:3]):
            pid = int(parts[0])
            session, process = tags.get(pid, (None, None))
            zombie = parts[3][:1] == "Z"
            out[pid] = (int(parts[1]), int(parts[2]), zombie, _lstart(parts[4]), session, process)
    return out


def ps_command(pid: int) -> str:
    lines = _ps("-ww", "-o", "command=", "-p", str(pid))
    return lines[0].strip() if lines else ""
