"""The background threads of a Tracker, which run whatever the caller's thread does: one
anyio event loop (exit watches, readiness waits) and, on POSIX, one drain thread
(``drain.py``) that reads every root's output. Windows drains with reader threads here."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from functools import partial
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from .. import _platform as plat
from .._keeper.protocol import read_status_events
from .drain import READ_SIZE, Drain
from .launch import Root
from .output import STDERR, STDOUT, OutputSink
from .pumped import PumpFeed

log = logging.getLogger(__name__)

T = TypeVar("T")


class Loop:
    """A blocking portal into one anyio loop thread, and the drain thread; each started on
    first use. ``on_output`` is the display's wake-up (throttled on POSIX)."""

    def __init__(self, *, on_output: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()  # guards _portal and _cm: start and stop race
        self._cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._on_output = on_output
        self._drain = Drain(on_output=on_output)

    def _get_portal(self) -> anyio.from_thread.BlockingPortal:
        with self._lock:
            if self._portal is None:
                cm = anyio.from_thread.start_blocking_portal()
                self._portal = cm.__enter__()
                self._cm = cm
            return self._portal

    def run_soon(self, fn: Callable[[], Awaitable[T]]) -> Future[T]:
        """Run ``fn()`` on the loop thread; its future."""
        return self._get_portal().start_task_soon(fn)

    def supervise(
        self,
        root: Root,
        sink: OutputSink,
        *,
        on_exit: Callable[[int], None],
        drained: threading.Event,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        """Drain ``root``'s pipes (or follow its keeper's pump) into ``sink`` and report
        its exit code to ``on_exit`` (on the loop thread); ``drained`` is set once both
        pipes are closed and every byte is in the sink (the exit is reported apart:
        waiting for the keeper to exit too would add 10-30 ms to the end of every output).
        ``on_event`` gets the keeper's other status events (``limit_exceeded``)."""
        if root.pump is not None:  # the keeper reads the pipes and writes the log
            self._drain.add_pump(PumpFeed(root.pump, sink),
                                 _Finish(sink, drained, parts=1).part_done)
        elif plat.ASYNC_PIPES:
            finish = _Finish(sink, drained)
            self._drain.add(root.out_fd, STDOUT, sink, finish.part_done)
            self._drain.add(root.err_fd, STDERR, sink, finish.part_done)
        else:
            finish = _Finish(sink, drained)
            for fd, stream in ((root.out_fd, STDOUT), (root.err_fd, STDERR)):
                self.run_soon(partial(_drain_threaded, sink, fd, stream, self._on_output,
                                      finish.part_done))
        self.run_soon(partial(_watch_exit, root, on_exit, on_event))

    def stop(self) -> None:
        """End the drain thread (closing every pipe still open), cancel every task and end
        the loop thread. Idempotent; raises what stopping raised (the caller reports it)."""
        self._drain.stop()
        with self._lock:
            portal, cm = self._portal, self._cm
            self._portal = self._cm = None
        if portal is not None and cm is not None:
            portal.call(portal.stop, True)
            cm.__exit__(None, None, None)


class _Finish:
    """Closes a sink and sets its ``drained`` event once both its pipes are done,
    whichever thread finishes last."""

    def __init__(self, sink: OutputSink, drained: threading.Event, *, parts: int = 2) -> None:
        self._sink = sink
        self._drained = drained
        self._left = parts
        self._lock = threading.Lock()

    def part_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            try:
                self._sink.close()
            finally:
                self._drained.set()


async def _drain_threaded(
    sink: OutputSink,
    fd: int,
    stream: str,
    on_output: Callable[[], None] | None,
    done: Callable[[], None],
) -> None:
    """Read until EOF with blocking reads on a worker thread (Windows pipes cannot be
    selected)."""
    limiter = anyio.CapacityLimiter(1)
    try:
        while data := await anyio.to_thread.run_sync(
            os.read, fd, READ_SIZE, abandon_on_cancel=True, limiter=limiter
        ):
            sink.feed(stream, data)
            if on_output is not None:
                on_output()
    except OSError as exc:
        log.warning("reading %s failed: %s", stream, exc)
        sink.feed(STDERR, f"\n[ipyproctrack: reading {stream} failed: {exc}]\n".encode())
    finally:
        try:
            os.close(fd)
        finally:
            done()


async def _watch_exit(
    root: Root, on_exit: Callable[[int], None],
    on_event: Callable[[dict[str, object]], None] | None = None,
) -> None:
    popen = root.popen
    reported = False
    if root.status_fd is not None:
        reported = await _follow_keeper(root.status_fd, on_exit, on_event)
    else:
        waiter = plat.open_exit_waiter(popen.pid)
        if waiter is not None:
            try:
                await anyio.wait_readable(waiter)
            finally:
                os.close(waiter)
    delay = 0.005
    while (rc := popen.poll()) is None:
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.2)
    if not reported:
        # Without a keeper this is the command's code; with one, the keeper died before it
        # could report (it mirrors signal deaths as 128+n).
        if root.status_fd is not None and rc > 128:
            rc = 128 - rc
        on_exit(rc)


async def _follow_keeper(
    fd: int, on_exit: Callable[[int], None],
    on_event: Callable[[dict[str, object]], None] | None = None,
) -> bool:
    """Read the keeper's status events until it exits (EOF); whether it reported the
    command's exit."""
    buf = bytearray()
    reported = False
    try:
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not data:
                return reported
            for event in read_status_events(buf, data):
                rc = event.get("returncode")
                if event.get("event") == "exited" and isinstance(rc, int):
                    reported = True
                    on_exit(rc)
                elif on_event is not None:
                    on_event(event)
    except OSError as exc:
        log.warning("reading the keeper's status failed: %s", exc)
        return reported
    finally:
        os.close(fd)
