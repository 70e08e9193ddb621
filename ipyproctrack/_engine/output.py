"""Where a process's output goes: a rotating log file on disk (every byte, raw), a bounded
in-memory tail (for humans and widgets) and subscribers (fed in batches, never blocking)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .logfiles import RotatingLog

__all__ = ["DROPPED", "STDERR", "STDOUT", "Deliveries", "OutputChunk", "OutputSink",
           "RotatingLog"]

from .terminal import plain_runs

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


@dataclass(eq=False)
class _Subscriber:
    sink: OutputSink
    callback: Callable[[list[OutputChunk]], None]
    pending: deque[OutputChunk] = field(default_factory=deque)
    pending_bytes: int = 0
    dropped: int = 0
    active: bool = True
    done: bool = False


class Deliveries:
    """One thread delivers the batches of every subscriber of a Tracker's sinks. It runs
    while any subscription is open, so a slow subscriber delays the others' batches but
    never the drain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ready: dict[_Subscriber, None] = {}  # ordered: first come, first served
        self._open = 0
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        with self._lock:
            self._open += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="ipyproctrack-subscriber")
                self._thread.start()

    def notify(self, sub: _Subscriber) -> None:
        with self._lock:
            self._ready[sub] = None
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                ready = list(self._ready)
                self._ready.clear()
            for sub in ready:
                if sub.sink._deliver(sub):
                    with self._lock:
                        self._open -= 1
            with self._lock:
                if self._open <= 0 and not self._ready:
                    self._thread = None
                    return


class OutputSink:
    """Fed by the drain loop (one thread); read from any thread."""

    def __init__(
        self,
        log: RotatingLog,
        *,
        tail_bytes: int,
        tail_lines: int,
        deliveries: Deliveries | None = None,
    ) -> None:
        self.log = log
        self._deliveries = deliveries if deliveries is not None else Deliveries()
        self.tail_bytes = max(tail_bytes, 1024)
        self.tail_lines = max(tail_lines, 1)
        self.version = 0
        self.bytes_received = 0
        self.bytes_skipped = 0  # of which never read back (only with a keeper's pump)
        self._lock = threading.Lock()
        self._tail: deque[tuple[str, bytes]] = deque()
        self._tail_size = 0
        self._keep_tail = True  # False once release_tail() ran: the log alone gets output
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    # --- the drain side --------------------------------------------------------------------
    def feed(self, stream: str, data: bytes) -> None:
        # Called once per read, so kept lean: no trimming below the bound, no copy of the
        # subscriber list unless there are subscribers. Displays are woken by the drain
        # (throttled), not here.
        self.log.write(data)
        self.take(stream, data)

    @property
    def wants_every_byte(self) -> bool:
        """Whether a subscriber (a readiness check among them) must see every byte; else
        the tail needs only the last ``tail_bytes``."""
        return bool(self._subscribers)

    def skip(self, nbytes: int) -> None:
        """Count bytes that went to the log only (a keeper's pump flooded past the tail)."""
        with self._lock:
            self.bytes_received += nbytes
            self.bytes_skipped += nbytes
            self.version += 1

    def take(self, stream: str, data: bytes) -> None:
        """``feed`` without the log: for bytes a keeper's pump has already written."""
        size = len(data)
        with self._lock:
            if self._keep_tail:
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
        self._deliveries.notify(sub)

    def close(self) -> None:
        self.log.close()
        with self._lock:
            self._closed = True
            subs = list(self._subscribers)
        for sub in subs:
            self._deliveries.notify(sub)

    # --- the reading side -------------------------------------------------------------------
    def subscribe(self, callback: Callable[[list[OutputChunk]], None]) -> Callable[[], None]:
        """Batches go to ``callback`` on the Tracker's delivery thread: a slow one never
        blocks draining."""
        sub = _Subscriber(self, callback)
        self._deliveries.attach()
        with self._lock:
            self._subscribers.append(sub)
            closed = self._closed
        if closed:
            self._deliveries.notify(sub)  # nothing more will come: let it be done

        def unsubscribe() -> None:
            with self._lock:
                sub.active = False
                if sub in self._subscribers:
                    self._subscribers.remove(sub)
            self._deliveries.notify(sub)

        return unsubscribe

    def _deliver(self, sub: _Subscriber) -> bool:
        """Hand ``sub`` its pending batch (on the delivery thread); True when it ends now."""
        with self._lock:
            if sub.done:
                return False
            batch = list(sub.pending)
            sub.pending.clear()
            sub.pending_bytes = 0
            if sub.dropped:
                note = f"[ipyproctrack: {sub.dropped} bytes skipped, subscriber too slow]\n"
                batch.insert(0, OutputChunk(DROPPED, note.encode()))
                sub.dropped = 0
            sub.done = not sub.active or self._closed  # a last batch still goes out below
        if batch and sub.active:
            try:
                sub.callback(batch)
            except Exception:  # a broken subscriber harms no other, but is reported
                log.exception("output subscriber %r failed", sub.callback)
        return sub.done

    def release_tail(self) -> None:
        """Drop the in-memory tail for good (the log keeps every byte): for an ended
        process that was replaced, which nobody shows any more. Later output goes to the
        log only."""
        with self._lock:
            self._keep_tail = False
            self._tail.clear()
            self._tail_size = 0

    def tail_chunks(
        self, lines: int = 50, *, stream: str | None = None, raw: bool = False
    ) -> list[tuple[str, str]]:
        """The last ``lines`` lines as (stream, text) runs, oldest first, as a terminal
        shows them (``\\r`` applied, escape sequences removed); ``raw``: as written."""
        with self._lock:
            self._trim_lines()
            reads = [(s, d) for s, d in self._tail if stream is None or s == stream]
        # Merge neighbouring reads of one stream, so a character split across reads decodes.
        runs: list[tuple[str, bytearray]] = []
        for s, d in reads:
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
            out.append((s, text[cut:] if cut is not None else text))
            if cut is not None:
                break
        out.reverse()
        if not raw:
            out = plain_runs(out)
        return [(s, _shorten_lines(t)) for s, t in out if t]

    def tail(self, lines: int = 50, *, stream: str | None = None) -> str:
        return "".join(text for _, text in self.tail_chunks(lines, stream=stream))


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
