#!/usr/bin/env python3
"""A soak: N start -> ready -> stop cycles of one name in one kernel (issue 9).

    python benchmarks/soak.py [--cycles 200] [--every 20] [--warmup 10]

Each cycle runs ``%%tracked soak --wait-output ready`` (with its widget) and then
``%proctrack_cleanup soak``. After a warm-up, the kernel's open file descriptors, OS
threads and RSS are printed every ``--every`` cycles; they must stay flat. The test suite
runs a short version (tests/test_longrun.py::test_short_soak_leaves_fds_and_threads_flat).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _kernels import Kernel, soak_cycles

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    kernel = Kernel()  # a real ipykernel with the extension loaded, from tests/_kernels.py
    try:
        soak_cycles(kernel, args.warmup, args.warmup)
        started = time.monotonic()
        rows = soak_cycles(kernel, args.cycles, args.every)
        took = time.monotonic() - started
    finally:
        kernel.close()
    print(f"{'cycle':>5} {'fds':>5} {'threads':>7} {'RSS MiB':>8}")
    for cycle, fds, threads, rss in rows:
        print(f"{cycle:>5} {fds:>5} {threads:>7} {rss / MiB:>8.1f}")
    first, last = rows[0], rows[-1]
    print(f"{args.cycles} cycles in {took:.1f} s ({1000 * took / args.cycles:.0f} ms each); "
          f"after warm-up: fds {last[1] - first[1]:+d}, threads {last[2] - first[2]:+d}, "
          f"RSS {(last[3] - first[3]) / MiB:+.1f} MiB")


if __name__ == "__main__":
    main()
