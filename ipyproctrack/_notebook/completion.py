"""``%%tracked --wait-exit``: block the cell until the process exits, then show how."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from ipyproctrack.errors import ExitTimeout

if TYPE_CHECKING:
    from ipyproctrack._engine.process import TrackedProcess

__all__ = ["LAST_LINES", "run_to_completion"]

#: Output lines shown after the exit (or the timeout).
LAST_LINES = 10
#: How long to let the drain take in the last bytes after the exit.
_DRAIN_WAIT = 2.0


def _last_lines(proc: TrackedProcess) -> str:
    tail = proc.tail(LAST_LINES).rstrip("\n")
    return f"--- last lines of {proc.name} ---\n{tail}" if tail else f"({proc.name}: no output)"


def run_to_completion(proc: TrackedProcess, *, timeout: float | None) -> int:
    """Wait for ``proc`` to exit; print its return code and last lines. On timeout its
    tree is torn down and a UsageError says so. An interrupt ends only the wait (the magic
    says so, in one line)."""
    started = time.monotonic()
    limit = "" if timeout is None else f" (at most {timeout:g} s)"
    try:  # an interrupt may land while the announcement is still being flushed
        print(f"{proc.name}: pid {proc.pid} running; waiting for it to exit{limit}…",
              flush=True)
        code = proc.wait_exit(timeout)
    except ExitTimeout as exc:
        proc.wait_output_done(_DRAIN_WAIT)
        raise UsageError(f"{exc}\n{_last_lines(proc)}") from None
    proc.wait_output_done(_DRAIN_WAIT)
    took = time.monotonic() - started
    print(f"{proc.name}: {proc.state.describe()} (return code {code}) after waiting "
          f"{took:.1f} s\n{_last_lines(proc)}", flush=True)
    return code
