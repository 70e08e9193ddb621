"""What the per-tree metrics cost the kernel: 20 idle tracked trees sampled every second.

    .venv/bin/python benchmarks/metrics_cost.py [--trees 20] [--seconds 20] [--rounds 2]

Runs the same 20 idle trees (bash and two ``sleep``s each) under a Tracker with
``metrics_interval=1`` and under one with sampling off, alternating (ABBA), for
``--seconds`` each. Prints, per mode, the CPU the whole process used (user + system, in
% of one core) and, with sampling on, the sampler thread's own CPU (``thread_time``
around each tick). Goal (issue 10): the sampling costs under 1% of one core.
The cost grows with the number of processes on the machine (one scan of all of them per
tick), so that number is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipyproctrack import Tracker
from ipyproctrack._proc.scan import scan_processes

TREE = "sleep 1000 & sleep 1000 & wait"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def one_run(trees: int, seconds: float, interval: float | None, logs: Path) -> tuple[float, float]:
    """(% of a core used by this process, % used by the sampler thread) over ``seconds``."""
    with Tracker(log_dir=logs, metrics_interval=interval, grace=0.5) as tracker:
        procs = [tracker.start(TREE, name=f"idle-{i}") for i in range(trees)]
        deadline = time.monotonic() + 20
        while sum(len(p.tree()) for p in procs) < 3 * trees:  # every tree fully started
            if time.monotonic() > deadline:
                raise TimeoutError("the trees did not start")
            time.sleep(0.1)
        time.sleep(1.5)  # past the first samples of every tree
        sampler = tracker._metrics
        before_cpu, before_sampler, start = cpu_seconds(), sampler.cpu_seconds, time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - start
        used = cpu_seconds() - before_cpu
        sampled = sampler.cpu_seconds - before_sampler
        if interval:
            assert all(len(p.metrics()) >= seconds / interval - 2 for p in procs)
    return 100 * used / wall, 100 * sampled / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    order = ["on", "off", "off", "on"] * ((args.rounds + 1) // 2)
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as tmp:
        for i, mode in enumerate(order[: 2 * args.rounds]):
            interval = 1.0 if mode == "on" else None
            results[mode].append(one_run(args.trees, args.seconds, interval, Path(tmp) / str(i)))
    machine = len(scan_processes(with_tags=False))
    print(f"{args.trees} idle trees of 3 processes, {args.seconds:g} s per run, "
          f"{args.rounds} runs per mode (ABBA); {machine} processes on this machine")
    for mode, runs in results.items():
        proc = statistics.median(r[0] for r in runs)
        line = f"  sampling {mode:3}: whole process {proc:5.2f}% of a core"
        if mode == "on":
            thread = statistics.median(r[1] for r in runs)
            line += f"; the sampler thread {thread:.2f}% (goal < 1%)"
        print(line)
    on = statistics.median(r[0] for r in results["on"])
    off = statistics.median(r[0] for r in results["off"])
    print(f"  difference (on - off): {on - off:+.2f}% of a core")


if __name__ == "__main__":
    main()
