"""Teardown time: Tracker.cleanup vs the psutil kill-tree recipe, on trees of N processes.

Usage::

    .venv/bin/python benchmarks/teardown.py [--sizes 10,100,1000] [--grace 1.0]

Each tree is a bash root with N-2 ``sleep 1000`` children and one child that ignores
SIGTERM, so both methods have to wait out the grace period and then SIGKILL.

- Tracker: ``tracker.start([...tree...])``, then ``tracker.cleanup(name, grace=G)``.
- psutil recipe (the psutil docs' ``kill_proc_tree``): ``Popen(start_new_session=True)``,
  then ``children(recursive=True)`` + the parent, ``terminate()`` each,
  ``wait_procs(timeout=G)``, ``kill()`` the survivors, ``wait_procs`` again.

Only the cleanup call (or the recipe) is timed; building the tree is not. Afterwards every
member recorded before the cleanup is checked: leftovers are printed, then killed by pid.
Goal: the Tracker tears down 1000 processes within grace + 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _bench import kill_leftovers, wait_file, wait_tree_size, write_tree_script

from ipyproctrack import Tracker


def run_tracker(tracker: Tracker, script: Path, size: int, grace: float) -> tuple[float, int, str]:
    ready = script.with_name(f"tracker-{size}.ready")
    proc = tracker.start(["bash", str(script), str(size), str(ready)], name=f"tree{size}")
    members = []
    try:
        wait_file(ready, 60)
        members = wait_tree_size(proc.pid, size, 60)
        started = time.perf_counter()
        report = tracker.cleanup(f"tree{size}", grace=grace)
        seconds = time.perf_counter() - started
        note = f"report: {len(report.outcomes)} outcomes, ok={report.ok}, {report.discovery}"
    finally:
        left = kill_leftovers(members)
    return seconds, left, note


def run_recipe(script: Path, size: int, grace: float) -> tuple[float, int, str]:
    ready = script.with_name(f"recipe-{size}.ready")
    popen = subprocess.Popen(
        ["bash", str(script), str(size), str(ready)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    members = []
    try:
        wait_file(ready, 60)
        members = wait_tree_size(popen.pid, size, 60)
        started = time.perf_counter()
        parent = psutil.Process(popen.pid)
        procs = [*parent.children(recursive=True), parent]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        seconds = time.perf_counter() - started
        note = f"recipe: {len(procs)} found, {len(alive)} still alive to psutil after grace"
    finally:
        left = kill_leftovers(members)
        popen.wait(timeout=10)
    return seconds, left, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10,100,1000", help="tree sizes (10,100,1000)")
    parser.add_argument("--grace", type=float, default=1.0, help="grace in seconds (1.0)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    grace: float = args.grace

    print(f"teardown: grace {grace:g} s; each tree has one SIGTERM ignorer")
    print(f"{'processes':>9}  {'Tracker.cleanup':>16}  {'psutil recipe':>14}  left alive (T/p)")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="ipyproctrack-teardown-") as tmp:
        script = write_tree_script(Path(tmp))
        with Tracker(log_dir=Path(tmp) / "logs", grace=grace) as tracker:
            for size in sizes:
                t, t_left, t_note = run_tracker(tracker, script, size, grace)
                r, r_left, r_note = run_recipe(script, size, grace)
                failures += t_left + r_left
                print(f"{size:>9}  {t:>14.3f} s  {r:>12.3f} s  {t_left}/{r_left}")
                print(f"{'':>9}  over grace: Tracker {t - grace:+.3f} s, recipe {r - grace:+.3f} s")
                print(f"{'':>9}  {t_note}; {r_note}")
    if failures:
        print(f"LEFTOVERS: {failures} process(es) survived a cleanup and were killed by pid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
