"""ipyproctrack: background servers for notebooks that never outlive the notebook.

Use the engine from plain Python (``Tracker``) or load the IPython extension with
``%load_ext ipyproctrack``.

The public names load lazily (PEP 562): ``import ipyproctrack._proc`` (what the keeper
runs) loads only the standard library, not anyio, psutil or IPython.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ._engine.metrics import MetricsSample
    from ._engine.output import OutputChunk
    from ._engine.process import TrackedProcess
    from ._engine.ready import (
        CallableReady,
        HttpReady,
        OutputReady,
        PortReady,
        ReadinessCheck,
    )
    from ._engine.state import Phase, ProcessState
    from ._engine.tracker import Tracker
    from ._proc.discovery import ProcessInfo
    from ._proc.teardown import CleanupReport, ProcessOutcome
    from .errors import (
        ExitedBeforeReady,
        ExitTimeout,
        LaunchError,
        NameInUseError,
        NotReadyError,
        PortInUseError,
        ProcTrackError,
        ReadyTimeout,
        TrackerClosedError,
        UnknownProcessError,
    )

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "CallableReady": "._engine.ready",
    "CleanupReport": "._proc.teardown",
    "ExitTimeout": ".errors",
    "ExitedBeforeReady": ".errors",
    "HttpReady": "._engine.ready",
    "MetricsSample": "._engine.metrics",
    "LaunchError": ".errors",
    "NameInUseError": ".errors",
    "NotReadyError": ".errors",
    "OutputChunk": "._engine.output",
    "OutputReady": "._engine.ready",
    "Phase": "._engine.state",
    "PortInUseError": ".errors",
    "PortReady": "._engine.ready",
    "ProcTrackError": ".errors",
    "ProcessInfo": "._proc.discovery",
    "ProcessOutcome": "._proc.teardown",
    "ProcessState": "._engine.state",
    "ReadinessCheck": "._engine.ready",
    "ReadyTimeout": ".errors",
    "TrackedProcess": "._engine.process",
    "Tracker": "._engine.tracker",
    "TrackerClosedError": ".errors",
    "UnknownProcessError": ".errors",
}

__all__ = (
    "CallableReady",
    "CleanupReport",
    "ExitTimeout",
    "ExitedBeforeReady",
    "HttpReady",
    "LaunchError",
    "MetricsSample",
    "NameInUseError",
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


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # here: it imports warnings, a cost on every keeper's start

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
