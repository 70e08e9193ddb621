"""The notebook front of ipyproctrack: magics, live widgets and kernel-ending teardown.

``ipyproctrack.load_ipython_extension`` calls :func:`load`; ``unload_ipython_extension``
calls :func:`unload`. Cells reach the engine through :func:`current_tracker` and
:func:`get_process` (re-exported as ``ipyproctrack.notebook_tracker`` and
``ipyproctrack.tracked``).
"""

from __future__ import annotations

import threading
import weakref
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
# One session per loaded shell (normally one shell per process), dropped by unload: nothing
# here keeps a shell alive after its unload.
_sessions: dict[int, NotebookSession] = {}
# What `%config ProcTrackConfig.x = ...` set, kept across `%reload_ext` as plain values
# (a ProcTrackConfig would hold its shell as parent), for as long as the shell lives.
_saved_settings: weakref.WeakKeyDictionary[InteractiveShell, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)
_MAGIC_NAMES = (
    ("line", ("tracked", "proctrack", "proctrack_cleanup", "proctrack_logs")),
    ("cell", ("tracked",)),
)


def _config_for(ip: InteractiveShell) -> ProcTrackConfig:
    config = ProcTrackConfig(parent=ip)
    for name, value in _saved_settings.pop(ip, {}).items():
        setattr(config, name, value)
    configurables: list[Any] = ip.configurables
    configurables.append(config)
    return config


def _forget_config(ip: InteractiveShell, config: ProcTrackConfig) -> None:
    configurables: list[Any] = ip.configurables
    while config in configurables:
        configurables.remove(config)
    defaults = ProcTrackConfig()
    _saved_settings[ip] = {
        name: value
        for name, value in config.trait_values(config=True).items()
        if value != getattr(defaults, name)
    }


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
    manager = ip.magics_manager
    for kind, names in _MAGIC_NAMES:
        for name in names:
            manager.magics[kind].pop(name, None)
    magics_object = manager.registry.pop("ProcTrackMagics", None)  # it holds the session
    configurables: list[Any] = ip.configurables  # IPython's Magics.__init__ put it there
    while magics_object is not None and magics_object in configurables:
        configurables.remove(magics_object)
    _forget_config(ip, session.config)
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
