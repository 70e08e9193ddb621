"""The one deadline loop every readiness check waits through (after mirakuru)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio
import anyio.to_thread

from ...errors import ExitedBeforeReady, ReadyTimeout
from .checks import CallableReady, ProcessLike, ReadinessCheck, describe_checks

log = logging.getLogger(__name__)

__all__ = ["wait_until_ready"]

_FIRST_DELAY = 0.01
_MAX_DELAY = 0.4  # each wake costs ~1 ms of CPU on a VM: few, cheap attempts
# After the root command exits, keep polling this long before giving up: the drain may
# still be delivering the last output (a banner printed just before exit, or the last
# lines for the error message).
_EXIT_SETTLE = 0.25
# A root that exits with 0 while processes it started live on was a launcher (``pg_ctl
# start``, ``server &``): keep waiting, and look again at its tree this often.
_TREE_RECHECK = 1.0
_TAIL_LINES_IN_ERRORS = 10


async def _tree_lives_on(proc: ProcessLike) -> bool:
    """Whether any process of the tree other than the (exited) root is alive."""
    try:
        members = await anyio.to_thread.run_sync(proc.tree, abandon_on_cancel=True)
    except Exception as exc:  # the wait goes on as if the tree were gone; say why
        log.warning("%s: cannot list its tree: %s", proc.name, exc)
        return False
    return any(getattr(m, "pid", None) != proc.pid for m in members)


def _last_output(proc: ProcessLike) -> str:
    try:
        text = proc.tail(_TAIL_LINES_IN_ERRORS)
    except Exception:  # the error message must still be raised, without the output
        log.exception("%s: cannot read its last output", proc.name)
        text = ""
    return text.rstrip("\n") or "(no output)"


async def wait_until_ready(
    proc: ProcessLike, checks: Sequence[ReadinessCheck], *, timeout: float
) -> float:
    """Poll every check until all have passed; return the seconds this took.

    A check that passed once stays passed. Between rounds the loop sleeps, starting at
    10 ms and doubling up to 400 ms, so a long wait costs next to no CPU. Raises
    ``ExitedBeforeReady`` if the process exits first, ``ReadyTimeout`` when ``timeout``
    passes. Tears nothing down and does not close the checks.

    A root that exits with code 0 while other members of its tree live on (a launcher
    that daemonizes the server) is not "exited": the wait goes on while the tree lives.
    """
    start = time.monotonic()
    deadline = start + max(timeout, 0.0)
    pending = list(checks)
    delay = _FIRST_DELAY
    exited_at: float | None = None
    tree_checked_at = -_TREE_RECHECK
    tree_alive = False
    last_error: BaseException | None = None
    while True:
        rc = proc.returncode
        if rc is not None and exited_at is None:
            exited_at = time.monotonic()
        still: list[ReadinessCheck] = []
        for c in pending:
            remaining = deadline - time.monotonic()
            passed = False
            if remaining > 0:
                with anyio.move_on_after(remaining):
                    try:
                        passed = await c.check(proc)
                    except Exception as exc:  # "not ready yet"; chained to a timeout
                        log.debug("%s: %s raised %r", proc.name, c.describe(), exc)
                        last_error = exc
            if not passed:
                still.append(c)
        pending = still
        now = time.monotonic()
        if not pending:
            return now - start
        desc = describe_checks(pending)
        if rc == 0 and now - tree_checked_at >= _TREE_RECHECK:
            tree_alive = await _tree_lives_on(proc)
            tree_checked_at = now = time.monotonic()
        if (
            rc is not None
            and exited_at is not None
            and not (rc == 0 and tree_alive)
            and (now - exited_at >= _EXIT_SETTLE or now >= deadline)
        ):
            raise ExitedBeforeReady(
                f"{proc.name} exited with code {rc} before it was ready ({desc}). "
                f"Last output:\n{_last_output(proc)}"
            )
        if now >= deadline:
            if last_error is None:
                last_error = next(
                    (c.last_error for c in pending if isinstance(c, CallableReady)), None
                )
            raise ReadyTimeout(
                f"{proc.name} was not ready after {timeout:g} s ({desc}). "
                f"Last output:\n{_last_output(proc)}"
            ) from last_error
        await anyio.sleep(min(delay, deadline - now))
        delay = min(delay * 2, _MAX_DELAY)
