"""The kernel's end of a keeper's pump (``_keeper/pump.py``, Linux): the keeper writes the
output into the log files this end hands it, and says how far each stream's bytes go; this
end keeps the log's rules (``RotatingLog.account``) and reads the bytes back from the files
into the sink, for the tail, the subscribers and the readiness checks. Runs on the drain
thread (``drain.py``), one call per wake-up of the socket."""

from __future__ import annotations

import logging
import os
import socket
import time
from array import array

from .output import STDERR, STDOUT, OutputSink

log = logging.getLogger(__name__)

_STREAMS = {b"o": STDOUT, b"e": STDERR}
# Bytes read back from a file per call: large reads from the page cache, a few per flood MiB.
_READ_BACK = 1 << 20
_MESSAGE = (1 << 16) + 64  # the largest message: D, a stream, 64 KiB
# Without subscribers, what the pump wrote is read back at most this often (the widgets
# refresh at 5 Hz at most), and only the tail's worth of it.
READ_BACK_EVERY = 0.05
# Room is granted to the pump in pieces of this size, each charged to the log budget
# before the pump may write it; the next piece goes out when half of one is left.
GRANT = 4 << 20
SEND_TIMEOUT = 5.0


class PumpFeed:
    """Follows one keeper's pump: ``on_readable`` whenever its socket is, until it returns
    True (both streams ended, or the keeper is gone)."""

    def __init__(self, sock: socket.socket, sink: OutputSink) -> None:
        self.sock = sock
        self.sink = sink
        self.log = sink.log
        self.log.handed = True
        self._segments: list[tuple[int, int]] = []  # (first stream offset, read fd) per file
        self._handed: list[int] = []  # read fds of the files handed over, until their "S"
        self._pos = 0  # stream offset read back (or skipped) so far
        self._end = 0  # stream offset the pump has reported
        self._pending: list[tuple[str, int, int]] = []  # (stream, start, end) not read back
        self._read_at = 0.0  # monotonic time of the last read-back
        self._ended = 0
        self._granted = 0  # room granted to the pump (and reserved) that it has not used
        self._retiring = 0  # the same, for files rotated away before the pump took the next
        self._hand_over()
        sock.setblocking(False)

    @property
    def fileno(self) -> int:
        return self.sock.fileno()

    def _hand_over(self) -> None:
        """Give the pump the log's current file and its first piece of room, or tell it
        there is none."""
        # The pump may still write what it was granted into the last file until it takes
        # this one (its "S"): that stays reserved until then.
        self._retiring += self._granted
        self._granted = 0
        room = self.log.room()
        fd = self.log.fd
        if fd >= 0:
            try:  # our own read descriptor of the same file, opened through our write one
                rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.warning("cannot read back %s: %s", self.log.path, exc)
                rfd = -1
            if rfd >= 0:
                self._handed.append(rfd)
                grant = min(GRANT, room) if room else GRANT
                self.log.reserve(grant)
                self._granted = grant
                self._send(b"F" + str(grant).encode(), fd)
                return
        self._send(b"N", -1)

    def _top_up(self) -> None:
        """Grant the pump its next piece of room before it runs out (so it rarely waits),
        never past the point where the file rotates."""
        if self._granted >= GRANT // 2 or self.log.fd < 0:
            return
        room = self.log.room()
        more = GRANT if not room else min(GRANT, room - self._granted)
        if more > 0:
            self.log.reserve(more)
            self._granted += more
            self._send(b"R" + str(more).encode(), -1)

    def _send(self, message: bytes, fd: int) -> None:
        try:  # blocking (the pump empties its end at once), but never for long
            self.sock.settimeout(SEND_TIMEOUT)
            if fd >= 0:
                self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array("i", [fd]))])
            else:
                self.sock.send(message)
        except OSError as exc:  # the keeper is gone: on_readable sees the end
            log.debug("telling the pump of %s: %s", self.log.path, exc)
        finally:
            self.sock.setblocking(False)

    def on_readable(self) -> tuple[bool, bool]:
        """Take every message waiting: (whether output came, whether the pump ended)."""
        got = False
        while True:
            try:
                message = self.sock.recv(_MESSAGE)
            except BlockingIOError:
                return got, False
            except OSError as exc:
                log.warning("the pump of %s failed: %s", self.log.path, exc)
                return got, True
            if not message:  # the keeper is gone
                return got, True
            kind, rest = message[:1], message[1:]
            if kind == b"P":
                got = self._written(_STREAMS.get(rest[:1], STDOUT), int(rest[1:])) or got
            elif kind == b"D":
                self.read_back(force=True)
                self.sink.take(_STREAMS.get(rest[:1], STDOUT), rest[1:])
                self._pos += len(rest) - 1
                self._end = self._pos
                got = True
            elif kind == b"S":  # the pump took the oldest file we handed over
                if self._handed:
                    self._segments.append((int(rest), self._handed.pop(0)))
                if not self._handed:  # what the old files were granted and did not take
                    self.log.unreserve(self._retiring)
                    self._retiring = 0
            elif kind == b"W":
                self.log.pump_failed(int(rest))
            elif kind == b"X":
                self._ended += 1
                if self._ended == 2:
                    self.read_back(force=True)
                    return True, True

    def _written(self, stream: str, end: int) -> bool:
        """The pump wrote the bytes up to ``end``, of ``stream``: account them to the log
        at once (it may rotate), read them back when ``read_back`` says."""
        start = self._end
        if end <= start:
            return False
        self._end = end
        if self._pending and self._pending[-1][0] == stream:
            self._pending[-1] = (stream, self._pending[-1][1], end)
        else:
            self._pending.append((stream, start, end))
        if self._handed:  # bytes of a file already rotated away: its grant, not its size
            self._retiring = max(0, self._retiring - (end - start))
            return True
        self._granted = max(0, self._granted - (end - start))
        if self.log.account(end - start):
            self._hand_over()
        else:
            self._top_up()
        return True

    def due(self) -> float | None:
        """Seconds until ``read_back`` should run, None when nothing waits."""
        if not self._pending:
            return None
        return max(0.0, self._read_at + READ_BACK_EVERY - time.monotonic())

    def read_back(self, *, force: bool = False) -> bool:
        """Feed the sink what the pump wrote: every byte while a subscriber needs them,
        else (at most every READ_BACK_EVERY, the display's pace) the last ``tail_bytes``
        only: a flood is written by the keeper and read here by the tail's worth. Whether
        the sink got anything."""
        if not self._pending:
            return False
        every = self.sink.wants_every_byte
        now = time.monotonic()
        if not (every or force or now >= self._read_at + READ_BACK_EVERY):
            return False
        self._read_at = now
        pending, self._pending = self._pending, []
        keep_from = 0 if every else max(0, pending[-1][2] - self.sink.tail_bytes)
        for stream, start, end in pending:
            if end <= keep_from:
                self.sink.skip(end - max(start, self._pos))
                self._pos = end
                continue
            if start < keep_from:
                self.sink.skip(keep_from - self._pos)
                self._pos = keep_from
            self._read_range(stream, end)
        self._forget_read()
        return True

    def _read_range(self, stream: str, end: int) -> None:
        """Feed the sink the bytes from ``_pos`` up to ``end`` from the files."""
        while self._pos < end:
            index = self._segment(self._pos)
            if index < 0:  # not in any file we can read: lost to the tail, not to the log
                break
            first, rfd = self._segments[index]
            stop = self._segments[index + 1][0] if index + 1 < len(self._segments) else end
            want = min(end, stop, self._pos + _READ_BACK) - self._pos
            try:
                data = os.pread(rfd, want, self._pos - first)
            except OSError as exc:
                log.warning("reading back %s: %s", self.log.path, exc)
                break
            if not data:  # the file was emptied or cut (a rotation by the budget)
                break
            self.sink.take(stream, data)
            self._pos += len(data)
        if self._pos < end:
            self.sink.skip(end - self._pos)
            self._pos = end

    def _segment(self, pos: int) -> int:
        for i in range(len(self._segments) - 1, -1, -1):
            if self._segments[i][0] <= pos:
                return i
        return -1

    def _forget_read(self) -> None:
        """Close the files every byte of which has been read."""
        while len(self._segments) > 1 and self._segments[1][0] <= self._pos:
            self._close_fd(self._segments.pop(0)[1])

    @staticmethod
    def _close_fd(fd: int) -> None:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("closing a read-back descriptor: %s", exc)

    def close(self) -> None:
        """Give back the unused room; close the socket and every read-back descriptor."""
        self.log.unreserve(self._granted + self._retiring)
        self._granted = self._retiring = 0
        for _, rfd in self._segments:
            self._close_fd(rfd)
        self._segments = []
        for rfd in self._handed:
            self._close_fd(rfd)
        self._handed = []
        self.sock.close()
