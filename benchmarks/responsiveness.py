#!/usr/bin/env python3
"""How quickly a kernel answers while tracked processes flood output (issue 9).

    python benchmarks/responsiveness.py [--rounds 3] [--samples 20]

In one kernel, alternately (ABAB...): 4 processes flood about 2 MB/s each
  A. tracked with ``%%tracked`` (drained, logged, shown in widgets), or
  B. untracked, started beside the kernel with their output going to /dev/null;
and the round trip of ``1+1`` (execute request to idle) is measured ``--samples`` times per
round. Printed: the median round trip of each, and their ratio (goal: at most 1.5x).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _kernels import Kernel

FLOODS = 4
# ~2 MB/s on stdout (400 lines of ~100 bytes every 20 ms) and a line on stderr.
FLOOD = (
    "import sys, time\n"
    "pad = \"x\" * 80\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    sys.stdout.write(\"\".join(f\"flood {n}.{k} {pad}\\n\" for k in range(400)))\n"
    "    sys.stdout.flush()\n"
    "    sys.stderr.write(f\"err {n}\\n\"); sys.stderr.flush()\n"
    "    time.sleep(0.02)\n"
)


def round_trips(kernel: Kernel, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        start = time.monotonic()
        kernel.ok("1+1")
        out.append(time.monotonic() - start)
        time.sleep(0.05)
    return out


def tracked_round(kernel: Kernel, samples: int) -> list[float]:
    for i in range(FLOODS):
        kernel.ok(f"%%tracked flood{i}\n{sys.executable} -c '{FLOOD}'\n")
    time.sleep(1.0)  # the floods are flowing
    try:
        return round_trips(kernel, samples)
    finally:
        kernel.ok("%proctrack_cleanup")


def untracked_round(kernel: Kernel, samples: int) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", FLOOD], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
             for _ in range(FLOODS)]
    time.sleep(1.0)
    try:
        return round_trips(kernel, samples)
    finally:
        for p in procs:  # our own children, by pid
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    kernel = Kernel()  # a real ipykernel with the extension loaded, from tests/_kernels.py
    tracked: list[float] = []
    untracked: list[float] = []
    try:
        quiet = statistics.median(round_trips(kernel, args.samples))
        for r in range(args.rounds):  # ABBA-ish: alternate which goes first
            order = (tracked_round, untracked_round) if r % 2 == 0 else (
                untracked_round, tracked_round)
            for fn in order:
                (tracked if fn is tracked_round else untracked).extend(
                    fn(kernel, args.samples))
    finally:
        kernel.close()
    t, u = statistics.median(tracked), statistics.median(untracked)
    print(f"round trip of 1+1, median of {len(tracked)}: no floods {1000 * quiet:.1f} ms; "
          f"{FLOODS} untracked floods to /dev/null {1000 * u:.1f} ms; "
          f"{FLOODS} tracked floods {1000 * t:.1f} ms; ratio tracked/untracked {t / u:.2f}x "
          "(goal <= 1.5x)")


if __name__ == "__main__":
    main()
