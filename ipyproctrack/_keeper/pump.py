"""The keeper's pump (Linux): the command's stdout and stderr go into the log file the kernel
hands over, and the kernel hears where each stream's bytes went.

The kernel keeps every rule about log files (``_engine/logfiles.py``): it names, opens,
rotates and budgets them and hands this loop each new file's descriptor; it reads the bytes
back from the files, only as far as someone needs them. So a flood costs the kernel next to
nothing, and this loop is the plain loop: a blocking wait, ``os.read``, ``os.write``.
Without a file (the kernel could not open one, or writing failed) the bytes travel inside
the messages instead, and a slow kernel then slows the command, as a pipe would.

One message per SOCK_SEQPACKET packet. Keeper to kernel:

- ``P<s><end>``: every byte up to the stream offset ``end`` (ASCII) is in the files; the
  ones since the previous ``P`` are stream ``s`` (``o`` stdout, ``e`` stderr);
- ``D<s><bytes>``: bytes of stream ``s`` that are in no file;
- ``S<offset>,<id>``: the bytes from ``offset`` on go to file ``id``;
- ``W<errno>``: writing the file failed; the bytes come inside ``D`` from now on;
- ``X<s>``: stream ``s`` reached its end.

Kernel to keeper, each file with a number ``id`` and one descriptor (``SCM_RIGHTS``):
``F<id>,<room>``: write to this file from now on, at most ``room`` bytes; ``Q<id>,<room>``:
the next file, to take as soon as the current one's room is used up (the kernel renames it
into place when it hears of the switch), so rotation never waits for the kernel;
``R<more>``: that many more bytes into the current file; ``N``: no file, send the bytes
inside the messages; ``C`` with a descriptor: a deleted log file, to close here (the last
close frees its cached pages: that CPU is the keeper's, not the kernel's). The kernel
grants room a piece at a time, charged to the log budget before it is written, and a
file's last piece ends where ``RotatingLog`` would rotate it: the log rotates exactly
there, the budget is never passed, and the pump waits only when the kernel has fallen a
whole piece (or file) behind.
"""

from __future__ import annotations

import _socket  # the C module, as the zygote: socket.py would import enum and more
import array
import os
import select

READ_SIZE = 1 << 16
# Without a stream switch, the kernel hears of the bytes at least once per this many, and
# before the pump waits for more: a flood costs it one message per 2 MiB (and the kernel
# grants room 8 MiB at a time, the next piece when half is left, so the pump need not
# wait for its answer). A SOCK_SEQPACKET pair queues only net.unix.max_dgram_qlen (10)
# messages: fewer of them also keep the pump from waiting for a lagging kernel.
REPORT_EVERY = 2 << 20
# A pause in the output this long (ms) makes the pump tell the kernel at once: the delay
# a reader of the tail, a subscriber or a readiness check can see.
QUIET_MS = 5
STREAMS = (b"o", b"e")


def _recv_fd(sock: _socket.socket, *, block: bool) -> tuple[bytes, int]:
    """One message, and the descriptor it carries (-1 if none). The socket itself stays
    blocking, for our sends: a message not there yet raises BlockingIOError unless
    ``block``."""
    data, ancdata, _, _ = sock.recvmsg(64, _socket.CMSG_SPACE(array.array("i").itemsize * 4),
                                       0 if block else _socket.MSG_DONTWAIT)
    fd = -1
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for extra in fds[1:]:
                os.close(extra)
            if fds:
                fd = fds[0]
    return data, fd


class Pump:
    """Reads ``out_fd`` and ``err_fd`` to their end (``run``, on a thread of the keeper)."""

    def __init__(self, out_fd: int, err_fd: int, sock_fd: int) -> None:
        self.pipes = {out_fd: STREAMS[0], err_fd: STREAMS[1]}
        self.sock = _socket.socket(fileno=sock_fd)
        self.file = -1
        self.room = -1  # bytes the kernel lets us write to the file (-1: no limit)
        self.queued: tuple[int, int, bytes] | None = None  # the next file: fd, room, id
        self.total = 0  # bytes of both streams so far
        self.reported = 0  # of which the kernel has heard
        self.stream = b""  # the stream of the bytes since ``reported``
        self.kernel_gone = False

    # --- messages ---------------------------------------------------------------------------
    def _send(self, message: bytes) -> None:
        if self.kernel_gone:
            return
        try:
            self.sock.send(message)
        except OSError:  # the kernel is gone: the log still gets every byte
            self.kernel_gone = True

    def _report(self) -> None:
        if self.total > self.reported:
            self._send(b"P" + self.stream + str(self.total).encode())
            self.reported = self.total

    def _take(self, *, block: bool) -> bool:
        """Take the kernel's messages (more room, a new file, or none); the first one
        waited for when ``block``. False once the kernel is gone."""
        try:
            while True:
                try:
                    data, fd = _recv_fd(self.sock, block=block)
                except BlockingIOError:
                    return True
                block = False
                if not data:
                    self.kernel_gone = True
                    if fd >= 0:
                        os.close(fd)
                    return False
                kind, rest = data[:1], data[1:]
                if kind == b"C":  # a deleted file: our close frees its pages, not the kernel's
                    if fd >= 0:
                        os.close(fd)
                    continue
                if kind == b"R":
                    if fd >= 0:
                        os.close(fd)
                    if self.queued is not None:  # after a Q, room is for the queued file:
                        q_fd, q_room, q_id = self.queued  # the current one's last piece
                        self.queued = (q_fd, q_room + int(rest), q_id)  # came before it
                    elif self.room >= 0:
                        self.room += int(rest)
                    continue
                file_id, _, room = rest.partition(b",")
                if kind == b"Q":
                    self._drop_queued()
                    if fd >= 0:
                        self.queued = (fd, int(room), file_id)
                    continue
                self._drop_queued()  # F or N: a queued file is not wanted any more
                self._switch(fd if kind == b"F" else -1, int(room or 0), file_id)
        except OSError:
            self.kernel_gone = True
            return False

    def _switch(self, fd: int, room: int, file_id: bytes) -> None:
        """Write to ``fd`` from now on (-1: into the messages)."""
        self._report()  # the bytes before the switch are in the old file
        if self.file >= 0:
            os.close(self.file)
        self.file = fd
        if fd >= 0:
            self.room = room
            self._send(b"S" + str(self.total).encode() + b"," + file_id)

    def _drop_queued(self) -> None:
        if self.queued is not None:
            os.close(self.queued[0])
            self.queued = None

    # --- the loop ---------------------------------------------------------------------------
    def _write(self, stream: bytes, data: bytes) -> None:
        if stream != self.stream:
            self._report()
            self.stream = stream
        while self.file >= 0 and 0 <= self.room < len(data):  # fills this file: next one
            part, data = data[: self.room], data[self.room :]
            self._write_file(part)
            if self.file < 0:
                break
            if self.queued is None:  # wait for more room or the next file
                self._report()
                full = self.file
                while (self.file == full and self.room == 0 and self.queued is None
                       and self._take(block=True)):
                    pass
                if self.kernel_gone:  # nobody grants room or rotates from here on
                    self._drop_queued()
                    self.room = -1
            if self.file >= 0 and self.room == 0 and self.queued is not None:
                fd, room, file_id = self.queued
                self.queued = None
                self._switch(fd, room, file_id)
        self._write_file(data)

    def _write_file(self, data: bytes) -> None:
        if self.file >= 0:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.file, view) :]
            except OSError as exc:
                written = len(data) - len(view)
                self.total += written
                self._report()
                self._send(b"W" + str(exc.errno or 5).encode())  # EIO when unknown
                os.close(self.file)
                self.file = -1
                data = bytes(view)
            else:
                self.total += len(data)
                if self.room > 0:
                    self.room -= len(data)
                if self.total - self.reported >= REPORT_EVERY:
                    self._report()
                return
        self._report()
        for start in range(0, len(data), READ_SIZE):
            self._send(b"D" + self.stream + data[start : start + READ_SIZE])
        self.total += len(data)
        self.reported = self.total

    def run(self) -> None:
        """Pump until both pipes reach their end; then tell the kernel and close everything."""
        self._take(block=True)  # the first file (or none): nothing is read before it
        poller = select.poll()
        for fd in self.pipes:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        sock_fd = self.sock.fileno()
        poller.register(sock_fd, select.POLLIN)
        try:
            while self.pipes:
                # The kernel hears of everything before we wait for good, once nothing
                # came for QUIET_MS (a flood's writer is often just behind): one poll()
                # per read, as the plain loop's one blocking read.
                events = poller.poll(QUIET_MS if self.total > self.reported else None)
                if not events:
                    self._report()
                    continue
                for fd, _ in events:
                    if fd == sock_fd:
                        if not self._take(block=False):
                            poller.unregister(sock_fd)
                        continue
                    stream = self.pipes.get(fd)
                    if stream is None:
                        continue
                    try:
                        data = os.read(fd, READ_SIZE)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        self._write(stream, data)
                        continue
                    poller.unregister(fd)
                    del self.pipes[fd]
                    os.close(fd)
                    self._report()
                    self._send(b"X" + stream)
        finally:
            for fd in self.pipes:
                os.close(fd)
            if self.file >= 0:
                os.close(self.file)
            self._drop_queued()
            self.sock.close()
