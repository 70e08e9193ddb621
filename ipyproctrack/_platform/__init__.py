"""The one platform switch. Nothing outside this package tests ``sys.platform``."""

from __future__ import annotations

import sys

from ._common import (
    TAG_PROCESS,
    TAG_SESSION,
    Containment,
    ProcRecord,
    SendResult,
    Signal,
    same_time,
)

IS_LINUX = sys.platform.startswith("linux")
IS_WINDOWS = sys.platform == "win32"
IS_POSIX = not IS_WINDOWS
# Only Linux can make orphans re-parent to one of our processes (PR_SET_CHILD_SUBREAPER).
HAS_SUBREAPER = IS_LINUX
# POSIX launches go through a keeper process of ours (ipyproctrack/_keeper.py): the
# command's parent, a subreaper on Linux, and a watchdog on the kernel's lifeline.
USE_KEEPER = IS_POSIX
# Pipes can be watched by the event loop (add_reader); Windows needs reader threads.
ASYNC_PIPES = IS_POSIX

if IS_WINDOWS:
    from .windows import (
        DISCOVERY,
        command_of,
        contain,
        enlarge_pipe,
        get_record,
        open_exit_waiter,
        popen_kwargs,
        scan_processes,
        send_signal,
        shell_argv,
        signal_group,
    )
elif IS_LINUX:
    from .linux import (
        DISCOVERY,
        command_of,
        create_time_from_start,
        enlarge_pipe,
        get_record,
        open_exit_waiter,
        scan_processes,
        send_signal,
    )
    from .posix import contain, popen_kwargs, shell_argv, signal_group
else:
    from .posix import (
        DISCOVERY,
        command_of,
        contain,
        enlarge_pipe,
        get_record,
        open_exit_waiter,
        popen_kwargs,
        scan_processes,
        send_signal,
        shell_argv,
        signal_group,
    )

if IS_POSIX:
    from .keeper_client import make_lifeline, read_status_events, spawn_kept

if not IS_LINUX:

    def create_time_from_start(seconds: float) -> float | None:
        """Only Linux keepers report start times we can turn into create times."""
        return None


__all__ = [
    "ASYNC_PIPES",
    "DISCOVERY",
    "HAS_SUBREAPER",
    "IS_LINUX",
    "IS_POSIX",
    "IS_WINDOWS",
    "TAG_PROCESS",
    "TAG_SESSION",
    "USE_KEEPER",
    "Containment",
    "ProcRecord",
    "SendResult",
    "Signal",
    "command_of",
    "contain",
    "create_time_from_start",
    "enlarge_pipe",
    "get_record",
    "make_lifeline",
    "open_exit_waiter",
    "popen_kwargs",
    "read_status_events",
    "same_time",
    "scan_processes",
    "send_signal",
    "shell_argv",
    "signal_group",
    "spawn_kept",
]
