"""Every tracked launch on this machine, by session: what the command line lists and
cleans up, found by our exact tags through the same scan and discovery as the engine.

A session tag is ``<kernel pid>-<hex>`` (``Tracker.session_tag``). Each launch's keeper
carries its config in its command line (``_keeper/protocol``): the tracked name, the
kernel's pid and start time (so "is the kernel alive" survives pid reuse), and the tag.
Only this user's processes count; root sees every user's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import _platform as plat
from .._keeper.protocol import read_config
from .._proc import procfs
from .._proc.discovery import Target, discover, one_line, protected_pids
from .._proc.identity import ProcId, ProcRecord, create_time_from_start
from .._proc.scan import command_of, get_record, scan_processes
from .._proc.teardown import CleanupReport, run_teardown
from .ports import listening_ports

__all__ = ["Launch", "Session", "cleanup_sessions", "find_sessions", "is_root"]

_KEEPER_MAIN = os.path.join("_keeper", "__main__.py")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Launch:
    """One tracked launch: its name, root, keeper and live tree."""

    session: str
    tag: str
    name: str
    pid: int | None  # the root command (None: gone, its tree lives on)
    create_time: float
    command: str
    keeper: ProcId | None
    members: list[int] = field(default_factory=list)  # the live tree, keeper left out
    rss: int | None = None
    ports: list[int] = field(default_factory=list)

    def target(self) -> Target:
        """The teardown's view of this launch, as the engine builds it."""
        root = ProcId(self.pid, self.create_time) if self.pid is not None else None
        return Target(name=f"{self.name} ({self.session})", root=root, tag=self.tag,
                      group=self.keeper.pid if self.keeper else self.pid,
                      helpers=(self.keeper,) if self.keeper else (), command=self.command)

    def as_dict(self, now: float) -> dict[str, object]:
        return {"name": self.name, "tag": self.tag, "pid": self.pid,
                "keeper_pid": self.keeper.pid if self.keeper else None,
                "processes": len(self.members),
                "uptime": round(now - self.create_time, 1) if self.pid else None,
                "rss": self.rss, "ports": self.ports, "command": self.command}


@dataclass
class Session:
    """One Tracker's launches, and whether the kernel (the Tracker's process) lives."""

    tag: str
    kernel_pid: int
    kernel_alive: bool
    uid: int | None
    launches: list[Launch] = field(default_factory=list)

    def as_dict(self, now: float) -> dict[str, object]:
        return {"session": self.tag, "kernel_pid": self.kernel_pid,
                "kernel_alive": self.kernel_alive, "uid": self.uid,
                "launches": [launch.as_dict(now) for launch in self.launches]}


def _keeper_config(pid: int) -> dict[str, object] | None:
    """The config of a keeper (``python -I -S .../_keeper/__main__.py <config>``)."""
    args = procfs.argv(pid) if plat.HAS_PROCFS else []
    if len(args) < 2 or not args[-2].endswith(_KEEPER_MAIN):
        return None
    return read_config(args[-1])


def _alive(pid: int, start: float | None) -> bool:
    """Is ``pid`` a live process, and (when its start is known) the same one?"""
    rec = get_record(pid)
    if rec is None or rec.zombie:
        return False
    ctime = create_time_from_start(start) if start else None
    return ctime is None or ProcId(pid, ctime).matches(rec.create_time)


def _mine(pid: int) -> bool:
    if is_root() or not plat.HAS_PROCFS:
        return True  # without /proc, ps shows us no other user's environment anyway
    return procfs.owner(pid) == os.getuid()


def _launch_of(tag: str, recs: list[ProcRecord]) -> tuple[Launch, dict[str, object]]:
    """A launch from its tagged processes; and its keeper's config ({} without one)."""
    config: dict[str, object] = {}
    keeper = None
    for rec in recs:
        found = _keeper_config(rec.pid)
        if found is not None and found.get("tag") == tag:
            config, keeper = found, rec
            break
    others = sorted((r for r in recs if r is not keeper), key=lambda r: r.create_time)
    pids = {r.pid for r in others}
    roots = [r for r in others if keeper is not None and r.ppid == keeper.pid]
    roots = roots or [r for r in others if r.ppid not in pids]
    root = roots[0] if roots else None
    session = tag.rsplit(".", 1)[0]
    launch = Launch(
        session=session, tag=tag, name=str(config.get("name") or tag),
        pid=root.pid if root else None, create_time=root.create_time if root else 0.0,
        command=one_line(command_of(root.pid)) if root else "",
        keeper=keeper.ident if keeper else None,
    )
    return launch, config


def find_sessions() -> list[Session]:
    """Every session with a live tagged process of this user (root: of every user),
    with each launch's tree, RSS and ports. One scan."""
    snap = scan_processes(with_tags=True)
    by_tag: dict[str, list[ProcRecord]] = {}
    for rec in snap.values():
        if rec.process_tag and not rec.zombie and _mine(rec.pid):
            by_tag.setdefault(rec.process_tag, []).append(rec)
    sessions: dict[str, Session] = {}
    exclude = protected_pids()
    for tag, recs in sorted(by_tag.items()):
        launch, config = _launch_of(tag, recs)
        found = discover([launch.target()], snap, exclude=exclude | {
            launch.keeper.pid if launch.keeper else -1})
        launch.members = sorted(found)
        if plat.HAS_PROCFS and launch.members:
            launch.rss = sum(procfs.read_rss(pid) or 0 for pid in launch.members)
        launch.ports = listening_ports(launch.members) if launch.members else []
        session = sessions.get(launch.session)
        if session is None:
            head = launch.session.split("-", 1)[0]
            kp = config.get("kernel_pid")
            kernel_pid = kp if isinstance(kp, int) else int(head) if head.isdigit() else 0
            start = config.get("kernel_start")
            alive = kernel_pid > 0 and _alive(kernel_pid, start if isinstance(start, float)
                                              else None)
            session = sessions[launch.session] = Session(
                launch.session, kernel_pid, alive, procfs.owner(recs[0].pid)
                if plat.HAS_PROCFS else None)
        session.launches.append(launch)
    return list(sessions.values())


def cleanup_sessions(sessions: list[Session], *, grace: float) -> CleanupReport:
    """The phased teardown of every launch of ``sessions`` at once. Never raises."""
    targets = [launch.target() for s in sessions for launch in s.launches]
    if not targets:
        return CleanupReport()
    return run_teardown(targets, grace=grace)

