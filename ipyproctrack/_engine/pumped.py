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
READ_BACK_EVERY = 0.1
# Room is granted to the pump in pieces of this size, each charged to the log budget
# before the pump may write it; the next piece goes out when half of one is left. With
# 4 MiB pieces a 1 GiB flood waited 13-32 times for one (the drain thread wakes late when
# the flood keeps both cores busy), with 16 MiB 6-12 times; each piece is reserved before
# it is written, so a flooding log holds two of them at most (its file's and the next's).
GRANT = 8 << 20
SEND_TIMEOUT = 5.0


class PumpFeed:
    """Follows one keeper's pump: ``on_readable`` whenever its socket is, until it returns
    True (both streams ended, or the keeper is gone)."""

    def __init__(self, sock: socket.socket, sink: OutputSink) -> None:
        self.sock = sock
        self.sink = sink
        self.log = sink.log
        self.log.handed = True
        self.log.discard_to = self._discard
        self._segments: list[tuple[int, int]] = []  # (first stream offset, read fd) per file
        self._handed: dict[int, int] = {}  # file id -> read fd, handed over until its "S"
        self._last_id = 0
        self._switching: int | None = None  # the id of an "F" whose "S" has not come yet
        self._queued: int | None = None  # the id of the "Q" (next file) not in place yet
        self._next_grant = 0  # the room granted (and reserved) with it
        self._gone = False  # a message could not be sent: the keeper is gone
        self._pos = 0  # stream offset read back (or skipped) so far
        self._end = 0  # stream offset the pump has reported
        self._pending: list[tuple[str, int, int]] = []  # (stream, start, end) not read back
        self._read_at = 0.0  # monotonic time of the last read-back
        self._ended = 0
        self._granted = 0  # room granted to the pump (and reserved) that it has not used
        self._retiring = 0  # the same, for files rotated away before the pump took the next
        self._hand_over()
        self._note()
        sock.setblocking(False)

    @property
    def fileno(self) -> int:
        return self.sock.fileno()

    def _hand_over(self) -> None:
        """Give the pump the log's current file and its first piece of room, or tell it
        there is none."""
        # The pump may still write what it was granted into the last file (or the queued
        # one) until it takes this one (its "S"): that stays reserved until then.
        self._drop_queued()
        self._retiring += self._granted
        self._granted = 0
        room = self.log.room()
        grant = min(GRANT, room) if room else GRANT
        file_id = self._hand(b"F", self.log.fd, grant)
        if file_id is None:
            self._send(b"N", -1)
            return
        self._granted = grant
        self._switching = file_id
        self._top_up()

    def _hand(self, kind: bytes, fd: int, grant: int) -> int | None:
        """Send the pump file ``fd`` with ``grant`` bytes of room (reserved first); its id,
        None when there is no file to hand."""
        if fd < 0:
            return None
        try:  # our own read descriptor of the same file, opened through our write one
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot read back %s: %s", self.log.path, exc)
            return None
        self._last_id += 1
        self._handed[self._last_id] = rfd
        self.log.reserve(grant)
        self._send(kind + b"%d,%d" % (self._last_id, grant), fd)
        return self._last_id

    def _discard(self, fd: int) -> bool:
        """Let the keeper close a deleted log file's descriptor after ours ("C"): the
        last close frees the file's cached pages, a few ms per file of CPU that a flood
        would otherwise cost the kernel at every rotation."""
        if self._gone:
            return False
        return self._send(b"C", fd)

    def _drop_queued(self) -> None:
        """The queued file will not be put in place: what it was granted retires (the
        pump may have taken it already), and the log deletes it."""
        if self._queued is not None:
            self._queued = None
            self._retiring += self._next_grant
            self._next_grant = 0
            self.log.drop_next()

    def _top_up(self) -> None:
        """Grant the pump its next piece of room before it runs out (so it rarely waits),
        never past the point where the file rotates; once the file's last piece is
        granted, queue the next file, so the pump never waits at a rotation."""
        if self.log.fd < 0:
            return
        room = self.log.room()
        if self._granted < GRANT // 2:
            more = GRANT if not room else min(GRANT, room - self._granted)
            if more > 0:
                self.log.reserve(more)
                self._granted += more
                self._send(b"R" + str(more).encode(), -1)
        # One queued file at a time, and only once the pump has taken every file handed
        # before: a Q it received while another waited would replace that one.
        if room and room <= self._granted and self._queued is None and not self._handed:
            grant = min(GRANT, self.log.limit)
            self._queued = self._hand(b"Q", self.log.prepare_next(), grant)
            if self._queued is not None:
                self._next_grant = grant

    def _send(self, message: bytes, fd: int) -> bool:
        """Whether the pump got ``message`` (and ``fd``)."""
        # One system call when there is room, as almost always: every call lets the other
        # threads of the kernel take the GIL, and on two busy cores it may not come back
        # for a while.
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]))] if fd >= 0 \
            else []
        try:
            try:
                self.sock.sendmsg([message], ancillary)
            except BlockingIOError:  # the pump is behind on our messages: wait, not forever
                self.sock.settimeout(SEND_TIMEOUT)
                try:
                    self.sock.sendmsg([message], ancillary)
                finally:
                    self.sock.setblocking(False)
        except OSError as exc:  # the keeper is gone: on_readable sees the end
            log.debug("telling the pump of %s: %s", self.log.path, exc)
            self._gone = True
            return False
        return True

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
                self._note()
            elif kind == b"D":
                self.read_back(force=True)
                self.sink.take(_STREAMS.get(rest[:1], STDOUT), rest[1:])
                self._pos += len(rest) - 1
                self._end = self._pos
                got = True
            elif kind == b"S":  # the pump took a file we handed over
                self._switched(rest)
                self._note()
            elif kind == b"W":
                self.log.pump_failed(int(rest))
            elif kind == b"X":
                self._ended += 1
                if self._ended == 2:
                    self.read_back(force=True)
                    return True, True

    def _note(self) -> None:
        """Let the log's budget know the room granted and not written yet."""
        self.log.granted = self._granted + self._next_grant + self._retiring

    def _switched(self, rest: bytes) -> None:
        """The pump writes file ``id`` from stream offset ``offset`` on ("S<offset>,<id>");
        files handed before it that it never took are forgotten."""
        offset, _, raw_id = rest.partition(b",")
        file_id = int(raw_id)
        for older in [i for i in self._handed if i < file_id]:
            self._close_fd(self._handed.pop(older))
        rfd = self._handed.pop(file_id, -1)
        if rfd >= 0:
            self._segments.append((int(offset), rfd))
        if self._switching is not None and file_id >= self._switching:
            # what the old files were granted and did not take
            self._switching = None
            self.log.unreserve(self._retiring)
            self._retiring = 0
        self._top_up()  # the next file can be queued now

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
        if self._switching is not None:  # bytes of a file rotated away: its grant, not its size
            self._retiring = max(0, self._retiring - (end - start))
            return True
        self._granted = max(0, self._granted - (end - start))
        change = self.log.account(end - start)
        if change == "same":
            self._top_up()
        elif change == "adopted" and self._queued is not None:  # the pump's file is in place
            self._queued = None
            self._granted, self._next_grant = self._next_grant, 0
            self._top_up()
        else:
            self._hand_over()
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
        self._gone = True
        self.log.discard_to = None
        self.log.unreserve(self._granted + self._retiring + self._next_grant)
        self._granted = self._retiring = self._next_grant = 0
        self._queued = None
        self._note()
        for _, rfd in self._segments:
            self._close_fd(rfd)
        self._segments = []
        for rfd in self._handed.values():
            self._close_fd(rfd)
        self._handed = {}
        self.sock.close()
