"""``python -m ipyproctrack`` (the ``ipyproctrack`` command): list and clean up tracked
processes from a terminal, for instructors and shared machines. A thin front over
``_engine.sessions``.

    ipyproctrack list [--json]
    ipyproctrack cleanup [SESSION ...] [--dead] [--all] [--grace S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ipyproctrack._engine.sessions import Session, cleanup_sessions, find_sessions, is_root

__all__ = ["main"]

ROOT_NOTE = "running as root: this covers every user's tracked processes"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipyproctrack",
        description="List and clean up the processes ipyproctrack tracks on this machine "
        "(yours; as root, every user's).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every tracked process, grouped by session")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    clean = sub.add_parser("cleanup", help="phased teardown (SIGTERM, wait, SIGKILL)")
    clean.add_argument("sessions", nargs="*", metavar="SESSION",
                       help="session tags (as `list` shows them) or kernel pids")
    clean.add_argument("--dead", action="store_true",
                       help="the sessions whose kernel is gone")
    clean.add_argument("--all", action="store_true", help="every session")
    clean.add_argument("--grace", type=float, default=3.0, metavar="S",
                       help="seconds between SIGTERM and SIGKILL (default 3)")
    return parser


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _uptime(seconds: object) -> str:
    if not isinstance(seconds, float | int):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(sessions: Sequence[Session], now: float) -> str:
    if not sessions:
        return "no tracked processes"
    out = []
    heads = ("NAME", "PID", "PROCS", "UPTIME", "RSS", "PORTS", "COMMAND")
    for s in sessions:
        state = "alive" if s.kernel_alive else "GONE"
        owner = f", uid {s.uid}" if s.uid is not None and is_root() else ""
        out.append(f"session {s.tag}: kernel pid {s.kernel_pid} {state}{owner}")
        rows = [heads]
        for launch in s.launches:
            d = launch.as_dict(now)
            rows.append((launch.name, str(launch.pid or "-"), str(d["processes"]),
                         _uptime(d["uptime"]), _mib(launch.rss),
                         ",".join(map(str, launch.ports)) or "-", launch.command[:60]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(heads) - 1)]
        out += ["  " + "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)),
                                  r[-1]]).rstrip() for r in rows]
    return "\n".join(out)


def _select(sessions: list[Session], args: argparse.Namespace) -> list[Session] | str:
    """The sessions ``cleanup`` covers, or why it cannot choose."""
    if args.all:
        return sessions
    if not args.sessions and not args.dead:
        return "say which: SESSION..., --dead or --all (see `ipyproctrack list`)"
    known = {s.tag: s for s in sessions}
    chosen = [s for s in sessions if args.dead and not s.kernel_alive]
    for name in args.sessions:
        match = [s for s in sessions if name in (s.tag, str(s.kernel_pid))]
        if not match:
            return f"no tracked session {name!r} (known: {', '.join(known) or 'none'})"
        chosen += [s for s in match if s not in chosen]
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if is_root() and not (args.command == "list" and args.json):
        print(ROOT_NOTE, file=sys.stderr)
    sessions = find_sessions()
    now = time.time()
    if args.command == "list":
        if args.json:
            print(json.dumps({"all_users": is_root(),
                              "sessions": [s.as_dict(now) for s in sessions]}, indent=1))
        else:
            print(_table(sessions, now))
        return 0
    chosen = _select(sessions, args)
    if isinstance(chosen, str):
        print(f"ipyproctrack cleanup: {chosen}", file=sys.stderr)
        return 2
    if not chosen:
        print("nothing to clean up")
        return 0
    print(f"cleaning up {len(chosen)} session(s): {', '.join(s.tag for s in chosen)}")
    report = cleanup_sessions(chosen, grace=args.grace)
    print(report)
    return 0 if report.ok else 1
