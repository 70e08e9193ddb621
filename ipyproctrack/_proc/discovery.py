"""Which live processes belong to a tracked tree: its descendants, its group, its tag."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .identity import ProcId, ProcRecord
from .scan import command_of, get_record, scan_processes
from .signals import group_holds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

FOUND_TREE = "tree"
FOUND_GROUP = "group"
FOUND_TAG = "tag"


@dataclass
class Target:
    """One tracked tree, as the teardown needs to know it."""

    name: str
    root: ProcId | None
    tag: str
    group: int | None = None  # the session/group id its root (or its keeper) leads
    reap: Callable[[], bool] | None = None  # reaps our direct child; True once it has exited
    helpers: Sequence[ProcId] = ()  # our own processes in the tree (keepers): never reported
    root_exited: bool = False  # the root had exited on its own before the teardown
    command: str = ""  # the root's command, for the report

    def group_leader(self) -> ProcId | None:
        """The root or keeper whose pid names the group, if one does."""
        return next((p for p in (self.root, *self.helpers)
                     if p is not None and p.pid == self.group), None)

    def helper_led(self) -> bool:
        return any(h.pid == self.group for h in self.helpers)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One live member of a tracked tree."""

    pid: int
    create_time: float
    ppid: int
    command: str
    found_by: str


def protected_pids() -> set[int]:
    """Our own process and its ancestors: never signalled, whatever a scan says."""
    out = {os.getpid()}
    pid = os.getppid()
    for _ in range(64):
        if pid <= 1 or pid in out:
            break
        out.add(pid)
        rec = get_record(pid)
        pid = rec.ppid if rec else 0
    return out


def group_is_ours(target: Target, snap: dict[int, ProcRecord]) -> bool:
    """Is the target's group still its own, judged from a scan? (see ``group_holds``)"""
    leader = target.group_leader()
    return (target.group is not None and leader is not None
            and group_holds(target.group, leader, snap.get(target.group)))


def discover(
    targets: Sequence[Target],
    snap: dict[int, ProcRecord],
    *,
    exclude: set[int],
) -> dict[int, tuple[Target, ProcRecord, str]]:
    """Each live process that belongs to a target: its descendants, its group, its tag."""
    children: dict[int, list[int]] = {}
    by_group: dict[int, list[ProcRecord]] = {}
    by_tag: dict[str, list[ProcRecord]] = {}
    for rec in snap.values():  # one pass; each target then looks up only its own
        children.setdefault(rec.ppid, []).append(rec.pid)
        by_group.setdefault(rec.pgid, []).append(rec)
        if rec.sid != rec.pgid:
            by_group.setdefault(rec.sid, []).append(rec)
        if rec.process_tag is not None:
            by_tag.setdefault(rec.process_tag, []).append(rec)
    found: dict[int, tuple[Target, ProcRecord, str]] = {}

    def add(t: Target, rec: ProcRecord, how: str) -> None:
        if rec.pid not in found and rec.pid not in exclude and not rec.zombie:
            found[rec.pid] = (t, rec, how)

    for t in targets:
        roots = [t.root, *t.helpers] if t.root else list(t.helpers)
        stack = []
        for ident in roots:
            root_rec = snap.get(ident.pid)
            if root_rec is not None and ident.matches(root_rec.create_time):
                if ident == t.root:
                    add(t, root_rec, FOUND_TREE)
                stack.append(root_rec.pid)
        while stack:  # descendants, leaves reached through their living parents
            for child in children.get(stack.pop(), ()):
                add(t, snap[child], FOUND_TREE)
                stack.append(child)
        if group_is_ours(t, snap):
            for rec in by_group.get(t.group or 0, ()):
                add(t, rec, FOUND_GROUP)
        for rec in by_tag.get(t.tag, ()):
            add(t, rec, FOUND_TAG)
    return found


def one_line(command: str) -> str:
    return " ".join(command.split())


def tree_of(target: Target) -> list[ProcessInfo]:
    """The live members of one tracked tree (helpers left out)."""
    return trees_of([target])[target.name]


def trees_of(targets: Sequence[Target]) -> dict[str, list[ProcessInfo]]:
    """The live members of several trees, from one scan: name -> members."""
    snap = scan_processes(with_tags=True)
    helpers = {h.pid for t in targets for h in t.helpers}
    found = discover(targets, snap, exclude=protected_pids() | helpers)
    out: dict[str, list[ProcessInfo]] = {t.name: [] for t in targets}
    for pid, (t, rec, how) in sorted(found.items()):
        command = one_line(command_of(pid))
        out[t.name].append(ProcessInfo(pid, rec.create_time, rec.ppid, command, how))
    return out
