"""Where a process's output goes: a rotating log file on disk (every byte, raw), a bounded
in-memory tail (for humans and widgets) and subscribers (fed in batches, never blocking)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STDOUT = "stdout"
STDERR = "stderr"
DROPPED = "dropped"
# Lines longer than this are shortened in tails (the log keeps them whole).
MAX_LINE_CHARS = 16_384
# A subscriber that falls this far behind loses its oldest pending output (the log does not).
SUBSCRIBER_BACKLOG = 4 << 20


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """A piece of output as it was read. ``stream`` is "stdout", "stderr" or "dropped"
    (a notice that a slow subscriber missed some bytes)."""

    stream: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class RotatingLog:
    """Raw bytes to ``path``; past ``max_bytes`` it becomes path.1, path.1 becomes path.2...
    like supervisor's logs. ``max_bytes=0``: never rotate. ``backups=-1``: keep them all."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.error: str | None = None
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size if self._fd >= 0 else 0

    def _open(self) -> int:
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            self.error = f"cannot write log {self.path}: {exc.strerror}"
            return -1

    def write(self, data: bytes) -> None:
        # A full disk must never stall the server: record the error and keep draining.
        if self._fd < 0:
            return
        try:
            if self.max_bytes <= 0 or self._size + len(data) <= self.max_bytes:
                written = os.write(self._fd, data)  # the hot path: one call per read
                self._size += written
                if written == len(data):
                    return
                data = data[written:]
            while data:
                room = self.max_bytes - self._size if self.max_bytes > 0 else len(data)
                if room <= 0:
                    self._rotate()
                    continue
                part = data[:room] if room < len(data) else data
                written = os.write(self._fd, part)
                self._size += written
                data = data[written:]
        except OSError as exc:
            self.error = f"cannot write log {self.path}: {exc.strerror}"

    def _rotate(self) -> None:
        fd, self._fd = self._fd, -1  # never keep a closed number: it may be reused by now
        os.close(fd)
        # Delete first, then rename onto free names only. A rename (or a truncation) that
        # replaces a file makes ext4 write the renamed file's data out at once (auto_da_alloc):
        # that stalled the drain for tens of ms per rotation, to write out a backup that is
        # deleted a few rotations later anyway.
        if self.backups == 0:
            _discard(self.path)
        else:
            last = self.backups
            if last < 0:  # unlimited: shift every existing backup up by one
                last = 1
                while self._backup(last).exists():
                    last += 1
            else:
                _discard(self._backup(last))
            for n in range(last - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self._backup(n), self._backup(n + 1))
            os.replace(self.path, self._backup(1))
        self._fd = self._open()
        self._size = 0

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def files(self) -> list[Path]:
        """Oldest first: concatenated, they are the output (as far as backups reach)."""
        found = []
        n = 1
        while self._backup(n).exists():
            found.append(self._backup(n))
            n += 1
        return [*reversed(found), self.path]

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(eq=False)
class _Subscriber:
    callback: Callable[[list[OutputChunk]], None]
    pending: deque[OutputChunk] = field(default_factory=deque)
    pending_bytes: int = 0
    dropped: int = 0
    active: bool = True
    wake: threading.Event = field(default_factory=threading.Event)


class OutputSink:
    """Fed by the drain loop (one thread); read from any thread."""

    def __init__(
        self,
        log: RotatingLog,
        *,
        tail_bytes: int,
        tail_lines: int,
    ) -> None:
        self.log = log
        self.tail_bytes = max(tail_bytes, 1024)
        self.tail_lines = max(tail_lines, 1)
        self.version = 0
        self.bytes_received = 0
        self._lock = threading.Lock()
        self._tail: deque[tuple[str, bytes]] = deque()
        self._tail_size = 0
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    # --- the drain side --------------------------------------------------------------------
    def feed(self, stream: str, data: bytes) -> None:
        # Called once per read, so kept lean: no trimming below the bound, no copy of the
        # subscriber list unless there are subscribers. Displays are woken by the drain
        # (throttled), not here.
        self.log.write(data)
        size = len(data)
        with self._lock:
            self._tail.append((stream, data))
            self._tail_size += size
            if self._tail_size >= self.tail_bytes:
                self._trim_bytes()
            self.bytes_received += size
            self.version += 1
            subs = list(self._subscribers) if self._subscribers else None
        if subs:
            chunk = OutputChunk(stream, data)
            for sub in subs:
                self._offer(sub, chunk)

    def _trim_bytes(self) -> None:
        # Whole reads only: cheap enough for the hot path (no line counting here).
        tail = self._tail
        while len(tail) > 1 and self._tail_size - len(tail[0][1]) >= self.tail_bytes:
            self._tail_size -= len(tail.popleft()[1])
        if len(tail) == 1 and self._tail_size > 2 * self.tail_bytes:
            stream, only = tail[0]  # one huge read, such as a 10 MB line
            tail[0] = (stream, only[-self.tail_bytes :])
            self._tail_size = self.tail_bytes

    def _trim_lines(self) -> None:
        """Keep at most tail_lines lines. Run on the reading side (a few times a second),
        so a flood pays for bytes only; memory is bounded by tail_bytes at all times."""
        tail = self._tail
        seen = 0
        for i in range(len(tail) - 1, -1, -1):
            stream, data = tail[i]
            seen += data.count(b"\n")
            if seen > self.tail_lines:
                cut = -1
                for _ in range(seen - self.tail_lines):
                    cut = data.index(b"\n", cut + 1)
                tail[i] = (stream, data[cut + 1 :])
                for _ in range(i):
                    tail.popleft()
                self._tail_size = sum(len(d) for _, d in tail)
                return

    def _offer(self, sub: _Subscriber, chunk: OutputChunk) -> None:
        with self._lock:
            sub.pending.append(chunk)
            sub.pending_bytes += len(chunk.data)
            while sub.pending_bytes > SUBSCRIBER_BACKLOG and len(sub.pending) > 1:
                old = sub.pending.popleft()
                sub.pending_bytes -= len(old.data)
                sub.dropped += len(old.data)
        sub.wake.set()

    def close(self) -> None:
        self.log.close()
        with self._lock:
            self._closed = True
            subs = list(self._subscribers)
        for sub in subs:
            sub.wake.set()

    # --- the reading side -------------------------------------------------------------------
    def subscribe(self, callback: Callable[[list[OutputChunk]], None]) -> Callable[[], None]:
        """Batches go to ``callback`` on a thread of its own: a slow one never blocks draining."""
        sub = _Subscriber(callback)
        with self._lock:
            self._subscribers.append(sub)
        threading.Thread(target=self._deliver, args=(sub,), daemon=True,
                         name="ipyproctrack-subscriber").start()
        if self._closed:
            sub.wake.set()  # nothing more will come: let the thread end

        def unsubscribe() -> None:
            with self._lock:
                sub.active = False
                if sub in self._subscribers:
                    self._subscribers.remove(sub)
            sub.wake.set()

        return unsubscribe

    def _deliver(self, sub: _Subscriber) -> None:
        while True:
            sub.wake.wait()
            with self._lock:
                sub.wake.clear()
                batch = list(sub.pending)
                sub.pending.clear()
                sub.pending_bytes = 0
                if sub.dropped:
                    note = f"[ipyproctrack: {sub.dropped} bytes skipped, subscriber too slow]\n"
                    batch.insert(0, OutputChunk(DROPPED, note.encode()))
                    sub.dropped = 0
                done = not sub.active or self._closed  # a last batch still goes out below
            if batch and sub.active:
                try:
                    sub.callback(batch)
                except Exception:  # a broken subscriber harms no other, but is reported
                    log.exception("output subscriber %r failed", sub.callback)
            if done:
                return

    def tail_chunks(self, lines: int = 50, *, stream: str | None = None) -> list[tuple[str, str]]:
        """The last ``lines`` lines as (stream, text) runs, oldest first."""
        with self._lock:
            self._trim_lines()
            raw = [(s, d) for s, d in self._tail if stream is None or s == stream]
        # Merge neighbouring reads of one stream, so a character split across reads decodes.
        runs: list[tuple[str, bytearray]] = []
        for s, d in raw:
            if runs and runs[-1][0] == s:
                runs[-1][1].extend(d)
            else:
                runs.append((s, bytearray(d)))
        if lines <= 0 or not runs:
            return []
        out: list[tuple[str, str]] = []
        seen = 0
        trailing = runs[-1][1].endswith(b"\n")  # the final newline ends a line, starts none
        for s, data in reversed(runs):
            text = data.decode("utf-8", "replace")
            pos = len(text) - 1 if trailing else len(text)
            trailing = False
            cut = None
            while (pos := text.rfind("\n", 0, pos)) >= 0:
                seen += 1
                if seen == lines:
                    cut = pos + 1
                    break
            out.append((s, _shorten_lines(text[cut:] if cut is not None else text)))
            if cut is not None:
                break
        out.reverse()
        return [(s, t) for s, t in out if t]

    def tail(self, lines: int = 50, *, stream: str | None = None) -> str:
        return "".join(text for _, text in self.tail_chunks(lines, stream=stream))


def _discard(path: Path) -> None:
    """Delete a log file. Freeing its cached pages (a few ms per 50 MiB, more on a busy
    machine) happens when its last descriptor closes: here on a short-lived thread, so the
    drain does not stall while the writer's pipe fills."""
    try:
        fd = os.open(path, os.O_RDONLY)  # not inherited (PEP 446)
    except FileNotFoundError:
        return
    try:
        os.unlink(path)
    except OSError:  # Windows cannot delete an open file: close it, then delete it here
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    threading.Thread(target=_close_discarded, args=(fd, path), daemon=True,
                     name="ipyproctrack-log-discard").start()


def _close_discarded(fd: int, path: Path) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        log.warning("closing the deleted log %s failed: %s", path, exc)


def _shorten_lines(text: str) -> str:
    if len(text) <= MAX_LINE_CHARS:
        return text
    out = []
    for line in text.split("\n"):
        if len(line) > MAX_LINE_CHARS:
            cut = len(line) - MAX_LINE_CHARS
            line = f"[... {cut} characters cut ...]" + line[-MAX_LINE_CHARS:]
        out.append(line)
    return "\n".join(out)
