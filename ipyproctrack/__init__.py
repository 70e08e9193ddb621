"""ipyproctrack: background servers for notebooks that never outlive the notebook.

Use the engine from plain Python (``Tracker``) or load the IPython extension with
``%load_ext ipyproctrack``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._engine.output import OutputChunk
from ._engine.ready import CallableReady, HttpReady, OutputReady, PortReady, ReadinessCheck
from ._engine.state import Phase, ProcessState
from ._engine.teardown import CleanupReport, ProcessInfo, ProcessOutcome
from ._engine.tracker import TrackedProcess, Tracker
from ._errors import (
    AccessDenied,
    ExitedBeforeReady,
    LaunchError,
    NameInUseError,
    NoSuchProcess,
    NotReadyError,
    PortInUseError,
    ProcTrackError,
    ReadyTimeout,
    TrackerClosedError,
    UnknownProcessError,
)

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__version__ = "0.1.0"

__all__ = (
    "AccessDenied",
    "CallableReady",
    "CleanupReport",
    "ExitedBeforeReady",
    "HttpReady",
    "LaunchError",
    "NameInUseError",
    "NoSuchProcess",
    "NotReadyError",
    "OutputChunk",
    "OutputReady",
    "Phase",
    "PortInUseError",
    "PortReady",
    "ProcTrackError",
    "ProcessInfo",
    "ProcessOutcome",
    "ProcessState",
    "ReadinessCheck",
    "ReadyTimeout",
    "TrackedProcess",
    "Tracker",
    "TrackerClosedError",
    "UnknownProcessError",
    "load_ipython_extension",
    "notebook_tracker",
    "tracked",
    "unload_ipython_extension",
)


def load_ipython_extension(ip: InteractiveShell) -> None:
    """``%load_ext ipyproctrack``: register the magics and the teardown hooks."""
    from . import _notebook

    _notebook.load(ip)


def unload_ipython_extension(ip: InteractiveShell) -> None:
    """``%unload_ext ipyproctrack``: tear down every tracked process first."""
    from . import _notebook

    _notebook.unload(ip)


def tracked(name: str) -> TrackedProcess:
    """In a notebook: the handle of the process started by ``%%tracked NAME``."""
    from . import _notebook

    return _notebook.get_process(name)


def notebook_tracker() -> Tracker:
    """In a notebook: the extension's Tracker (one per kernel)."""
    from . import _notebook

    return _notebook.current_tracker()
