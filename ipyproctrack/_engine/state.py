"""The one process state machine (after supervisor's ``states.py``).

Every display (the API's ``repr``, the widget badge, the ``%proctrack`` table, the
status line) reads a :class:`ProcessState` and describes it with :meth:`describe`, so a
process killed by SIGTERM reads "killed by SIGTERM" everywhere.

Transitions (``TrackedProcess._transition`` makes them, by the ``TRANSITIONS`` table)::

    STARTING --checks pass--> READY
    STARTING --wait interrupted--> RUNNING          (the process runs on)
    RUNNING --wait_ready() again--> STARTING
    STARTING --checks fail--> FAILED               (the tree is torn down)
    RUNNING | READY | STARTING --our teardown begins--> STOPPED
    RUNNING | READY | STARTING --root exits--> EXITED (code >= 0) or KILLED (signal)
    EXITED | KILLED --the readiness wait then fails--> FAILED

A launch without readiness checks starts in RUNNING. A tree its keeper tore down past a
limit (``max_memory``, ``max_runtime``) is STOPPED with a ``reason``: it reads
"stopped: memory limit (301 MiB > 100 MiB)", and it is not ``ok``.

STOPPED and FAILED are final; EXITED and KILLED only take the readiness verdict on a root
that exited during the wait (a launcher's tree may still turn out not ready). The return
code is kept once the root has exited, whatever the phase.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

__all__ = ["TRANSITIONS", "Phase", "ProcessState"]


class Phase(enum.Enum):
    """Where a tracked launch is in its life."""

    STARTING = "starting"  # running; readiness checks pending
    RUNNING = "running"  # running; no checks, or the wait for them was interrupted
    READY = "ready"  # running; every readiness check passed
    FAILED = "failed"  # the checks failed (timeout, exit before ready); tree torn down
    STOPPED = "stopped"  # ended by our teardown (stop, cleanup, replace, kernel end)
    EXITED = "exited"  # the root exited by itself with a code >= 0
    KILLED = "killed"  # the root was killed by a signal that was not ours


_ALIVE = frozenset({Phase.STARTING, Phase.RUNNING, Phase.READY})
_ENDS = frozenset({Phase.STOPPED, Phase.EXITED, Phase.KILLED})

# phase -> the phases it may move to; anything else is ignored (see the module docstring).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.READY, Phase.RUNNING, Phase.FAILED}) | _ENDS,
    Phase.RUNNING: frozenset({Phase.STARTING}) | _ENDS,
    Phase.READY: _ENDS,
    Phase.EXITED: frozenset({Phase.FAILED}),
    Phase.KILLED: frozenset({Phase.FAILED}),
    Phase.FAILED: frozenset(),
    Phase.STOPPED: frozenset(),
}


def signal_name(returncode: int) -> str:
    """``-15`` -> ``"SIGTERM"``; unknown numbers read ``"signal 77"``."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


@dataclass(frozen=True, slots=True)
class ProcessState:
    """A snapshot of one tracked launch's state. ``str()`` is :meth:`describe`."""

    phase: Phase
    returncode: int | None = None
    ready_seconds: float | None = None
    reason: str | None = None  # why our teardown stopped it, when not on request (a limit)

    @property
    def alive(self) -> bool:
        """True until the root exits or our teardown of it begins."""
        return self.phase in _ALIVE

    @property
    def final(self) -> bool:
        return not self.alive

    @property
    def ok(self) -> bool:
        """Nothing went wrong: alive, stopped by us, or exited 0."""
        if self.reason is not None:
            return False
        return self.phase in _ALIVE or self.phase is Phase.STOPPED or (
            self.phase is Phase.EXITED and self.returncode == 0
        )

    def describe(self) -> str:
        """The one wording: ``starting…``, ``running``, ``running · ready in 0.42 s``,
        ``exited 3``, ``killed by SIGTERM``, ``stopped``, ``stopped: memory limit (301 MiB >
        100 MiB)``, ``failed``."""
        phase = self.phase
        if phase is Phase.STARTING:
            return "starting…"
        if phase is Phase.READY:
            if self.ready_seconds is None:
                return "running · ready"
            return f"running · ready in {self.ready_seconds:.2f} s"
        if phase is Phase.EXITED:
            return f"exited {self.returncode}"
        if phase is Phase.KILLED:
            assert self.returncode is not None
            return f"killed by {signal_name(self.returncode)}"
        if phase is Phase.STOPPED and self.reason:
            return f"stopped: {self.reason}"
        return str(phase.value)  # running, stopped, failed

    def __str__(self) -> str:
        return self.describe()
