"""The one thread per session that runs the widgets' button clicks (Stop, Restart).

A click must never block the kernel's thread (a stop waits up to grace + 1 s, a restart
waits for readiness), and a thread per click would pile up threads in a long session:
so clicks queue to one worker, in the order they were made.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["ClickWorker"]

log = logging.getLogger(__name__)


class ClickWorker:
    """Runs submitted jobs one after another on one daemon thread, started on first use."""

    def __init__(self, name: str = "ipyproctrack-clicks") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[], object], str] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()  # guards _thread and _closed
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(self, job: Callable[[], object], what: str) -> bool:
        """Queue ``job`` (``what`` names it in the log if it fails); False once closed."""
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put((job, what))
        return True

    def close(self) -> None:
        """Take no more jobs; the thread ends after the queued ones."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job, what = item
            try:
                job()
            except Exception:  # one failed click must not end the worker; it is reported
                log.exception("%s failed", what)
