#!/usr/bin/env python3
"""What 100 idle tracked processes and their widgets cost an idle kernel (issue 9).

    python benchmarks/idle_cost.py [--processes 100] [--seconds 30] [--settle 25]

A fresh kernel starts N processes that print one line and sleep, each with its widget,
lets them settle, then stays idle (no cell runs) for S seconds. Measured on the client
side: the kernel's CPU time in that window (% of one core) and the widget messages
(``comm_msg``) per second on iopub. Goal: under 0.5 % of a core.
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _kernels import Kernel

CELL = "%%tracked idle{i}\necho hello from {i}; exec sleep 100000\n"


def measure(n: int, seconds: float, settle: float) -> dict[str, float]:
    kernel = Kernel()  # a real ipykernel with the extension loaded, from tests/_kernels.py
    try:
        for i in range(n):
            kernel.ok(CELL.format(i=i))
        time.sleep(settle)  # the first samples, ports and tails go out
        while True:  # forget what is queued so far
            try:
                kernel.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                break
        proc = psutil.Process(kernel.pid)
        cpu0, start = proc.cpu_times(), time.monotonic()
        comm = 0
        while (left := start + seconds - time.monotonic()) > 0:
            try:
                msg = kernel.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                continue
            comm += msg["msg_type"] == "comm_msg"
        cpu1 = proc.cpu_times()
        kernel.ok("%proctrack_cleanup")
    finally:
        kernel.close()
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"cpu_percent": 100 * used / seconds, "msgs_per_s": comm / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    # 25 s: every widget has shown its tree's first sampled CPU figure (the refresher's
    # idle ticks are 5, 10, then 20 s apart): what remains is the steady idle cost.
    parser.add_argument("--settle", type=float, default=25.0)
    args = parser.parse_args()
    r = measure(args.processes, args.seconds, args.settle)
    print(f"{args.processes} idle tracked processes with widgets, {args.seconds:g} s idle: "
          f"kernel CPU {r['cpu_percent']:.2f}% of a core, "
          f"{r['msgs_per_s']:.2f} widget messages/s")


if __name__ == "__main__":
    main()
