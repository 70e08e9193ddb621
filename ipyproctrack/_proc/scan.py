"""Process scans: ``/proc`` where it exists, else ``ps``, or a better scanner the engine
registers (psutil, in ``_engine/psutil_scan.py``) for systems without ``/proc``."""

from __future__ import annotations

from .. import _platform as plat
from . import procfs
from .identity import ProcRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    ScanFn = Callable[..., dict[int, ProcRecord]]
    RecordFn = Callable[..., ProcRecord | None]
    CommandFn = Callable[[int], str]


def _ps_scan(*, with_tags: bool = True) -> dict[int, ProcRecord]:
    table = plat.ps_table(with_tags=with_tags)
    out: dict[int, ProcRecord] = {}
    for pid, (ppid, pgid, zombie, ctime, session, process) in (table or {}).items():
        # ps has no portable session id column; a launch leads its group and its session.
        out[pid] = ProcRecord(pid, ppid, ctime, pgid, pgid, zombie, session, process)
    return out


def _ps_record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
    return _ps_scan(with_tags=with_tags).get(pid)


class _Scanner:
    __slots__ = ("command", "name", "record", "scan")

    def __init__(self, name: str, scan: ScanFn, record: RecordFn, command: CommandFn) -> None:
        self.name, self.scan, self.record, self.command = name, scan, record, command


PROCFS = _Scanner("proc", procfs.scan, procfs.record, procfs.command)
PS = _Scanner("ps", _ps_scan, _ps_record, plat.ps_command)
_active = PROCFS if plat.HAS_PROCFS else PS


def register_scanner(name: str, *, scan: ScanFn, record: RecordFn, command: CommandFn) -> None:
    """Make ``scan(with_tags=...)``, ``record(pid, with_tags=...)`` and ``command(pid)``
    the scanner every caller uses from now on (the engine registers psutil where there is
    no /proc; tests register ``PS`` to run the ``ps`` scan on Linux)."""
    global _active
    _active = _Scanner(name, scan, record, command)


def use_scanner(scanner: _Scanner) -> None:
    """Switch to one of this module's scanners (``PROCFS``, ``PS``)."""
    global _active
    _active = scanner


def discovery_name() -> str:
    """The active scanner's name, for reports: "proc", "ps", or a registered one."""
    return _active.name


def scan_processes(*, with_tags: bool = True) -> dict[int, ProcRecord]:
    """Every visible process, by pid, with its tags (``with_tags``)."""
    return _active.scan(with_tags=with_tags)


def get_record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
    """A fresh look at one pid, or None if it is gone."""
    return _active.record(pid, with_tags=with_tags)


def command_of(pid: int) -> str:
    """The command line of ``pid`` as one string, "" when unknown."""
    return _active.command(pid)


def start_seconds(pid: int) -> float:
    """Start time of ``pid`` in seconds since boot (Linux), 0.0 when unknown: what the
    keeper and the engine exchange (``identity.create_time_from_start``)."""
    return procfs.start_seconds(pid) if plat.HAS_PROCFS else 0.0
