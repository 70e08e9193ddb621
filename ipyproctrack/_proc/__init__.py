"""Processes, standard library only: identity, the /proc reader, scans, signals,
discovery and the phased teardown. All the keeper may import (with ``_platform``).

The names below load lazily (PEP 562): the keeper imports ``procfs`` at start-up and
the teardown modules only when the kernel is gone.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .discovery import ProcessInfo, Target, discover, protected_pids, tree_of, trees_of
    from .identity import ProcId, ProcRecord, create_time_from_start, same_process
    from .scan import command_of, discovery_name, get_record, register_scanner, scan_processes
    from .signals import is_alive, send_signal
    from .teardown import CleanupReport, ProcessOutcome, run_teardown

_WHERE = {
    "CleanupReport": "teardown",
    "ProcId": "identity",
    "ProcRecord": "identity",
    "ProcessInfo": "discovery",
    "ProcessOutcome": "teardown",
    "Target": "discovery",
    "command_of": "scan",
    "create_time_from_start": "identity",
    "discover": "discovery",
    "discovery_name": "scan",
    "get_record": "scan",
    "is_alive": "signals",
    "protected_pids": "discovery",
    "register_scanner": "scan",
    "run_teardown": "teardown",
    "same_process": "identity",
    "scan_processes": "scan",
    "send_signal": "signals",
    "tree_of": "discovery",
    "trees_of": "discovery",
}
__all__ = (
    "CleanupReport",
    "ProcId",
    "ProcRecord",
    "ProcessInfo",
    "ProcessOutcome",
    "Target",
    "command_of",
    "create_time_from_start",
    "discover",
    "discovery_name",
    "get_record",
    "is_alive",
    "protected_pids",
    "register_scanner",
    "run_teardown",
    "same_process",
    "scan_processes",
    "send_signal",
    "tree_of",
    "trees_of",
)


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # here: it imports warnings, a cost on every keeper's start

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
