"""What the POSIX keeper costs per launch: time and memory, side by side in one run.

    .venv/bin/python benchmarks/keeper_cost.py [-n 30] [--many 400]

Launches ``sleep 5`` N times directly (``Popen(start_new_session=True)``, timed until Popen
returns, i.e. until the exec succeeded), N times through ``spawn_kept`` with a keeper of its
own (``python -I -S``) and N times through ``spawn_kept`` with a keeper cloned by the
zygote (Linux; ``_keeper/zygote.py``), each timed until the keeper's "started" event, in
turn so that all see the same machine load. Prints the medians, the time the keeper adds,
and the keepers' resident memory (VmRSS and RssAnon from /proc, Linux). Goals (issue 8): at
most 25 ms added, at most 10 MB RSS. Every process started here is killed by pid before
the next launch.

``--many N`` then starts N ``sleep`` commands through one Tracker and cleans them up with
one ``cleanup()``, with the zygote and then without it (``IPYPROCTRACK_ZYGOTE=0``): goal,
400 launches in under 10 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipyproctrack import Tracker
from ipyproctrack._keeper.client import Zygote, make_lifeline, spawn_kept

SLEEP = shutil.which("sleep") or "/bin/sleep"


def vm_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def direct_launch(env: dict[str, str], null: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [SLEEP, "5"],
        stdin=subprocess.DEVNULL,
        stdout=null,
        stderr=null,
        env=env,
        start_new_session=True,
    )
    took = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return took


def kept_launch(
    env: dict[str, str], null: int, lifeline: int, tag: str, session: str,
    zygote: Zygote | None = None,
) -> tuple[float, int | None, int | None]:
    t0 = time.perf_counter()
    kp = spawn_kept(
        [SLEEP, "5"],
        cwd=os.getcwd(),
        env=env,
        stdout=null,
        stderr=null,
        lifeline_fd=lifeline,
        grace=1.0,
        subreaper=True,
        tag=tag,
        session=session,
        zygote=zygote,
    )
    took = time.perf_counter() - t0
    time.sleep(0.05)  # let the keeper settle into its loop before reading its memory
    rss, anon = vm_kib(kp.keeper.pid, "VmRSS"), vm_kib(kp.keeper.pid, "RssAnon")
    os.kill(kp.pid, signal.SIGKILL)  # the command; the keeper then exits by itself
    kp.keeper.wait(timeout=10)
    os.close(kp.status_fd)
    return took, rss, anon


def many_launches(count: int) -> None:
    """``count`` launches through one Tracker, then one cleanup of them all: with the
    zygote, then with a keeper of its own per launch."""
    for label, zygote in (("zygote", "1"), ("own keepers", "0")):
        os.environ["IPYPROCTRACK_ZYGOTE"] = zygote
        print(f"{label}: ", end="")
        many_launches_once(count)
    del os.environ["IPYPROCTRACK_ZYGOTE"]


def many_launches_once(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ipyproctrack-many-") as tmp:
        tracker = Tracker(log_dir=tmp, grace=1.0)
        try:
            t0 = time.perf_counter()
            for i in range(count):
                tracker.start([SLEEP, "1000"], name=f"s{i}")
            launched = time.perf_counter() - t0
            t1 = time.perf_counter()
            report = tracker.cleanup()
            cleaned = time.perf_counter() - t1
        finally:
            tracker.close(grace=0.5)
    print(f"{count} launches through one Tracker: {launched:5.2f} s "
          f"({launched / count * 1000:4.1f} ms each; goal: 400 in under 10 s)")
    print(f"    one cleanup of all {count}: {cleaned:5.2f} s, ok={report.ok}, "
          f"{len(report.outcomes)} processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="launches of each kind (default 30)")
    parser.add_argument("--many", type=int, default=0, help="then N launches via a Tracker")
    args = parser.parse_args()
    n = args.n
    session = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, IPYPROCTRACK_SESSION=session)
    lifeline_r, lifeline_w = make_lifeline()
    null = os.open(os.devnull, os.O_RDWR)
    zygote = Zygote(lambda: lifeline_r)
    direct: list[float] = []
    kinds = ("own keeper", "cloned keeper")
    took: dict[str, list[float]] = {k: [] for k in kinds}
    rss: dict[str, list[int]] = {k: [] for k in kinds}
    anon: dict[str, list[int]] = {k: [] for k in kinds}
    try:
        for i in range(n + 1):  # round 0 warms the caches (and starts the zygote)
            tag = f"{session}-{i}"
            tagged = dict(env, IPYPROCTRACK_PROCESS=tag)
            d = direct_launch(tagged, null)
            runs = {kind: kept_launch(tagged, null, lifeline_r, tag, session,
                                      zygote if kind == "cloned keeper" else None)
                    for kind in kinds}
            if i == 0:
                continue
            direct.append(d)
            for kind, (k, r, a) in runs.items():
                took[kind].append(k)
                if r is not None:
                    rss[kind].append(r)
                if a is not None:
                    anon[kind].append(a)
    finally:
        zygote.close()
        os.close(null)
        os.close(lifeline_w)
        os.close(lifeline_r)
    md = statistics.median(direct) * 1000
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {n} launches of each kind")
    print(f"direct Popen(start_new_session=True):  median {md:6.1f} ms")
    for kind in kinds:
        mk = statistics.median(took[kind]) * 1000
        print(f"spawn_kept, {kind + ':':15}       median {mk:6.1f} ms until 'started'; "
              f"added {mk - md:6.1f} ms (goal <= 25 ms)")
        if rss[kind]:
            print(f"    VmRSS median {statistics.median(rss[kind]) / 1024:5.1f} MB, max "
                  f"{max(rss[kind]) / 1024:5.1f} MB (goal <= 10 MB); RssAnon (private) "
                  f"median {statistics.median(anon[kind]) / 1024:5.1f} MB")
    if args.many:
        many_launches(args.many)


if __name__ == "__main__":
    main()
