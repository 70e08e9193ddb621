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
import json
import os
import time
from typing import Any

import psutil
from jupyter_client.manager import KernelManager

FLOODER = """\
%%tracked flood{i}
python -c '
import sys, time
pad = "x" * 80
n = 0
while True:
    n += 1
    sys.stdout.write("".join(f"flood{i} {{n}}.{{k}} {{pad}}\\\\n" for k in range(400)))
    sys.stdout.flush()
    time.sleep(0.02)
'
"""


def run(kc: Any, code: str, timeout: float = 120) -> list[dict[str, Any]]:
    msg_id = kc.execute(code)
    msgs: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        msg["received"] = time.monotonic()
        msgs.append(msg)
        if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id):
            if any(m["msg_type"] == "error" for m in msgs):
                raise RuntimeError(f"{code!r} failed")
            return msgs


def measure(n: int, seconds: float) -> dict[str, float]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=dict(os.environ))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        run(kc, "%load_ext ipyproctrack\n%config ProcTrackConfig.grace = 1.0\n"
            "%config ProcTrackConfig.refresh_hz = 5")
        pid = int(next(m["content"]["text"] for m in run(kc, "import os; print(os.getpid())")
                       if m["msg_type"] == "stream"))
        for i in range(n):
            run(kc, FLOODER.format(i=i))
        kernel = psutil.Process(pid)
        cpu0 = kernel.cpu_times()
        msgs = run(kc, f"import time; time.sleep({seconds})")
        cpu1 = kernel.cpu_times()
        drained, deferred = json.loads(next(
            m["content"]["text"] for m in run(kc, (
                "import json, ipyproctrack._notebook as nb; print(json.dumps([sum("
                "p.bytes_received for p in nb.current_tracker().processes()), "
                "nb.current_session().refresher.budget.deferred]))"))
            if m["msg_type"] == "stream"))
        run(kc, "%proctrack_cleanup")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    times = sorted(m["received"] for m in msgs if m["msg_type"] == "comm_msg")
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
