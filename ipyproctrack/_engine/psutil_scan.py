"""psutil as the process scanner where there is no /proc (macOS, BSD, Windows).

``_proc`` stays standard-library only (it falls back to ``ps`` there); the engine, which
may use psutil, registers this better scanner at import (``install``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .. import _platform as plat
from .._proc.identity import ProcRecord
from .._proc.scan import register_scanner

log = logging.getLogger(__name__)


def _record(psutil: Any, p: Any, with_tags: bool) -> ProcRecord | None:
    try:
        with p.oneshot():
            pid = p.pid
            ppid, ctime, zombie = p.ppid(), p.create_time(), p.status() == psutil.STATUS_ZOMBIE
            env: dict[str, str] = {}
            if with_tags and not zombie:
                try:
                    env = p.environ()
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    env = {}
        # Windows has no process groups: a launch's console group is named by its root.
        pgid = sid = 0 if plat.IS_WINDOWS else os.getpgid(pid)
        if not plat.IS_WINDOWS:
            sid = os.getsid(pid)
    except (psutil.Error, OSError):
        return None
    return ProcRecord(pid, ppid, ctime, pgid, sid, zombie,
                      env.get(plat.TAG_SESSION), env.get(plat.TAG_PROCESS))


def install() -> bool:
    """Register psutil as the scanner where there is no /proc. False when /proc serves
    (it is faster) or psutil is missing (``_proc`` then scans with ``ps``)."""
    if plat.HAS_PROCFS:
        return False
    try:
        import psutil
    except ImportError:
        log.debug("psutil is missing: processes are scanned with ps")
        return False

    def scan(*, with_tags: bool = True) -> dict[int, ProcRecord]:
        records = (_record(psutil, p, with_tags) for p in psutil.process_iter())
        return {r.pid: r for r in records if r is not None}

    def record(pid: int, *, with_tags: bool = False) -> ProcRecord | None:
        try:
            return _record(psutil, psutil.Process(pid), with_tags)
        except psutil.Error:
            return None

    def command(pid: int) -> str:
        try:
            return " ".join(psutil.Process(pid).cmdline())
        except (psutil.Error, OSError):
            return ""

    register_scanner("psutil", scan=scan, record=record, command=command)
    return True
