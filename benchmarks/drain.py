"""Drain throughput: a flood of short lines through a Tracker vs a plain Popen read loop.

Usage::

    .venv/bin/python benchmarks/drain.py [--size BYTES] [--rounds N]

The flood is ``yes 'some short line of text' | head -c SIZE`` (default 1 GiB), run by bash.

- plain: ``subprocess.Popen(stdout=PIPE)``, a loop of ``os.read(fd, 64 KiB)`` writing each
  chunk to a file, until EOF and exit.
- tracker: ``Tracker(log_max_bytes=0).start(flood)`` (no rotation), timed from ``start``
  until the root has exited and every byte is both counted (``bytes_received``) and in the
  log file.

Each round runs both, one after the other; the printed ratio (tracker / plain, goal >= 0.8)
is that of the medians over the rounds. Both outputs are checked for size and deleted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import median

from ipyproctrack import Tracker

LINE = "some short line of text"
READ_SIZE = 1 << 16


def flood_command(size: int) -> str:
    return f"yes '{LINE}' | head -c {size}"


def run_plain(size: int, directory: Path) -> float:
    path = directory / "plain.out"
    started = time.perf_counter()
    with open(path, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", flood_command(size)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, READ_SIZE):
            out.write(chunk)
        proc.stdout.close()
        proc.wait()
    seconds = time.perf_counter() - started
    got = path.stat().st_size
    path.unlink()
    if got != size:
        raise RuntimeError(f"plain loop wrote {got} bytes, expected {size}")
    return seconds


def run_tracker(size: int, directory: Path) -> float:
    log_dir = directory / "logs"
    with Tracker(log_dir=log_dir, log_max_bytes=0) as tracker:
        started = time.perf_counter()
        proc = tracker.start(flood_command(size), name="flood")
        proc.wait(timeout=3600)
        deadline = time.monotonic() + 600
        while proc.bytes_received < size or _size(proc.log_path) < size:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"tracker: {proc.bytes_received} bytes received, "
                    f"{_size(proc.log_path)} logged, expected {size}"
                )
            time.sleep(0.001)
        seconds = time.perf_counter() - started
        received, logged = proc.bytes_received, _size(proc.log_path)
        log_path = proc.log_path
    log_path.unlink(missing_ok=True)
    if received != size or logged != size:
        raise RuntimeError(f"tracker: {received} bytes received, {logged} logged, expected {size}")
    return seconds


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1 << 30, help="bytes to flood (1 GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both (3)")
    args = parser.parse_args(argv)
    size: int = args.size
    mb = size / 1e6

    print(f"drain: {size} bytes ({size / 2**20:.0f} MiB) of {LINE!r} lines, {args.rounds} round(s)")
    plain: list[float] = []
    tracked: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ipyproctrack-drain-") as tmp:
        directory = Path(tmp)
        for n in range(1, args.rounds + 1):
            p = run_plain(size, directory)
            t = run_tracker(size, directory)
            plain.append(p)
            tracked.append(t)
            print(
                f"  round {n}: plain {mb / p:8.1f} MB/s ({p:.2f} s)   "
                f"tracker {mb / t:8.1f} MB/s ({t:.2f} s)   ratio {p / t:.2f}"
            )
    p, t = median(plain), median(tracked)
    print(f"median  plain   read loop: {mb / p:8.1f} MB/s")
    print(f"median  Tracker          : {mb / t:8.1f} MB/s")
    print(f"ratio   Tracker / plain  : {p / t:.2f}  (goal >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
