"""Drain at the limit: a flood of short lines through a default Tracker vs a plain read loop.

Usage::

    .venv/bin/python benchmarks/drain.py [--size BYTES] [--rounds N] [--hash] [--no-pump]

The flood is ``yes LINE | head -c SIZE`` (64-byte lines, default 1 GiB), run by bash.

- plain: ``subprocess.Popen(stdout=PIPE)``, a loop of ``os.read(fd, 64 KiB)`` writing each
  chunk to a file, until EOF and exit.
- tracker: ``Tracker(log_dir=...)`` with every other setting at its default (so the log
  rotates at 20 MiB and keeps 5 backups, under the 512 MiB session budget, as users get
  it), timed from ``start`` until the root has exited and its output is done (every byte
  counted, logged and in the tail). The kernel's drain thread reads the pipes.
- pump (Linux; ``--no-pump`` leaves it out): the same Tracker with the keeper writing the
  log (``IPYPROCTRACK_KEEPER_DRAIN=1``), the kernel reading back only the tail.

Rounds run in turns (the order reversed every other round: ABBA with two sides), with
``os.sync()`` before every run so that one run's dirty pages do not slow the next. Per run:

- throughput: SIZE / wall time from the launch call; "after it" (drain only): SIZE / the time
  after the launch call returned (the command runs by then: Popen and Tracker.start return
  once it has been exec'd), so the keeper's start-up (issue 4, benchmarks/keeper_cost.py)
  is shown apart;
- reader CPU: CPU of this process (every thread: ``time.process_time``) during the run, and
  how much of it was user time (``os.times``: Python's share, the rest is system calls). The
  flood's own processes (bash, yes, head) are children and never counted;
- helper CPU: the keeper's own user+system time (not its children's), read from
  /proc/<pid>/stat once it has exited, just before the Tracker reaps it (``waitid`` with
  WNOWAIT in its ``Popen.poll``). The plain loop has no helper.

Prints the per-round figures, the medians, and the ratios tracker / plain against the goals
of issue 16. Every output is checked: its size (the tracker's kept log files: the newest
bytes of the stream), and with ``--hash`` its sha256 against the expected stream.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _bench import median

from ipyproctrack import Tracker
from ipyproctrack._keeper.client import KeeperProcess

LINE = "a line of 64 bytes from the drain benchmark, some text to read!"  # + "\n" = 64 bytes
READ_SIZE = 1 << 16
_TICK = os.sysconf("SC_CLK_TCK")
GOAL_SPEED, GOAL_READER_CPU, GOAL_TOTAL_CPU = 0.95, 1.1, 1.3


@dataclass
class Run:
    seconds: float  # from the launch call until the output is done
    launch: float  # of which the launch call (Popen / Tracker.start) took this long
    reader_cpu: float
    helper_cpu: float
    reader_user: float = 0.0  # of reader_cpu, in user space (Python): the rest is the kernel's

    @property
    def drain_seconds(self) -> float:
        return self.seconds - self.launch

    @property
    def total_cpu(self) -> float:
        return self.reader_cpu + self.helper_cpu


def flood_command(size: int) -> str:
    return f"yes '{LINE}' | head -c {size}"


def expected_sha256(start: int, stop: int) -> str:
    """sha256 of bytes [start, stop) of the flood."""
    line = (LINE + "\n").encode()
    block = line * (1 << 14)
    digest = hashlib.sha256()
    pos = start
    while pos < stop:
        skip = pos % len(line)
        part = block[skip : skip + min(stop - pos, len(block) - len(line))]
        digest.update(part)
        pos += len(part)
    return digest.hexdigest()


def file_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def run_plain(size: int, directory: Path, *, check_hash: bool) -> Run:
    path = directory / "plain.out"
    cpu, user, started = time.process_time(), os.times().user, time.perf_counter()
    with open(path, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", flood_command(size)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        launched = time.perf_counter()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, READ_SIZE):
            out.write(chunk)
        proc.stdout.close()
        proc.wait()
    end = time.perf_counter()
    run = Run(end - started, launched - started, time.process_time() - cpu, 0.0,
              os.times().user - user)
    got = path.stat().st_size
    if got != size:
        raise RuntimeError(f"plain loop wrote {got} bytes, expected {size}")
    if check_hash and file_sha256([path]) != expected_sha256(0, size):
        raise RuntimeError("plain loop: the output's sha256 differs from the flood's")
    path.unlink()
    return run


class HelperClock:
    """The keeper's own CPU seconds, read when it has exited and just before it is reaped:
    the keeper's ``Popen.poll`` (the Tracker's only way to reap it) reads them first."""

    def __init__(self, popen: KeeperProcess) -> None:
        self.pid = popen.pid
        self.seconds = 0.0
        self.caught_exit = False
        reap = popen.poll

        def poll() -> int | None:
            if not self.caught_exit and self._exited():
                self.seconds = max(self.seconds, self._read() or 0.0)
                self.caught_exit = True
            return reap()

        setattr(popen, "poll", poll)  # noqa: B010 - an instance attribute, for this run only

    def _exited(self) -> bool:
        try:  # WNOWAIT: the zombie stays for Popen to reap as usual
            found = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return found is not None

    def _read(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (not children's)

    def sample(self) -> None:
        if (now := self._read()) is not None:
            self.seconds = max(self.seconds, now)


def run_pump(size: int, directory: Path, *, check_hash: bool) -> Run:
    os.environ["IPYPROCTRACK_KEEPER_DRAIN"] = "1"  # read at each launch
    try:
        return run_tracker(size, directory, check_hash=check_hash)
    finally:
        os.environ["IPYPROCTRACK_KEEPER_DRAIN"] = "0"


def run_tracker(size: int, directory: Path, *, check_hash: bool) -> Run:
    log_dir = directory / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    with Tracker(log_dir=log_dir) as tracker:
        cpu, user, started = time.process_time(), os.times().user, time.perf_counter()
        proc = tracker.start(flood_command(size), name="flood")
        launched = time.perf_counter()
        clock = HelperClock(proc._root.popen) if proc._helpers else None
        while not proc.wait_output_done(0.25):  # a few /proc reads a second, no busy wait
            if clock is not None:
                clock.sample()
        rc = proc.wait(timeout=60)
        seconds, reader = time.perf_counter() - started, time.process_time() - cpu
        user = os.times().user - user
        received, files = proc.bytes_received, proc.log_files()
        log_max, backups = tracker.log_max_bytes, tracker.log_backups
    if rc != 0 or received != size:
        raise RuntimeError(f"tracker: exit {rc}, {received} bytes received, expected {size}")
    kept = sum(f.stat().st_size for f in files)
    want = kept_bytes(size, log_max, backups)
    if kept != want:
        raise RuntimeError(f"tracker: {kept} bytes in {len(files)} log files, expected {want}")
    if check_hash and file_sha256(files) != expected_sha256(size - kept, size):
        raise RuntimeError("tracker: the kept logs' sha256 differs from the flood's end")
    shutil.rmtree(log_dir, ignore_errors=True)
    if clock is not None and not clock.caught_exit:
        print("  (the keeper's final CPU read was missed: its last sample is used)")
    return Run(seconds, launched - started, reader, clock.seconds if clock else 0.0, user)


def kept_bytes(size: int, max_bytes: int, backups: int) -> int:
    """What a RotatingLog keeps of ``size`` bytes: full backups and the current file."""
    if max_bytes <= 0 or size <= max_bytes:
        return size
    rotations = -(-size // max_bytes) - 1
    current = size - rotations * max_bytes
    return current + (rotations if backups < 0 else min(rotations, backups)) * max_bytes


def report(side: str, p: dict[str, float], t: dict[str, float], plain: list[Run],
           tracked: list[Run], mb: float) -> None:
    """Ratios of ``side`` to the plain loop, against the goals."""
    ratios = [
        ("throughput", t["speed"] / p["speed"], f">= {GOAL_SPEED}", t["speed"] / p["speed"]
         >= GOAL_SPEED),
        ("drain only", t["drain"] / p["drain"], f">= {GOAL_SPEED}", t["drain"] / p["drain"]
         >= GOAL_SPEED),
        ("reader CPU", t["reader"] / p["reader"], f"<= {GOAL_READER_CPU}",
         t["reader"] / p["reader"] <= GOAL_READER_CPU),
        ("total CPU", t["total"] / p["total"], f"<= {GOAL_TOTAL_CPU}",
         t["total"] / p["total"] <= GOAL_TOTAL_CPU),
    ]
    for name, ratio, goal, ok in ratios:
        print(f"ratio {side}/plain {name:10}: {ratio:.2f}  (goal {goal}: "
              f"{'met' if ok else 'MISSED'})")
    # How much to trust the medians: on a VM the plain loop's speed swings by 2x from run
    # to run (its system time per GiB with it), the tracker's much less.
    rounds = [mb / t.seconds / (mb / p.seconds) for p, t in zip(plain, tracked, strict=True)]
    best = max(mb / r.seconds for r in tracked) / max(mb / r.seconds for r in plain)
    print("  per-round throughput ratios: " + " ".join(f"{r:.2f}" for r in rounds)
          + f"; their median {median(rounds):.2f}; best {side} run / best plain run: "
          f"{best:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1 << 30, help="bytes to flood (1 GiB)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, ABBA order (6)")
    parser.add_argument("--hash", action="store_true", help="also check every output's sha256")
    parser.add_argument("--dir", type=Path, default=None, help="where outputs go (a temp dir)")
    parser.add_argument("--no-pump", action="store_true",
                        help="leave out the keeper's pump (IPYPROCTRACK_KEEPER_DRAIN=1)")
    args = parser.parse_args(argv)
    size: int = args.size
    mb, gib = size / 1e6, size / 2**30
    runners = {"plain": run_plain, "tracker": run_tracker}
    if sys.platform.startswith("linux") and not args.no_pump:
        runners["pump"] = run_pump
    os.environ["IPYPROCTRACK_KEEPER_DRAIN"] = "0"  # the tracker side: the kernel's drain
    results: dict[str, list[Run]] = {side: [] for side in runners}

    print(f"drain: {size} bytes ({gib:.2f} GiB) of 64-byte lines, {args.rounds} round(s), "
          f"in turns, os.sync() between runs; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="ipyproctrack-drain-", dir=args.dir) as tmp:
        for warm in runners.values():  # imports and first-use costs stay out of the figures
            warm(8 << 20, Path(tmp), check_hash=False)
        for n in range(args.rounds):
            order = list(runners) if n % 2 == 0 else list(runners)[::-1]
            line = []
            for side in order:
                os.sync()
                run = runners[side](size, Path(tmp), check_hash=args.hash)
                results[side].append(run)
                line.append(f"{side} {mb / run.seconds:4.0f} ({mb / run.drain_seconds:4.0f}) MB/s"
                            f" cpu {run.reader_cpu / gib:.2f}+{run.helper_cpu / gib:.2f} s/GiB")
            print(f"  round {n + 1}: " + "   ".join(line))

    med: dict[str, dict[str, float]] = {}
    for side, runs in results.items():
        med[side] = {
            "speed": median(mb / r.seconds for r in runs),
            "drain": median(mb / r.drain_seconds for r in runs),
            "launch": median(r.launch * 1000 for r in runs),
            "reader": median(r.reader_cpu / gib for r in runs),
            "user": median(r.reader_user / gib for r in runs),
            "helper": median(r.helper_cpu / gib for r in runs),
            "total": median(r.total_cpu / gib for r in runs),
        }
        speeds = [mb / r.seconds for r in runs]
        m = med[side]
        print(f"median {side:8}: {m['speed']:5.0f} MB/s (range {min(speeds):.0f}-{max(speeds):.0f};"
              f" launch {m['launch']:.0f} ms, after it {m['drain']:.0f} MB/s)   CPU s/GiB: reader "
              f"{m['reader']:.3f} (user {m['user']:.3f})  helpers {m['helper']:.3f}  "
              f"total {m['total']:.3f}")
    for side in [s for s in runners if s != "plain"]:
        report(side, med["plain"], med[side], results["plain"], results[side], mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
