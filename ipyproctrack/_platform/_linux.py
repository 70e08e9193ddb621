"""Linux: resizable pipes, pidfds, and the child subreaper."""

from __future__ import annotations

import os

_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_PR_SET_CHILD_SUBREAPER = 36


def enlarge_pipe(fd: int) -> int:
    """A 1 MiB pipe lets a fast writer run ahead between two reads of the drain loop."""
    import fcntl

    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except OSError:  # over /proc/sys/fs/pipe-max-size for this user: keep the default
        pass
    try:
        return fcntl.fcntl(fd, _F_GETPIPE_SZ)
    except OSError:
        return 0


def open_exit_waiter(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def set_subreaper() -> bool:
    # ctypes is imported here only: the stdlib has no prctl().
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return False
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    return int(prctl(ctypes.c_int(_PR_SET_CHILD_SUBREAPER), one, zero, zero, zero)) == 0
