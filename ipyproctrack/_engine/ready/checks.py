"""The readiness checks: small objects, each one condition that says a process is ready.

A check never raises for "not yet": it returns False. ``wait.wait_until_ready`` polls them.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import contextlib
import inspect
import ipaddress
import logging
import re
import socket
import struct
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Container, Iterable, Sequence
from typing import Protocol

import anyio
import anyio.to_thread

log = logging.getLogger(__name__)

# One attempt of a network check never takes longer than this (the deadline may cut it
# shorter). Connections to a loopback port are refused or accepted at once.
_ATTEMPT_TIMEOUT = 2.0
_WINDOW_CHARS = 64 * 1024
_SEED_LINES = 2000
_STREAMS = ("stdout", "stderr")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class _ChunkLike(Protocol):
    @property
    def stream(self) -> str: ...
    @property
    def data(self) -> bytes: ...


class ProcessLike(Protocol):
    """What the checks use of a ``TrackedProcess`` (so they can be tested on their own)."""

    @property
    def name(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def tree(self) -> Sequence[object]: ...
    def tail(self, lines: int = 50, *, stream: str | None = None) -> str: ...
    def tail_chunks(self, lines: int = 50) -> list[tuple[str, str]]: ...
    def subscribe(
        self, callback: Callable[[Sequence[_ChunkLike]], None], /
    ) -> Callable[[], None]: ...


class ReadinessCheck(abc.ABC):
    """One condition that says a started process is ready.

    ``port``/``host`` are set by checks bound to a local port; the engine refuses to start
    when that port is already taken (see ``ports.check_port_free``).
    """

    port: int | None = None
    host: str = "127.0.0.1"
    #: True while the check holds a ``{port}`` placeholder that ``with_port`` fills in
    needs_port: bool = False

    @abc.abstractmethod
    def describe(self) -> str:
        """Short text for messages and widgets, e.g. ``port 127.0.0.1:8000``."""

    def prepare(self, proc: ProcessLike) -> None:  # noqa: B027 - optional hook
        """Called right after launch, before draining starts. Default: nothing."""

    @abc.abstractmethod
    async def check(self, proc: ProcessLike) -> bool:
        """One attempt; True when ready. Must not block the loop for long."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release whatever ``prepare`` acquired. Idempotent. Default: nothing."""

    def with_port(self, port: int) -> ReadinessCheck:
        """This check with ``{port}`` replaced by ``port`` (start(port=...) calls it when
        ``needs_port``). Default: the check itself."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


#: The placeholder for the port given to ``start(port=...)``, in commands and checks.
PORT_FIELD = "{port}"


def _utf8_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("replace")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port_number(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"not a TCP port number: {port!r}")
    return port


async def _connect(host: str, port: int) -> anyio.abc.SocketStream | None:
    """One connection attempt, made in a worker thread: name lookups and connects block,
    and the drain loop must never wait for them (a slow check would stall every
    process's output)."""
    sock = await anyio.to_thread.run_sync(_connect_blocking, host, port,
                                          abandon_on_cancel=True)
    if sock is None:
        return None
    try:
        return await anyio.abc.SocketStream.from_socket(sock)
    except OSError:
        sock.close()
        return None


def _connect_blocking(host: str, port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection((host, port), timeout=_ATTEMPT_TIMEOUT)
    except OSError:
        return None
    if connected_to_itself(sock):
        return None
    return sock


def connected_to_itself(sock: socket.socket) -> bool:
    """True (and ``sock`` closed) if a connect reached its own socket, not a server.

    A connect to a local port in the ephemeral range where nothing listens yet can pick
    that very port as its source: TCP's simultaneous open then connects the socket to
    itself. Auto ports come from that range, so a readiness poll would see "ready" before
    the server binds (a CI failure). The close resets the socket (SO_LINGER 0) so that no
    TIME_WAIT holds the port against a server that binds without SO_REUSEADDR.
    """
    try:
        if sock.getsockname() != sock.getpeername():
            return False
    except OSError:  # reset already: the caller's first read or write fails
        return False
    with contextlib.suppress(OSError):  # without the linger the close still counts
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return True


class PortReady(ReadinessCheck):
    """Ready when a TCP connection to ``host:port`` succeeds."""

    def __init__(self, port: int | str, *, host: str = "127.0.0.1") -> None:
        """``port="{port}"``: the port given to ``start(port=...)``."""
        if port == PORT_FIELD:
            self.needs_port = True
        else:
            self.port = _check_port_number(port)
        self.host = host

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"port {host}:{PORT_FIELD if self.needs_port else self.port}"

    def with_port(self, port: int) -> ReadinessCheck:
        return PortReady(port, host=self.host) if self.needs_port else self

    async def check(self, proc: ProcessLike) -> bool:
        assert self.port is not None
        stream = await _connect(self.host, self.port)
        if stream is None:
            return False
        await stream.aclose()
        return True


class HttpReady(ReadinessCheck):
    """Ready when a GET of ``url`` answers with an accepted status.

    ``status``: one code, a container of codes, or None for any 2xx or 3xx. Plain
    ``http://`` only; redirects are not followed (a 3xx counts as an answer).
    """

    def __init__(self, url: str, *, status: int | Container[int] | None = None) -> None:
        """A ``{port}`` in ``url`` stands for the port given to ``start(port=...)``."""
        self.needs_port = PORT_FIELD in url
        parts = urllib.parse.urlsplit(url.replace(PORT_FIELD, "1"))
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError(f"HttpReady needs a plain http:// URL with a host, not {url!r}")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise ValueError(f"bad port in URL {url!r}") from exc
        self.url = url
        self.status = status
        self._connect_host = parts.hostname
        self._connect_port = port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._host_header = parts.netloc.rpartition("@")[2]
        # Only a port on this machine can be checked for "already taken" before launch.
        if _is_loopback(parts.hostname) and not self.needs_port:
            self.port = port
            self.host = parts.hostname
        self.last_status: int | None = None

    def describe(self) -> str:
        want: str
        if self.status is None:
            want = "2xx/3xx"
        elif isinstance(self.status, int):
            want = str(self.status)
        elif isinstance(self.status, range) and self.status.step == 1 and self.status:
            want = f"{self.status.start}-{self.status.stop - 1}"
        elif isinstance(self.status, Iterable):
            want = "/".join(str(s) for s in sorted(self.status))
        else:
            want = repr(self.status)
        return f"HTTP {self.url} -> {want}"

    def with_port(self, port: int) -> ReadinessCheck:
        if not self.needs_port:
            return self
        return HttpReady(self.url.replace(PORT_FIELD, str(port)), status=self.status)

    def accepts(self, code: int) -> bool:
        if self.status is None:
            return 200 <= code < 400
        if isinstance(self.status, int):
            return code == self.status
        return code in self.status

    async def check(self, proc: ProcessLike) -> bool:
        code = await self._get_status()
        self.last_status = code
        return code is not None and self.accepts(code)

    async def _get_status(self) -> int | None:
        stream = await _connect(self._connect_host, self._connect_port)
        if stream is None:
            return None
        request = (
            f"GET {self._target} HTTP/1.1\r\nHost: {self._host_header}\r\n"
            "User-Agent: ipyproctrack-ready\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1", "replace")
        head = b""
        try:
            with anyio.fail_after(_ATTEMPT_TIMEOUT):
                await stream.send(request)
                while b"\r\n" not in head and len(head) < 8192:
                    head += await stream.receive()
        except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        finally:
            await stream.aclose()
        match = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", head)
        return int(match.group(1)) if match else None


class OutputReady(ReadinessCheck):
    """Ready when ``pattern`` matches the process's output.

    The match may span several reads: each stream is decoded incrementally and keeps a
    rolling window of its last 64 KiB of text, and every new batch is searched together
    with that window. A string pattern is compiled with ``re.MULTILINE`` (so ``^``/``$``
    work per line); pass a compiled pattern to choose the flags yourself. ANSI color codes
    are removed first. ``stream``: "stdout", "stderr" or None (either).
    """

    def __init__(self, pattern: str | re.Pattern[str], *, stream: str | None = None) -> None:
        if stream not in (None, "stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout', 'stderr' or None, not {stream!r}")
        self.pattern: re.Pattern[str] = (
            re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        )
        self.stream = stream
        self.match: re.Match[str] | None = None
        self._lock = threading.Lock()
        self._windows: dict[str, str] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._prepared = False
        self._closed = False

    def describe(self) -> str:
        where = f" on {self.stream}" if self.stream else ""
        return f"output /{self.pattern.pattern}/{where}"

    def _wants(self, stream: str) -> bool:
        return stream == self.stream if self.stream else stream in _STREAMS

    def prepare(self, proc: ProcessLike) -> None:
        with self._lock:
            if self._prepared:
                return
            self._prepared = True
        # Subscribe first, then read the tail under our lock: the tail then holds every
        # byte delivered to us so far (the sink adds to its tail before it tells
        # subscribers), so it replaces those windows and nothing falls in between.
        unsubscribe = proc.subscribe(self._on_output)
        with self._lock:
            closed = self._closed
            if not closed:
                self._unsubscribe = unsubscribe
                self._seed(proc)
        if closed:  # close() ran while we subscribed
            unsubscribe()

    def _seed(self, proc: ProcessLike) -> None:
        """Start the windows from the tail. Called with the lock held."""
        already: dict[str, list[str]] = {}
        for stream, text in proc.tail_chunks(_SEED_LINES):
            if self._wants(stream):
                already.setdefault(stream, []).append(text)
        for stream, texts in already.items():
            self._windows[stream] = ""
            if self._search(stream, "".join(texts)):
                return

    def _on_output(self, chunks: Sequence[_ChunkLike]) -> None:
        with self._lock:
            if self.match is not None or self._closed:
                return
            by_stream: dict[str, list[str]] = {}
            for chunk in chunks:
                if not self._wants(chunk.stream):
                    continue
                decoder = self._decoders.get(chunk.stream)
                if decoder is None:
                    decoder = self._decoders[chunk.stream] = _utf8_decoder()
                by_stream.setdefault(chunk.stream, []).append(decoder.decode(chunk.data))
            for stream, texts in by_stream.items():
                if self._search(stream, "".join(texts)):
                    return

    def _search(self, stream: str, text: str) -> bool:
        """Add ``text`` to the stream's window and search it. Called with the lock held."""
        window = self._windows.get(stream, "") + _ANSI.sub("", text)
        found = self.pattern.search(window)
        self._windows[stream] = window[-_WINDOW_CHARS:]
        if found is None:
            return False
        self.match = found
        return True

    async def check(self, proc: ProcessLike) -> bool:
        if not self._prepared:  # the engine did not call prepare(): do it now
            self.prepare(proc)
        return self.match is not None

    def close(self) -> None:
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            self._closed = True
            self._windows.clear()
            self._decoders.clear()
        if unsubscribe is not None:
            unsubscribe()


class CallableReady(ReadinessCheck):
    """Ready when ``fn()`` returns true. ``fn`` runs in a worker thread, sync or async
    (an async one on an event loop of that thread); an exception counts as "not ready
    yet" (it is kept in ``last_error`` and chained to the timeout error)."""

    def __init__(self, fn: Callable[[], bool] | Callable[[], Awaitable[bool]]) -> None:
        if not callable(fn):
            raise TypeError(f"CallableReady needs a callable, not {fn!r}")
        self.fn = fn
        self.last_error: BaseException | None = None

    def describe(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"callable {name}"

    async def check(self, proc: ProcessLike) -> bool:
        try:
            result = await anyio.to_thread.run_sync(_call_to_the_end, self.fn,
                                                    abandon_on_cancel=True)
        except Exception as exc:  # "not ready yet": kept, and chained to a timeout error
            log.debug("%s: %s raised %r", proc.name, self.describe(), exc)
            self.last_error = exc
            return False
        self.last_error = None
        return bool(result)


def _call_to_the_end(fn: Callable[[], object]) -> object:
    """Call ``fn`` in this worker thread; an awaitable result (``fn`` is async) runs to
    its end here too, on an event loop of its own: user code never blocks the drain loop,
    whatever it does."""
    result = fn()
    if inspect.isawaitable(result):
        awaitable = result

        async def until_done() -> object:
            return await awaitable

        result = asyncio.run(until_done())
    return result


def as_checks(
    ready: ReadinessCheck | Sequence[ReadinessCheck] | None,
) -> list[ReadinessCheck]:
    """Normalize the ``ready=`` argument to a list (empty for None)."""
    if ready is None:
        return []
    if isinstance(ready, ReadinessCheck):
        return [ready]
    out: list[object] = list(ready) if isinstance(ready, Sequence) else [ready]
    checks = [item for item in out if isinstance(item, ReadinessCheck)]
    if len(checks) != len(out):
        raise TypeError(f"ready= takes a ReadinessCheck or a sequence of them, not {ready!r}")
    return checks


def describe_checks(checks: Sequence[ReadinessCheck]) -> str:
    return "; ".join(c.describe() for c in checks)


def close_checks(checks: Iterable[ReadinessCheck]) -> None:
    """Close every check; never raises."""
    for c in checks:
        try:
            c.close()
        except Exception:  # closing must not hide the real outcome; it is reported
            log.exception("closing readiness check %r failed", c)
