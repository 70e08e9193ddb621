"""The keepers' zygote (Linux): one warm process per Tracker that clones keepers.

A keeper started with ``python -I -S`` costs about 12 ms of an interpreter's start-up
(CPU and latency) per launch. The zygote pays that once. It has imported the keeper, and
for each launch it clones itself with ``CLONE_PARENT`` (``_platform.clone_sibling``).
The copy is a child of the kernel, just as a ``Popen``-started keeper is: the engine reaps
it and the keeper watches its parent as before. The copy then turns into a keeper: the
command's pipes on its stdout and stderr, /dev/null on stdin, a new session, the launch's
working directory and environment, then ``Keeper.run()``.

Requests come on a SOCK_SEQPACKET socket: one message per launch, the keeper's config
plus ``cwd`` and ``env`` (``protocol.REQUEST_FIELDS``), with three descriptors attached
(``SCM_RIGHTS``): the command's stdout and stderr, and the keeper's status pipe. The
reply is the keeper's pid, or ``error=<errno>``. The zygote exits at EOF on the socket
(the Tracker closed) or on the lifeline (the kernel is gone); its keepers live on.

It stays single-threaded: no at-fork handler runs in a clone.
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and more into the zygote
import os
import resource
import select
import sys

from .. import _platform as plat
from . import pump as _pump  # noqa: F401 (imported once here, not in every clone)
from .main import Keeper
from .protocol import config_arg, read_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .protocol import Record

__all__ = ("ARG_ROOM", "ENV_ROOM", "PAD_VARIABLE", "serve")

MAX_REQUEST = 1 << 20  # a config with its environment: kilobytes
_FDS = (3, 6)  # stdout, stderr, status pipe (and the pump's stdout, stderr, socket)
# The zygote starts with this much room in its argument and environment areas (a padding
# argument, and PAD_VARIABLE): each clone writes its keeper's command line and its
# command's environment there (``_platform.show_as``), so that /proc shows a clone as it
# shows a keeper started with Popen. The command line lists, and the session-tag sweeps
# read, both. A launch whose config or environment does not fit starts its keeper itself.
ARG_ROOM = 32 << 10
ENV_ROOM = 64 << 10
PAD_VARIABLE = "IPYPROCTRACK_ZYGOTE_ROOM"  # the zygote's; a clone's padding is CLONE_ROOM
CLONE_ROOM = "IPYPROCTRACK_ROOM"
# The zygote's name in ps. A clone takes the keeper's name ("python") when it rewrites its
# environment, so the scan's tag cache (keyed on the name) forgets what it showed before.
ZYGOTE_NAME = "ipt-zygote"
_KEEPER_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")


def _receive(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """One request and its descriptors; (b"", []) at EOF."""
    space = _socket.CMSG_SPACE(max(_FDS) * 4)
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_REQUEST, space)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], "little", signed=True)
                    for i in range(0, usable, 4)]
    return data, fds


def _become_keeper(request: Record, fds: list[int], sock_fd: int, lifeline_fd: int) -> int:
    """In the clone: take the launch's stdio, session, directory and environment, then
    run the keeper. Returns its exit status."""
    out, err, status, *pump = fds
    os.close(sock_fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        if fd > 2:
            os.close(fd)
    os.setsid()
    items = request.pop("env", [])
    env = [str(item) for item in items] if isinstance(items, list) else []
    os.environ.clear()
    for item in env:
        key, sep, value = item.partition("=")
        if sep and key:
            os.environ[key] = value
    cwd = request.pop("cwd", "")
    umask = request.pop("umask", -1)
    limits = request.pop("rlimits", [])
    config = dict(request, status_fd=status, lifeline_fd=lifeline_fd)
    if pump:
        config["pump"] = pump
    plat.show_as([sys.executable, "-I", "-S", _KEEPER_MAIN, config_arg(config) + "\tpad="],
                 [*env, CLONE_ROOM + "="])
    if isinstance(umask, int) and umask >= 0:
        os.umask(umask)
    _set_limits(limits if isinstance(limits, list) else [])
    try:
        if cwd:
            os.chdir(str(cwd))
    except OSError as exc:
        # errno 0: the engine shows the message as it is (an ENOENT would read "command
        # not found")
        Keeper(config).emit({"event": "error", "errno": 0, "message":
                             f"working directory {cwd}: {(exc.strerror or str(exc)).lower()}"})
        return 127
    return Keeper(config).run()


def _set_limits(limits: list[object]) -> None:
    """The kernel's resource limits at the launch ("number=soft,hard" items): the ones it
    has now, not the ones it had when the zygote started. Best effort, as for a child of
    the kernel: a hard limit the kernel raised since then (as root) may not be reachable."""
    for item in limits:
        number, _, pair = str(item).partition("=")
        soft, _, hard = pair.partition(",")
        try:
            resource.setrlimit(int(number), (int(soft), int(hard)))
        except (ValueError, OSError):
            continue


def serve(sock_fd: int, lifeline_fd: int) -> int:
    """The zygote's loop: clone a keeper per request until the socket or lifeline ends."""
    plat.set_name(ZYGOTE_NAME)
    sock = _socket.socket(fileno=sock_fd)
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    poller.register(lifeline_fd, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if lifeline_fd in ready:
            return 0  # the kernel is gone: its keepers tear down on their own
        try:
            data, fds = _receive(sock)
        except InterruptedError:
            continue
        except OSError:
            return 1
        if not data:
            return 0
        reply = b"error=22"  # EINVAL: a request without its three (or six) descriptors
        if len(fds) in _FDS:
            try:
                pid = plat.clone_sibling()
            except OSError as exc:
                reply = f"error={exc.errno or 0}".encode()
            else:
                if pid == 0:
                    status = 1
                    try:
                        status = _become_keeper(
                            read_request(data.decode("utf-8", "surrogateescape")),
                            fds, sock_fd, lifeline_fd)
                    finally:
                        os._exit(status)
                reply = f"pid={pid}".encode() if pid is not None else b"error=38"  # ENOSYS
        for fd in fds:
            os.close(fd)
        try:
            sock.send(reply)
        except OSError:
            return 1
