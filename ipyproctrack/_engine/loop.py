"""The background loop: one anyio event loop on a thread of its own per Tracker, which
drains every root's output and watches for its exit, whatever the caller's thread does."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .. import _platform as plat
from .._keeper.protocol import read_status_events
from .launch import Root
from .output import STDERR, STDOUT, OutputSink

log = logging.getLogger(__name__)

T = TypeVar("T")

_FAIR_SHARE = 4 << 20
_READ_SIZE = 1 << 18  # larger single writes to the log get slower on some disks


class Loop:
    """A blocking portal into one anyio loop thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _portal and _cm: start and stop race
        self._cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None

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
        """Drain ``root``'s pipes into ``sink`` and report its exit code to ``on_exit``
        (on the loop thread); ``drained`` is set once every byte is in the sink.
        ``on_event`` gets the keeper's other status events (``limit_exceeded``)."""
        self.run_soon(lambda: _supervise(root, sink, on_exit, drained, on_event))

    def stop(self) -> None:
        """Cancel every task and end the loop thread. Idempotent; raises what stopping
        raised (the caller reports it)."""
        with self._lock:
            portal, cm = self._portal, self._cm
            self._portal = self._cm = None
        if portal is not None and cm is not None:
            portal.call(portal.stop, True)
            cm.__exit__(None, None, None)


async def _supervise(
    root: Root, sink: OutputSink, on_exit: Callable[[int], None], drained: threading.Event,
    on_event: Callable[[dict[str, object]], None] | None = None,
) -> None:
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, sink, root.out_fd, STDOUT)
            tg.start_soon(_drain, sink, root.err_fd, STDERR)
            tg.start_soon(_watch_exit, root, on_exit, on_event)
    finally:
        try:
            sink.close()
        finally:
            drained.set()


async def _drain(sink: OutputSink, fd: int, stream: str) -> None:
    """Read until EOF, whatever the caller's thread is doing."""
    try:
        if not plat.ASYNC_PIPES:
            await _drain_threaded(sink, fd, stream)
            return
        os.set_blocking(fd, False)
        plat.enlarge_pipe(fd)
        run = 0  # bytes read since the loop last ran anything else
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                run = 0
                continue
            if not data:
                return
            sink.feed(stream, data)
            run += len(data)
            if run >= _FAIR_SHARE:  # in a flood, other pipes get their turn now and then
                run = 0
                await anyio.lowlevel.checkpoint()
    except OSError as exc:
        log.warning("reading %s failed: %s", stream, exc)
        sink.feed(STDERR, f"\n[ipyproctrack: reading {stream} failed: {exc}]\n".encode())
    finally:
        os.close(fd)


async def _drain_threaded(sink: OutputSink, fd: int, stream: str) -> None:
    limiter = anyio.CapacityLimiter(1)
    while data := await anyio.to_thread.run_sync(
        os.read, fd, _READ_SIZE, abandon_on_cancel=True, limiter=limiter
    ):
        sink.feed(stream, data)


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
