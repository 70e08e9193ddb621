#!/usr/bin/env python3
"""Widget traffic and kernel CPU while N tracked processes flood output (design.md fact 8).

    python benchmarks/widget_rate.py [--flooders 4 16] [--seconds 5]

For each N, a fresh kernel starts N processes writing about 2 MB/s each with ``%%tracked``,
then runs ``time.sleep(S)``. Measured on the client side: widget messages (``comm_msg``)
per second, mean and worst one-second window; how many refresher ticks the session's
message budget cut short; the kernel's CPU use in that window (its threads: the drain
loop, the refresher with its one process scan per second, ZMQ); how many bytes the engine
drained. The bound issue 3 sets is 50 widget messages per second per session.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _kernels import FLOODER, Kernel


def measure(n: int, seconds: float) -> dict[str, float]:
    kernel = Kernel()  # a real ipykernel with the extension loaded, from tests/_kernels.py
    try:
        kernel.ok("%config ProcTrackConfig.refresh_hz = 5")
        for i in range(n):
            kernel.ok(FLOODER.format(i=i, lines=400))
        proc = psutil.Process(kernel.pid)
        cpu0 = proc.cpu_times()
        result = kernel.ok(f"import time; time.sleep({seconds})")
        cpu1 = proc.cpu_times()
        drained, deferred = kernel.value(
            "[sum(p.bytes_received for p in __import__('ipyproctrack').notebook_tracker()"
            ".processes()), __import__('ipyproctrack')._notebook.current_session()"
            ".refresher.budget.deferred]"
        )
        kernel.ok("%proctrack_cleanup")
    finally:
        kernel.close()
    times = sorted(m["received"] for m in result.of("comm_msg"))
    worst = max((sum(1 for t in times if s <= t < s + 1.0) for s in times), default=0)
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "flooders": n,
        "msgs_per_s": len(times) / seconds,
        "worst_1s_window": worst,
        "deferred": deferred,
        "kernel_cpu_percent": 100 * used / seconds,
        "drained_MB_per_s": drained / 1e6 / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flooders", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"{'flooders':>8} {'msgs/s':>7} {'worst 1 s':>9} {'deferred':>8} {'kernel CPU':>10} "
          f"{'drained':>12}")
    for n in args.flooders:
        r = measure(n, args.seconds)
        print(f"{r['flooders']:>8.0f} {r['msgs_per_s']:>7.1f} {r['worst_1s_window']:>9.0f} "
              f"{r['deferred']:>8.0f} {r['kernel_cpu_percent']:>9.0f}% "
              f"{r['drained_MB_per_s']:>8.1f} MB/s")


if __name__ == "__main__":
    main()
