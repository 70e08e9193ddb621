"""Port facts: is a local TCP port taken, by whom, and which ports a process tree listens on.

psutil is optional. Where it is missing (or refuses, as ``net_connections`` does for
non-root users on macOS) we read ``/proc/net/tcp{,6}`` and ``/proc/<pid>/fd`` when they
exist, and otherwise report the holder as unknown. No platform checks: the absence of
``/proc/net/tcp`` simply means "unknown".
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._proc.scan import command_of
from ..errors import LaunchError, PortInUseError
from .ready.checks import PORT_FIELD, connected_to_itself

if TYPE_CHECKING:
    from .ready import ReadinessCheck

try:
    import psutil

    _HAVE_PSUTIL = True
except ImportError:  # pragma: no cover - psutil is a normal dependency
    _HAVE_PSUTIL = False

__all__ = [
    "PortHolder", "bind_port", "check_port_free", "free_port", "listening_ports",
    "port_holder", "resolve_port", "with_port",
]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 0.5
_TCP_LISTEN = "0A"  # state column of /proc/net/tcp
_MAX_COMMAND = 200
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})
#: A port free_port() handed out is not handed out again for this long: the first
#: process may not have bound it yet when a second launch asks.
_HANDED_OUT_FOR = 120.0
_handed_out: dict[int, float] = {}
_handed_out_lock = threading.Lock()


@dataclass(frozen=True)
class PortHolder:
    """The process listening on a port. Both fields are None when it cannot be seen
    (another user's process without psutil's help, or another network namespace)."""

    pid: int | None
    command: str | None


def _family_and_addr(host: str) -> tuple[socket.AddressFamily, str]:
    host = host.strip("[]")
    if host.lower() == "localhost" or host == "":
        return socket.AF_INET, "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return info[0][0], str(info[0][4][0])
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


def _connect_works(family: socket.AddressFamily, addr: str, port: int) -> bool:
    if addr in ("0.0.0.0", "::"):
        addr = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(_CONNECT_TIMEOUT)
        try:
            s.connect((addr, port))
        except TimeoutError:
            return True  # a loopback connect only hangs when a full backlog holds it
        except OSError:
            return False
        return not connected_to_itself(s)


def _bind_fails(family: socket.AddressFamily, addr: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # What a server does: with SO_REUSEADDR a TIME_WAIT leftover does not count, but
        # a LISTEN socket on the port still does. Where SO_REUSEADDR would let us steal a
        # port (Windows), ask for exclusive use instead.
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        with contextlib.suppress(OSError):
            if exclusive is not None:
                s.setsockopt(socket.SOL_SOCKET, exclusive, 1)
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1))
        return False


def _addr_matches(listen_ip: str, host_ip: str) -> bool:
    if listen_ip in _WILDCARDS or host_ip in _WILDCARDS:
        return True
    if listen_ip == host_ip:
        return True
    # An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is the same endpoint.
    with contextlib.suppress(ValueError):
        a, b = ipaddress.ip_address(listen_ip), ipaddress.ip_address(host_ip)
        a4 = a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else a
        b4 = b.ipv4_mapped if isinstance(b, ipaddress.IPv6Address) else b
        return (a4 or a) == (b4 or b)
    return False


# --- /proc reading --------------------------------------------------------------------


def _proc_ip(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def _proc_listen_sockets() -> dict[int, tuple[str, int]] | None:
    """inode -> (ip, port) of every TCP LISTEN socket, or None if /proc has no tables."""
    out: dict[int, tuple[str, int]] = {}
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii", errors="replace") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            try:
                hex_ip, hex_port = fields[1].split(":")
                out[int(fields[9])] = (_proc_ip(hex_ip), int(hex_port, 16))
            except ValueError:
                continue
    return out if found else None


def _proc_socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            with contextlib.suppress(ValueError):
                inodes.add(int(target[8:-1]))
    return inodes


def _proc_listeners(port: int, host_ip: str) -> list[int | None] | None:
    """Pids (None where unseen) with a LISTEN socket on the port; None if no /proc tables."""
    sockets = _proc_listen_sockets()
    if sockets is None:
        return None
    wanted = {i for i, (ip, p) in sockets.items() if p == port and _addr_matches(ip, host_ip)}
    if not wanted:
        return []
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return [None]
    found: list[int | None] = [pid for pid in pids if _proc_socket_inodes(pid) & wanted]
    return found or [None]


# --- psutil -----------------------------------------------------------------------------


def _command(pid: int) -> str | None:
    return command_of(pid) or None  # the one reader: /proc, psutil or ps


def _psutil_listeners(port: int, host_ip: str) -> list[int | None] | None:
    """Pids (None where unseen) with a LISTEN socket on the port; None if psutil cannot
    tell (missing, or the system-wide table is refused and no process we can see has it)."""
    if not _HAVE_PSUTIL:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError) as exc:
        log.debug("the system-wide socket table is refused (%s): asking each process", exc)
        conns = None
    if conns is not None:
        return [
            c.pid
            for c in conns
            if c.status == psutil.CONN_LISTEN
            and c.laddr
            and c.laddr.port == port
            and _addr_matches(c.laddr.ip, host_ip)
        ]
    # The system-wide table is refused (macOS without root): ask each process we may see.
    for proc in psutil.process_iter():
        try:
            for pc in proc.net_connections(kind="tcp"):
                if (
                    pc.status == psutil.CONN_LISTEN
                    and pc.laddr
                    and pc.laddr.port == port
                    and _addr_matches(pc.laddr.ip, host_ip)
                ):
                    return [proc.pid]
        except (psutil.Error, OSError):
            continue
    return None


def _listeners(port: int, host_ip: str) -> list[int | None] | None:
    found = _psutil_listeners(port, host_ip)
    if found is None or (found and all(pid is None for pid in found)):
        # psutil could not tell, or could not name the pid: /proc may know better.
        from_proc = _proc_listeners(port, host_ip)
        if from_proc is not None and (found is None or any(from_proc)):
            found = from_proc
    return found


# --- public -----------------------------------------------------------------------------


def port_holder(port: int, host: str = "127.0.0.1") -> PortHolder | None:
    """None if ``host:port`` is free; else who listens on it (fields None if unseen).

    "Taken" means a connection to it succeeds, or a server-style bind (SO_REUSEADDR, as
    servers do) fails with "address in use" because of a LISTEN socket. When the bind fails
    only because of sockets that do not listen (a connection lingering in TIME_WAIT), the
    port counts as free: a server may well bind there, and if it cannot, its own error
    shows in the output.
    """
    try:
        family, host_ip = _family_and_addr(host)
    except OSError:
        return None
    accepts = _connect_works(family, host_ip, port)
    if not accepts and not _bind_fails(family, host_ip, port):
        return None
    listeners = _listeners(port, host_ip)
    if listeners is None:  # cannot look: trust the socket tests
        return PortHolder(None, None)
    if not listeners:
        return PortHolder(None, None) if accepts else None
    pid = next((p for p in listeners if p is not None), None)
    return PortHolder(pid, _command(pid) if pid is not None else None)


def _short(command: str) -> str:
    command = " ".join(command.split())  # one line, even for a multi-line "python -c"
    return command if len(command) <= _MAX_COMMAND else command[: _MAX_COMMAND - 1] + "…"


def check_port_free(port: int, host: str, *, owners: Mapping[int, str]) -> None:
    """Raise ``PortInUseError`` naming the holder if ``host:port`` is taken.

    ``owners`` maps pid -> tracked name for the members of our own tracked trees.
    """
    holder = port_holder(port, host)
    if holder is None:
        return
    msg = f"port {port} on {host} is already taken"
    if holder.pid is None:
        msg += " (the process holding it cannot be seen)"
    else:
        msg += f" by pid {holder.pid}"
        if holder.command:
            msg += f" ({_short(holder.command)})"
        if holder.pid in owners:
            msg += f", part of tracked process {owners[holder.pid]!r}"
    raise PortInUseError(msg)


def listening_ports(pids: Iterable[int]) -> list[int]:
    """Sorted TCP ports on which any of ``pids`` has a LISTEN socket.

    On Linux this reads the socket tables once and each pid's fd list, which is cheaper
    than psutil's per-process call (that re-reads the tables for every pid).
    """
    pid_list = list(dict.fromkeys(pids))
    ports: set[int] = set()
    if os.path.isdir("/proc/self/fd"):
        # The fd links first: a tree with no socket costs no read of the socket tables,
        # which the kernel generates anew on every read (milliseconds on a busy host).
        inodes = set().union(*(_proc_socket_inodes(pid) for pid in pid_list))
        if not inodes:
            return []
        sockets = _proc_listen_sockets()
        if sockets is not None:
            return sorted({sockets[i][1] for i in inodes if i in sockets})
    if not _HAVE_PSUTIL:
        return []
    for pid in pid_list:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr)
    return sorted(ports)


# --------------------------------------------------------------------- choosing a port


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the kernel's choice for a bind
    to port 0), never one this process handed out in the last two minutes."""
    with _handed_out_lock:
        now = time.monotonic()
        for port, at in list(_handed_out.items()):
            if now - at > _HANDED_OUT_FOR:
                del _handed_out[port]
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out[port] = now
                return port
    raise LaunchError(f"no free TCP port found on {host}")


def resolve_port(port: int | str | None) -> int | None:
    """``start(port=...)``: "auto" -> a free port; a port number as it is; None."""
    if port is None:
        return None
    if port == "auto":
        return free_port()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise LaunchError(f"port must be 'auto' or a TCP port number 1-65535, not {port!r}")
    return port


def with_port(command: str | Sequence[str], port: int) -> str | list[str]:
    """``command`` with every ``{port}`` replaced (not str.format: scripts hold braces)."""
    if isinstance(command, str):
        return command.replace(PORT_FIELD, str(port))
    return [word.replace(PORT_FIELD, str(port)) for word in command]


def bind_port(checks: Sequence[ReadinessCheck], port: int | None) -> list[ReadinessCheck]:
    """The checks with ``{port}`` filled in; a LaunchError if one needs a port and
    start() was given none."""
    out = []
    for check in checks:
        if check.needs_port:
            if port is None:
                raise LaunchError(f"{check.describe()} needs a port: pass port='auto' or "
                                  "port=N (--port in the magics)")
            check = check.with_port(port)
        out.append(check)
    return out
