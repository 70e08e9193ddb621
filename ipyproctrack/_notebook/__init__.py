"""The notebook front of ipyproctrack: magics, live widgets and kernel-ending teardown.

``ipyproctrack.load_ipython_extension`` calls :func:`load`; ``unload_ipython_extension``
calls :func:`unload`. Cells reach the engine through :func:`current_tracker` and
:func:`get_process` (re-exported as ``ipyproctrack.notebook_tracker`` and
``ipyproctrack.tracked``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .config import ProcTrackConfig
from .session import NotebookSession

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ipyproctrack import TrackedProcess, Tracker

__all__ = [
    "ProcTrackConfig",
    "current_session",
    "current_tracker",
    "get_process",
    "load",
    "unload",
]

_lock = threading.Lock()
# One session per shell (normally one shell per process); configs outlive reloads so that
# `%config ProcTrackConfig.x = ...` survives `%reload_ext`.
_sessions: dict[int, NotebookSession] = {}
_configs: dict[int, ProcTrackConfig] = {}


def _config_for(ip: InteractiveShell) -> ProcTrackConfig:
    config = _configs.get(id(ip))
    if config is None or config.parent is not ip:
        config = ProcTrackConfig(parent=ip)
        _configs[id(ip)] = config
    configurables: list[Any] = ip.configurables
    if config not in configurables:
        configurables.append(config)
    return config


def load(ip: InteractiveShell) -> None:
    """``%load_ext ipyproctrack``: config, magics and the kernel-ending hooks."""
    from .magics import ProcTrackMagics

    with _lock:
        if id(ip) in _sessions:
            return  # IPython calls load once per %load_ext; be idempotent anyway
        session = NotebookSession(ip, _config_for(ip))
        _sessions[id(ip)] = session
    ip.register_magics(ProcTrackMagics(ip, session))
    session.hooks.install(ip)


def unload(ip: InteractiveShell) -> None:
    """``%unload_ext ipyproctrack``: tear down every tracked tree, remove the magics."""
    with _lock:
        session = _sessions.pop(id(ip), None)
    if session is None:
        return
    report = session.close()
    magics = ip.magics_manager.magics
    for kind, names in (
        ("line", ("tracked", "proctrack", "proctrack_cleanup", "proctrack_logs")),
        ("cell", ("tracked",)),
    ):
        for name in names:
            magics[kind].pop(name, None)
    config = _configs.get(id(ip))
    configurables: list[Any] = ip.configurables
    if config is not None and config in configurables:
        configurables.remove(config)
    if report is not None and report.outcomes:
        from .views import CleanupView

        print("\n".join(["ipyproctrack unloaded:", *CleanupView(report).summary()]))


def current_session() -> NotebookSession:
    """The session of the running shell; RuntimeError if the extension is not loaded."""
    from IPython.core.getipython import get_ipython

    ip = get_ipython()
    session = _sessions.get(id(ip)) if ip is not None else None
    if session is None:
        if len(_sessions) == 1:
            return next(iter(_sessions.values()))
        raise RuntimeError("the ipyproctrack extension is not loaded: run %load_ext ipyproctrack")
    return session


def current_tracker() -> Tracker:
    """The extension's Tracker (created on first use)."""
    return current_session().tracker


def get_process(name: str) -> TrackedProcess:
    """The tracked process called ``name``; UnknownProcessError if there is none."""
    return current_tracker().get(name)
