#!/usr/bin/env python3
"""How quickly a kernel answers while tracked processes flood output (issue 9).

    python benchmarks/responsiveness.py [--rounds 3] [--samples 20] [--flood paced|full]

In one kernel, in turns: 4 processes flood output (``paced``: about 2 MB/s each; ``full``:
``yes`` lines as fast as they are read)
  A. tracked with ``%%tracked`` (drained, logged, shown in widgets): with the kernel's
     drain thread, and on Linux also with the keepers writing the logs (the pump,
     ``IPYPROCTRACK_KEEPER_DRAIN=1``), or
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
# As fast as the reader takes it: the drain's worst case.
FULL = "yes 'flood line, as fast as it can be read, some padding to make it 100 bytes long......'"
DRAINS = {"kernel": "0", "keeper": "1"}  # IPYPROCTRACK_KEEPER_DRAIN for each tracked side


def round_trips(kernel: Kernel, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        start = time.monotonic()
        kernel.ok("1+1")
        out.append(time.monotonic() - start)
        time.sleep(0.05)
    return out


def flood_argv(kind: str) -> list[str]:
    return ["bash", "-c", FULL] if kind == "full" else [sys.executable, "-c", FLOOD]


def tracked_round(kernel: Kernel, samples: int, kind: str, drain: str) -> list[float]:
    kernel.ok(f"import os; os.environ['IPYPROCTRACK_KEEPER_DRAIN'] = {DRAINS[drain]!r}")
    command = FULL if kind == "full" else f"{sys.executable} -c '{FLOOD}'"
    for i in range(FLOODS):
        kernel.ok(f"%%tracked flood{i}\n{command}\n")
    time.sleep(1.0)  # the floods are flowing
    try:
        return round_trips(kernel, samples)
    finally:
        kernel.ok("%proctrack_cleanup")


def untracked_round(kernel: Kernel, samples: int, kind: str) -> list[float]:
    procs = [subprocess.Popen(flood_argv(kind), stdout=subprocess.DEVNULL,
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
    parser.add_argument("--flood", choices=["paced", "full"], default="paced")
    args = parser.parse_args()
    drains = list(DRAINS) if sys.platform.startswith("linux") else ["kernel"]
    sides = ["untracked", *drains]
    times: dict[str, list[float]] = {side: [] for side in sides}
    kernel = Kernel()  # a real ipykernel with the extension loaded, from tests/_kernels.py
    try:
        quiet = statistics.median(round_trips(kernel, args.samples))
        for r in range(args.rounds):  # alternate which goes first
            for side in sides if r % 2 == 0 else sides[::-1]:
                if side == "untracked":
                    got = untracked_round(kernel, args.samples, args.flood)
                else:
                    got = tracked_round(kernel, args.samples, args.flood, side)
                times[side].extend(got)
    finally:
        kernel.close()
    med = {side: statistics.median(t) for side, t in times.items()}
    u = med["untracked"]
    print(f"round trip of 1+1 ({args.flood} floods), median of {len(times['untracked'])}: "
          f"no floods {1000 * quiet:.1f} ms; {FLOODS} untracked floods to /dev/null "
          f"{1000 * u:.1f} ms")
    for drain in drains:
        t = med[drain]
        print(f"  {FLOODS} tracked floods, drained by the {drain}: {1000 * t:.1f} ms; ratio "
              f"tracked/untracked {t / u:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
