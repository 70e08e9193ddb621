"""The platform contract: the one place that tests ``sys.platform``. Standard library only.

Each OS function is declared here once, with its docstring; ``_posix.py``, ``_linux.py``
and ``_windows.py`` override it (the style of trio's ``_subprocess_platform``). Read this
file for what every platform provides; read the OS module for how.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Literal, Protocol

    Signal = Literal["term", "kill"]
    # What a signal attempt did: delivered, the process was already gone (or its pid now
    # belongs to someone else), or the OS said no.
    SendResult = Literal["sent", "gone", "denied"]
    # pid -> (ppid, pgid, zombie, create_time, session tag, process tag), from ``ps``.
    PsTable = Mapping[int, tuple[int, int, bool, float, str | None, str | None]]

    class Containment(Protocol):
        """What holds a tracked tree beyond its process group (a Windows Job Object)."""

        def terminate(self) -> None: ...

        def close(self) -> None: ...


IS_LINUX = sys.platform.startswith("linux")
IS_WINDOWS = sys.platform == "win32"
IS_POSIX = not IS_WINDOWS
# /proc/<pid>/stat and environ: the fast scan (design.md fact 9). Linux only: other
# systems' /proc (if any) has another layout.
HAS_PROCFS = IS_LINUX and os.path.exists("/proc/self/stat")
# Only Linux can make orphans re-parent to one of our processes (PR_SET_CHILD_SUBREAPER).
HAS_SUBREAPER = IS_LINUX
# POSIX launches go through a keeper process of ours (ipyproctrack/_keeper/): the
# command's parent, a subreaper on Linux, and a watchdog on the kernel's lifeline.
USE_KEEPER = IS_POSIX
# Pipes can be selected (epoll, poll): one drain thread reads them all. Windows needs a
# reader thread per pipe.
ASYNC_PIPES = IS_POSIX

# Opening a log never follows a symlink planted at its path (0 where the OS has no such flag).
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)

TAG_SESSION = "IPYPROCTRACK_SESSION"
TAG_PROCESS = "IPYPROCTRACK_PROCESS"


def popen_kwargs() -> dict[str, Any]:
    """Popen options that put a launch in a new session (POSIX) or console process group
    (Windows): jupyter_client's group signals (interrupt, shutdown) never reach it."""
    raise NotImplementedError


def shell_argv(script: str) -> list[str]:
    """The argv that runs ``script`` in the platform's shell."""
    raise NotImplementedError


def signal_number(which: Signal) -> int | None:
    """The signal that ``which`` means for one process; None when the platform has no such
    per-process signal (Windows has no graceful one)."""
    raise NotImplementedError


def signal_group(pgid: int, which: Signal) -> SendResult:
    """Signal a whole process group (POSIX) or console group (Windows CTRL_BREAK_EVENT).
    Never our own group: that would kill the kernel's parents. The caller has checked
    that the group is still ours."""
    raise NotImplementedError


def set_subreaper() -> bool:
    """Make orphans of our subtree re-parent to this process (Linux
    PR_SET_CHILD_SUBREAPER). True if it worked."""
    return False


def enlarge_pipe(fd: int) -> int:
    """Let a fast writer run ahead between two reads of the drain loop, where pipes can
    be resized (Linux); the pipe's capacity in bytes afterwards, 0 when unknown."""
    return 0


def clone_sibling() -> int | None:
    """Fork this (single-threaded) process so that the copy is a child of our parent, not
    ours (Linux ``clone(CLONE_PARENT)``): 0 in the copy, its pid here; None where this
    cannot be done. The keepers' zygote uses it, so that every keeper is the kernel's own
    child. Raises OSError when the clone fails. No at-fork handler runs in the copy."""
    return None


def show_as(argv: list[str], env: list[str]) -> bool:
    """Make ``/proc/self/cmdline`` and ``environ`` read ``argv`` and ``env`` ("KEY=value"
    items) by rewriting the memory they are read from, as setproctitle does (Linux), and
    name the process after ``argv[0]`` as an exec would (``set_name``): a scan's tag cache,
    which is keyed on the name, then reads the new environment. The last item of each is
    stretched to fill its area, so it must end where stretching is harmless. False where
    this cannot be done, or when either does not fit."""
    return False


def set_name(name: str) -> None:
    """The process's name as ``ps`` and ``/proc/<pid>/stat`` show it (Linux ``comm``, 15
    bytes at most); nothing elsewhere."""


def open_exit_waiter(pid: int) -> int | None:
    """An fd that turns readable when ``pid`` exits (a Linux pidfd); None if unsupported."""
    return None


def contain(pid: int) -> Containment | None:
    """Hold a freshly started process beyond its group: a Windows kill-on-close Job
    Object. POSIX contains trees with the keeper instead, so None there."""
    return None


def owned_by_someone_else(st: os.stat_result) -> bool:
    """Whether a file or directory (its ``os.stat``) belongs to another user than the one
    we run as (POSIX owners; Windows ACLs are not checked: False)."""
    return False


def user_id() -> str:
    """Who we run as, for a per-user directory name (the uid on POSIX)."""
    import getpass

    return getpass.getuser()


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the soft limit of open files to the hard limit (POSIX RLIMIT_NOFILE); the
    (soft, hard) limits after it, None where there is no such limit."""
    return None


def ps_table(*, with_tags: bool) -> PsTable | None:
    """Every visible process, from ``ps`` (POSIX without /proc). None where ``ps`` is
    missing or fails. Tags come from ``ps -E`` (the environment of the last exec; BSD and
    macOS): where ``ps`` has no ``-E`` they are None."""
    return None


def ps_command(pid: int) -> str:
    """The command line of ``pid`` from ``ps`` (POSIX without /proc); "" when unknown."""
    return ""


if IS_WINDOWS:
    from ._windows import (
        contain,
        popen_kwargs,
        shell_argv,
        signal_group,
        signal_number,
    )
else:
    from ._posix import (
        owned_by_someone_else,
        popen_kwargs,
        ps_command,
        ps_table,
        raise_open_file_limit,
        shell_argv,
        signal_group,
        signal_number,
        user_id,
    )

    if IS_LINUX:
        from ._linux import (
            clone_sibling,
            enlarge_pipe,
            open_exit_waiter,
            set_name,
            set_subreaper,
            show_as,
        )

__all__ = (
    "ASYNC_PIPES",
    "HAS_PROCFS",
    "HAS_SUBREAPER",
    "IS_LINUX",
    "IS_POSIX",
    "IS_WINDOWS",
    "O_NOFOLLOW",
    "TAG_PROCESS",
    "TAG_SESSION",
    "USE_KEEPER",
    "clone_sibling",
    "contain",
    "enlarge_pipe",
    "open_exit_waiter",
    "owned_by_someone_else",
    "popen_kwargs",
    "ps_command",
    "ps_table",
    "raise_open_file_limit",
    "set_name",
    "set_subreaper",
    "shell_argv",
    "show_as",
    "signal_group",
    "signal_number",
    "user_id",
)
