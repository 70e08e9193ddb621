"""The exceptions ipyproctrack raises on purpose (each one is raised somewhere)."""

from __future__ import annotations

__all__ = (
    "ExitTimeout",
    "ExitedBeforeReady",
    "LaunchError",
    "NameInUseError",
    "NotReadyError",
    "PortInUseError",
    "ProcTrackError",
    "ReadyTimeout",
    "TrackerClosedError",
    "UnknownProcessError",
)


class ProcTrackError(Exception):
    """Base class of every error ipyproctrack raises on purpose."""


class LaunchError(ProcTrackError):
    """A command could not be started: nothing was left running."""


class NameInUseError(LaunchError):
    """A tracked process with this name is still running."""


class PortInUseError(LaunchError):
    """The port a readiness check waits on is already taken by someone else."""


class UnknownProcessError(ProcTrackError, KeyError):
    """No tracked process has this name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown process"


class TrackerClosedError(ProcTrackError):
    """The Tracker was closed; it starts nothing more."""


class NotReadyError(ProcTrackError):
    """A tracked process did not become ready."""


class ReadyTimeout(NotReadyError):
    """The readiness deadline passed first; the tree was torn down."""


class ExitedBeforeReady(NotReadyError):
    """The process exited before it became ready."""


class ExitTimeout(ProcTrackError, TimeoutError):
    """``wait_exit`` ran out of time; the tree was torn down."""
