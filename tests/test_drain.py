"""The drain thread (``_engine/drain.py``): real pipes, real processes."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from _procs import until

from ipyproctrack import TrackedProcess, Tracker
from ipyproctrack import _platform as plat
from ipyproctrack._engine import drain as drain_mod
from ipyproctrack._engine.drain import Drain
from ipyproctrack._engine.output import OutputSink, RotatingLog

PY = sys.executable
pytestmark = pytest.mark.skipif(not plat.ASYNC_PIPES, reason="Windows drains with threads")


@pytest.fixture
def tracker_factory(tmp_path: Path) -> Iterator[Callable[..., Tracker]]:
    made: list[Tracker] = []

    def make(**options: Any) -> Tracker:
        made.append(Tracker(log_dir=tmp_path / "logs", grace=1.0, **options))
        return made[-1]

    yield make
    for tracker in made:
        tracker.close(grace=0.5)


def _drain_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ipyproctrack-drain"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


@pytest.mark.parametrize("poller", ["epoll", "poll"])
def test_pipes_are_read_to_eof_then_closed(
    tmp_path: Path, poller: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if poller == "poll":  # what systems without epoll run
        monkeypatch.setattr(drain_mod, "_EPOLL", None)
    elif drain_mod._EPOLL is None:
        pytest.skip("no epoll here")
    drain = Drain()
    sinks: list[OutputSink] = []
    writers: list[tuple[int, int]] = []
    done: list[int] = []
    for i in range(3):
        r, w = os.pipe()
        sink = OutputSink(RotatingLog(tmp_path / f"{i}.log", max_bytes=0, backups=0),
                          tail_bytes=1 << 20, tail_lines=100)
        drain.add(r, "stdout", sink, partial(done.append, i))
        sinks.append(sink)
        writers.append((r, w))
    payload = [bytes([65 + i]) * (300_000 + i) + b"\n" for i in range(3)]
    for (_, w), data in zip(writers, payload, strict=True):
        view = memoryview(data)
        while view:  # the drain empties the pipe meanwhile
            view = view[os.write(w, view[: 1 << 16]) :]
    assert until(lambda: [s.bytes_received for s in sinks] == [len(p) for p in payload])
    assert done == []
    for _, w in writers:
        os.close(w)
    assert until(lambda: sorted(done) == [0, 1, 2])
    for r, _ in writers:  # closed by the drain once it saw EOF
        with pytest.raises(OSError):
            os.fstat(r)
    assert drain.stop()
    assert _drain_threads() == []
    for i, sink in enumerate(sinks):
        sink.close()
        assert (tmp_path / f"{i}.log").read_bytes() == payload[i]


def test_stop_closes_open_pipes_and_reports_them_done(tmp_path: Path) -> None:
    drain = Drain()
    r, w = os.pipe()
    done = threading.Event()
    sink = OutputSink(RotatingLog(tmp_path / "x.log", max_bytes=0, backups=0),
                      tail_bytes=1024, tail_lines=10)
    drain.add(r, "stdout", sink, done.set)
    os.write(w, b"before stop\n")
    assert until(lambda: sink.tail() == "before stop\n")
    assert drain.stop()
    assert done.is_set() and _drain_threads() == []
    with pytest.raises(OSError):
        os.fstat(r)
    os.close(w)
    sink.close()


def test_a_flood_does_not_starve_another_pipe(tracker_factory: Callable[..., Tracker]) -> None:
    tracker = tracker_factory()
    flood = tracker.start([PY, "-c", "import sys\nwhile True: sys.stdout.write('y' * 65536)"],
                          name="flood")
    assert until(lambda: flood.bytes_received > 8 << 20)
    quiet = tracker.start("echo hello; exec sleep 60", name="quiet")
    assert until(lambda: quiet.tail() == "hello\n")
    assert flood.is_running()  # it flooded all along
    tracker.cleanup(grace=0.5)


def test_the_display_hears_of_the_last_output(tracker_factory: Callable[..., Tracker]) -> None:
    # on_change is throttled while output flows; the last change must still be reported.
    seen: list[int] = []
    procs: list[TrackedProcess] = []

    def on_change() -> None:
        if procs:
            seen.append(procs[0].output_version)

    tracker = tracker_factory(on_change=on_change)
    proc = tracker.start([PY, "-c", "import sys, time\nfor i in range(200):\n"
                          "    print(i, flush=True); time.sleep(0.002)\n"
                          "time.sleep(60)"], name="burst")
    procs.append(proc)
    assert until(lambda: proc.tail(1) == "199\n")
    assert until(lambda: bool(seen) and seen[-1] == proc.output_version)
    if proc._root.pump is None:  # (a pump's read-backs are throttled like the wake-ups)
        assert len(seen) < proc.output_version  # throttled: fewer wake-ups than reads
    assert len(seen) < 100  # and far fewer than the command's 200 writes
    proc.stop(grace=0.5)


def test_trackers_leave_no_drain_thread_or_fd(tmp_path: Path) -> None:
    def one(n: int) -> None:
        with Tracker(log_dir=tmp_path / f"t{n}") as tracker:
            proc = tracker.start(f"echo run {n}; echo err {n} >&2", name="echo")
            assert proc.wait_output_done(10)
            assert proc.tail() in (f"run {n}\nerr {n}\n", f"err {n}\nrun {n}\n")
        assert _drain_threads() == []

    one(0)  # first use: imports, the keeper's lifeline, caches
    threads, fds = threading.active_count(), _open_fds()
    for n in range(1, 16):
        one(n)
    assert until(lambda: threading.active_count() <= threads)  # short-lived helpers end
    assert _open_fds() <= fds, os.listdir("/proc/self/fd")


def test_released_output_keeps_the_log_and_no_tail(tracker: Tracker) -> None:
    """release_output() drops the tail for good: what comes later goes to the log only,
    and the tail holds (and counts) nothing."""
    proc = tracker.start("echo before; sleep 2; echo after; exec sleep 1000", name="released")
    assert until(lambda: "before" in proc.tail())
    proc.release_output()
    assert proc.tail() == ""
    assert until(lambda: b"after" in proc.log_path.read_bytes())
    # counted once the engine has read it back (a keeper's pump wrote the log first)
    assert until(lambda: proc.bytes_received == len(b"before\nafter\n"))
    assert proc.tail() == "" and proc._sink._tail_size == 0
