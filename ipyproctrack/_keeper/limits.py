"""Per-tree limits the keeper holds: the whole tree's RSS and its wall-clock runtime.

The keeper, not the kernel, watches them, so a limit holds while the kernel is busy in a
long cell. Stdlib only, like the rest of the keeper. The engine uses ``describe`` so that
both sides word a limit the same way.
"""

from __future__ import annotations

from .._proc import procfs
from .._proc.scan import scan_processes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: How often the keeper samples while a limit is set (seconds).
CHECK_EVERY = 0.5
MEMORY = "memory"
RUNTIME = "runtime"


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def describe(limit: str, used: float, allowed: float) -> tuple[str, str]:
    """(the full wording, the short one): ("memory: tree RSS 301 MiB > limit 100 MiB",
    "memory limit (301 MiB > 100 MiB)"); runtime in seconds likewise."""
    if limit == MEMORY:
        return (f"memory: tree RSS {_mib(used)} > limit {_mib(allowed)}",
                f"memory limit ({_mib(used)} > {_mib(allowed)})")
    return (f"runtime: {used:.1f} s > limit {allowed:g} s",
            f"runtime limit ({used:.1f} s > {allowed:g} s)")


def tree_rss(root: int, tag: str, exclude: Iterable[int]) -> int:
    """The summed RSS (bytes) of ``root``'s descendants and of every process carrying
    ``tag``, ``exclude`` (the keeper, the kernel) left out. One scan; Linux (/proc)."""
    snap = scan_processes(with_tags=bool(tag))
    skip = set(exclude)
    children: dict[int, list[int]] = {}
    members: set[int] = set()
    for rec in snap.values():
        children.setdefault(rec.ppid, []).append(rec.pid)
        if tag and rec.process_tag == tag and not rec.zombie:
            members.add(rec.pid)
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in members:
                members.add(child)
                stack.append(child)
    return sum(procfs.read_rss(pid) or 0 for pid in members - skip if not snap[pid].zombie)


class Limits:
    """The limits of one tree; ``check`` says which one is exceeded, if any."""

    def __init__(self, *, max_memory: int, max_runtime: float) -> None:
        self.max_memory = max(max_memory, 0)
        self.max_runtime = max(max_runtime, 0.0)

    def __bool__(self) -> bool:
        return bool(self.max_memory or self.max_runtime)

    def check(self, *, root: int, tag: str, exclude: Iterable[int],
              runtime: float) -> tuple[str, float, float] | None:
        """(limit, used, allowed) of the first exceeded limit, or None."""
        if self.max_runtime and runtime > self.max_runtime:
            return RUNTIME, runtime, self.max_runtime
        if self.max_memory:
            rss = tree_rss(root, tag, exclude)
            if rss > self.max_memory:
                return MEMORY, float(rss), float(self.max_memory)
        return None
