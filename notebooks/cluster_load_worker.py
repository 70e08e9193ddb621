"""A small HTTP load generator (standard library only), one per ipyparallel engine.

    python cluster_load_worker.py URL [--seconds S] [--concurrency C] [--label TEXT]

Hammers URL from C threads for S seconds, prints a progress line every second and a final
``result`` line: requests, errors, requests per second, median and 99th-percentile latency.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import urllib.error
import urllib.request


def hammer(url: str, deadline: float, latencies: list[float], errors: list[str],
           lock: threading.Lock) -> None:
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
        except (OSError, urllib.error.URLError) as exc:
            with lock:
                errors.append(type(exc).__name__)
            continue
        with lock:
            latencies.append(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--label", default="worker")
    args = parser.parse_args()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + args.seconds
    threads = [threading.Thread(target=hammer, args=(args.url, deadline, latencies, errors, lock),
                                daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        with lock:
            print(f"{args.label}: {len(latencies)} requests, {len(errors)} errors", flush=True)
    took = time.monotonic() - started
    ms = sorted(1000 * x for x in latencies) or [0.0]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(f"{args.label} result: requests={len(latencies)} errors={len(errors)} "
          f"rps={len(latencies) / took:.0f} p50_ms={statistics.median(ms):.1f} "
          f"p99_ms={p99:.1f}", flush=True)


if __name__ == "__main__":
    main()
