"""The drain thread: one plain thread per Tracker reads every pipe (POSIX).

Each pipe is registered once, for its lifetime, with one persistent ``select.epoll``
(``select.poll`` where there is no epoll): a read costs one wait and one ``os.read``, not
the selector registration that an event loop's ``wait_readable`` pays every time. A flood
is read in large pieces: after a wait that found output the thread pauses briefly
(``COALESCE``), so a fast writer fills the pipe (1 MiB on Linux) instead of waking us for
every 8 KiB it writes. Windows cannot select on pipes: ``loop.py`` drains there with
reader threads."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .. import _platform as plat
from .output import STDERR, OutputSink
from .pumped import PumpFeed

log = logging.getLogger(__name__)

# 64 KiB, the plain loop's size: measured against 256 KiB (2026-12-03, pinned and in the
# Tracker), the same CPU per GiB and about a tenth more throughput; the chunk stays in cache.
READ_SIZE = 1 << 16
# A flooding pipe is read at most this much in a row, so the other pipes get their turn.
FAIR_SHARE = 4 << 20
# The pause after a wait that found output: a flood is then read in runs of READ_SIZE
# pieces, not in the 8-80 KiB a writer has added since the last wake-up: a third or less
# of the wake-ups and Python work per byte. A human, a readiness check or a subscriber
# never notices 0.3 ms. Only for pipes that hold what a fast writer adds meanwhile (1 MiB on
# Linux): a full 64 KiB pipe would stall the writer for most of the pause.
COALESCE = 0.0003
COALESCE_MIN_PIPE = 512 << 10
# on_output is called at most this often while output flows (and once after it stops):
# the widgets refresh at 5 Hz at most.
NOTIFY_INTERVAL = 0.05

_EPOLL = getattr(select, "epoll", None)


class _Poller(Protocol):
    """What select.epoll and select.poll objects share."""

    def register(self, fd: int, eventmask: int = ..., /) -> None: ...

    def unregister(self, fd: int, /) -> None: ...

    def poll(self, timeout: float | None = ..., /) -> list[tuple[int, int]]: ...


class _Pipe:
    __slots__ = ("done", "fd", "roomy", "sink", "stream")

    def __init__(self, fd: int, stream: str, sink: OutputSink, done: Callable[[], None],
                 *, roomy: bool) -> None:
        self.fd = fd
        self.stream = stream
        self.sink = sink
        self.done = done
        self.roomy = roomy  # holds what a flood adds during a COALESCE pause


class _Pumped:
    """A keeper's pump followed through its socket (``pumped.py``)."""

    __slots__ = ("done", "fd", "feed")

    def __init__(self, feed: PumpFeed, done: Callable[[], None]) -> None:
        self.feed = feed
        self.fd = feed.fileno
        self.done = done

    def close(self) -> None:
        try:
            self.feed.read_back(force=True)
            self.feed.close()
        except OSError as exc:
            log.warning("closing a pump's socket failed: %s", exc)
        try:
            self.done()
        except Exception:  # the other sources must still be closed
            log.exception("finishing a pump failed")


def _read_back(lagging: set[_Pumped]) -> tuple[float | None, bool]:
    """Let each pump's feed read back what is due: (the seconds until the next one is,
    whether any sink got output)."""
    timeout = None
    got = False
    for pump in list(lagging):
        got = pump.feed.read_back() or got
        due = pump.feed.due()
        if due is None:
            lagging.discard(pump)
        elif timeout is None or due < timeout:
            timeout = due
    return timeout, got


class Drain:
    """Reads every pipe given to ``add`` until EOF, on a thread of its own (started on first
    use, ended by ``stop``). ``on_output`` is a cheap wake-up for displays, throttled to one
    call per NOTIFY_INTERVAL while output flows."""

    def __init__(self, *, on_output: Callable[[], None] | None = None) -> None:
        self._on_output = on_output
        # Guards the thread's start and end, _wake_w and _incoming: add() and stop() run on
        # other threads than the drain.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_r = self._wake_w = -1
        self._incoming: list[_Pipe | _Pumped] = []

    def add(self, fd: int, stream: str, sink: OutputSink, done: Callable[[], None]) -> None:
        """Read ``fd`` into ``sink`` as ``stream`` until EOF, then close it and call
        ``done()`` (also when stop() ends the drain first)."""
        os.set_blocking(fd, False)
        pipe = _Pipe(fd, stream, sink, done, roomy=plat.enlarge_pipe(fd) >= COALESCE_MIN_PIPE)
        with self._lock:
            if self._thread is None:
                self._start()
            self._incoming.append(pipe)
            self._wake()

    def add_pump(self, feed: PumpFeed, done: Callable[[], None]) -> None:
        """Follow a keeper's pump until both its streams end, then close its socket and
        call ``done()`` (also when stop() ends the drain first)."""
        with self._lock:
            if self._thread is None:
                self._start()
            self._incoming.append(_Pumped(feed, done))
            self._wake()

    def _start(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ipyproctrack-drain",
                                        daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            # A full pipe holds wake-ups enough: the thread will look.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    def stop(self, timeout: float = 5.0) -> bool:
        """End the thread; every pipe still open is closed and its ``done()`` called.
        Idempotent; False if the thread did not end in ``timeout`` seconds."""
        with self._lock:
            thread = self._thread
            self._stopping = True
            self._wake()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the drain thread did not end within %.1f s", timeout)
            return False
        return True

    # --- the drain thread -------------------------------------------------------------------
    def _run(self) -> None:
        poller: _Poller = _EPOLL() if _EPOLL is not None else select.poll()
        pipes: dict[int, _Pipe | _Pumped] = {}
        try:
            poller.register(self._wake_r, select.POLLIN)
            self._serve(poller, pipes)
        except Exception:  # a bug here must not hang the writers silently: say so
            log.exception("the drain thread failed; closing its pipes")
        finally:
            with self._lock:
                self._thread = None
                wake = (self._wake_r, self._wake_w)
                self._wake_r = self._wake_w = -1
                pending, self._incoming = self._incoming, []
            for pipe in [*pipes.values(), *pending]:
                if isinstance(pipe, _Pumped):
                    pipes.pop(pipe.fd, None)
                    pipe.close()
                else:
                    self._close(poller, pipes, pipe)
            poller_close = getattr(poller, "close", None)
            if poller_close is not None:
                poller_close()
            for fd in wake:
                os.close(fd)

    def _serve(self, poller: _Poller, pipes: dict[int, _Pipe | _Pumped]) -> None:
        # The hot loop: per wait one poll() and, per readable pipe, its reads and feeds.
        wait = poller.poll
        scale = 1.0 if _EPOLL is not None else 1000.0  # epoll takes seconds, poll ms
        wake_fd = self._wake_r
        on_output = self._on_output
        pending = False  # output arrived that on_output was not told about yet
        next_notify = 0.0
        timeout: float | None = None
        lagging: set[_Pumped] = set()  # pumps with output not read back yet
        while not self._stopping:
            events = wait(timeout * scale if timeout is not None else -1)
            got = False
            pause = True  # every pipe that had output can hold a flood's pause
            for fd, _ in events:
                pipe = pipes.get(fd)
                if isinstance(pipe, _Pumped):
                    got = self._follow(poller, pipes, pipe, lagging) or got
                    pause = False  # the keeper reads that flood, not us
                elif pipe is not None:
                    if self._read(poller, pipes, pipe):
                        got = True
                        pause = pause and pipe.roomy
                elif fd == wake_fd:
                    self._take_incoming(poller, pipes)
            timeout = None
            if lagging:  # only with keepers' pumps: the pipes' loop pays nothing for them
                timeout, read_back = _read_back(lagging)
                got = got or read_back  # the displays hear of it once it is in the tail
            if got:
                pending = on_output is not None
                if pause:
                    time.sleep(COALESCE)
            if pending and on_output is not None:
                now = time.monotonic()
                if now >= next_notify:
                    pending = False
                    next_notify = now + NOTIFY_INTERVAL
                    on_output()
                else:
                    timeout = min(timeout, next_notify - now) if timeout is not None \
                        else next_notify - now

    @staticmethod
    def _follow(poller: _Poller, pipes: dict[int, _Pipe | _Pumped], pump: _Pumped,
                lagging: set[_Pumped]) -> bool:
        """Take a pump's messages; whether output came. An ended pump is closed."""
        came, ended = pump.feed.on_readable()
        if ended:
            del pipes[pump.fd]
            poller.unregister(pump.fd)
            lagging.discard(pump)
            pump.close()
        else:
            lagging.add(pump)
        return came

    def _read(self, poller: _Poller, pipes: dict[int, _Pipe | _Pumped],
              pipe: _Pipe) -> bool:
        """Read what ``pipe`` holds (up to FAIR_SHARE); whether any output came."""
        fd, feed, stream = pipe.fd, pipe.sink.feed, pipe.stream
        run = 0
        try:
            while True:
                data = os.read(fd, READ_SIZE)
                if not data:
                    self._close(poller, pipes, pipe)
                    return run > 0
                feed(stream, data)
                run += len(data)
                if len(data) < READ_SIZE or run >= FAIR_SHARE:
                    return True  # emptied, or another turn comes at the next wait
        except BlockingIOError:  # a spurious wake-up
            return run > 0
        except OSError as exc:
            log.warning("reading %s failed: %s", stream, exc)
            pipe.sink.feed(STDERR, f"\n[ipyproctrack: reading {stream} failed: {exc}]\n"
                           .encode())
            self._close(poller, pipes, pipe)
            return True

    def _take_incoming(self, poller: _Poller,
                       pipes: dict[int, _Pipe | _Pumped]) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for pipe in incoming:
            pipes[pipe.fd] = pipe
            try:
                poller.register(pipe.fd, select.POLLIN)
            except OSError as exc:  # not a pipe we can wait on: say so, and let it go
                log.warning("cannot watch a pipe or pump: %s", exc)
                pipes.pop(pipe.fd)
                if isinstance(pipe, _Pumped):
                    pipe.close()
                else:
                    self._close(poller, pipes, pipe)

    @staticmethod
    def _close(poller: _Poller, pipes: dict[int, _Pipe | _Pumped], pipe: _Pipe) -> None:
        """Forget ``pipe`` before closing it: its number may be reused at once."""
        if pipes.pop(pipe.fd, None) is not None:
            try:
                poller.unregister(pipe.fd)
            except (OSError, KeyError) as exc:
                log.warning("unregistering %s's pipe failed: %s", pipe.stream, exc)
        try:
            os.close(pipe.fd)
        except OSError as exc:
            log.warning("closing %s's pipe failed: %s", pipe.stream, exc)
        try:
            pipe.done()
        except Exception:  # the other pipes must still be closed
            log.exception("finishing %s failed", pipe.stream)
