"""Linux: resizable pipes, pidfds, and the child subreaper."""

from __future__ import annotations

import os

_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_PARENT = 0x00008000
_SIGCHLD = 17
# clone's syscall number, where its first argument is the flags and the others may be 0
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}


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


def clone_sibling() -> int | None:
    # A raw clone: os.fork() takes no flags. Only CLONE_PARENT and the exit signal: a copy
    # of the address space and fd table, as with fork. glibc asks the kernel for the thread
    # id where it needs one (raise() in a clone signals the clone: checked on 2.36).
    number = _SYS_CLONE.get(os.uname().machine)
    if number is None:
        return None
    try:
        import ctypes

        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError, ImportError):
        return None
    syscall.restype = ctypes.c_long
    pid = int(syscall(ctypes.c_long(number), ctypes.c_ulong(_CLONE_PARENT | _SIGCHLD),
                      ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)))
    if pid < 0:
        n = ctypes.get_errno()
        raise OSError(n, os.strerror(n))
    return pid


def show_as(argv: list[str], env: list[str]) -> bool:
    # arg_start, arg_end, env_start, env_end: fields 48-51 of /proc/self/stat (proc(5)).
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
        import ctypes
    except (OSError, ValueError, ImportError):
        return False
    blobs = []
    for items, start, end in ((argv, arg_start, arg_end), (env, env_start, env_end)):
        blob = b"\0".join(i.encode("utf-8", "surrogateescape") for i in items)
        room = end - start - 1 - len(blob)  # a NUL ends the area
        if not items or room < 0 or start <= 0:
            return False
        blobs.append((start, blob + b" " * room + b"\0"))
    for start, blob in blobs:
        ctypes.memmove(start, blob, len(blob))
    set_name(os.path.basename(argv[0]))
    return True


def set_name(name: str) -> None:
    try:
        with open("/proc/self/comm", "wb") as f:
            f.write(name.encode("utf-8", "replace")[:15])
    except OSError:
        pass
