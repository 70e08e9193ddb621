"""With ``IPYPROCTRACK_KEEPER_DRAIN=1`` the keepers write the logs (Linux: ``_keeper/pump.py``,
``_engine/pumped.py``): every byte in order through exact rotation, the streams apart,
every byte for a subscriber, and the end noticed when the keeper dies. Without it, the
kernel-side drain."""

from __future__ import annotations

import hashlib
import os
import select
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest
from _procs import until

from ipyproctrack import OutputChunk, Tracker
from ipyproctrack._engine.logfiles import LogBudget, RotatingLog
from ipyproctrack._engine.output import OutputSink
from ipyproctrack._engine.pumped import PumpFeed
from ipyproctrack._keeper.pump import Pump

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux pumps")

PY = sys.executable
LINE = b"a line of 64 bytes from the pump test, some text to read back!!\n"


@pytest.fixture(autouse=True)
def _pumped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPYPROCTRACK_KEEPER_DRAIN", "1")


def test_launches_are_pumped_when_turned_on(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with Tracker(log_dir=tmp_path / "a") as t:
        proc = t.start("echo hi", name="a")
        assert proc._root.pump is not None and proc._root.out_fd == -1
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
        assert proc.tail() == "hi\n" and proc.log_path.read_text() == "hi\n"
    monkeypatch.delenv("IPYPROCTRACK_KEEPER_DRAIN")  # the default: the kernel drains
    with Tracker(log_dir=tmp_path / "b") as t:
        proc = t.start("echo hi", name="b")
        assert proc._root.pump is None and proc._root.out_fd >= 0
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
        assert proc.tail() == "hi\n" and proc.log_path.read_text() == "hi\n"


def test_a_subscriber_gets_every_byte_through_rotation(tmp_path: Path) -> None:
    # 16 MiB at about 25 MB/s: a subscriber more than 4 MiB behind would lose the oldest
    # (by design); at this pace it keeps up even on a loaded machine.
    size, block = (16 << 20) - 1000, 1 << 18
    stream_bytes = (LINE * (size // len(LINE) + 1))[:size]
    digest = hashlib.sha256()
    got = 0
    streams: set[str] = set()
    lock = threading.Lock()

    def on_output(chunks: list[OutputChunk]) -> None:
        nonlocal got
        with lock:
            for chunk in chunks:
                streams.add(chunk.stream)
                digest.update(chunk.data)
                got += len(chunk.data)

    go = tmp_path / "go"
    code = ("import os, sys, time\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
            f"data = ({LINE!r} * {size // len(LINE) + 1})[:{size}]\n"
            f"for i in range(0, {size}, {block}):\n"
            f"    sys.stdout.buffer.write(data[i:i + {block}]); sys.stdout.flush()\n"
            "    time.sleep(0.01)\n")
    with Tracker(log_dir=tmp_path / "logs", log_max_bytes=2 << 20, log_backups=2) as t:
        proc = t.start([PY, "-c", code], name="flood")
        proc.subscribe(on_output)
        go.touch()  # the flood starts once the subscriber is there
        assert proc.wait(60) == 0 and proc.wait_output_done(60)
        assert until(lambda: got == size, 30), got
        files = proc.log_files()
        # 80 ms per file: each next file was ready before the pump filled this one
        ready = proc._sink.log.ready_rotations
    assert ready >= 6, f"the pump waited for the kernel at {7 - ready} of 7 rotations"
    assert not list((tmp_path / "logs").glob("*.next"))  # no ready file is left behind
    assert streams == {"stdout"}  # no "dropped" notice: the subscriber kept up
    assert digest.hexdigest() == hashlib.sha256(stream_bytes).hexdigest()
    assert [f.stat().st_size for f in files] == [2 << 20, 2 << 20, (2 << 20) - 1000]  # exact
    kept = b"".join(f.read_bytes() for f in files)
    assert kept == stream_bytes[-len(kept):]


def test_streams_stay_apart(tmp_path: Path) -> None:
    code = ("import sys\n"
            "for i in range(300):\n"
            "    print(f'out {i}', flush=True)\n"
            "    print(f'err {i}', file=sys.stderr, flush=True)\n")
    with Tracker(log_dir=tmp_path) as t:
        proc = t.start([PY, "-c", code], name="both")
        assert proc.wait(20) == 0 and proc.wait_output_done(20)
        runs = proc.tail_chunks(1000, raw=True)
    # Within a stream, every byte in order (between the two pipes, the order in which the
    # pump found them; a line may come in two writes, with the other stream's in between).
    text = {"stdout": "", "stderr": ""}
    for stream, part in runs:
        text[stream] += part
    assert text["stdout"].splitlines() == [f"out {i}" for i in range(300)]
    assert text["stderr"].splitlines() == [f"err {i}" for i in range(300)]


def test_without_subscribers_only_the_tail_is_read_back(tmp_path: Path) -> None:
    """The point of the pump: a flood nobody subscribes to is written by the keeper and
    read here only by the tail's worth, about 20 times a second."""
    size = 256 << 20
    with Tracker(log_dir=tmp_path, tail_bytes=1 << 18) as t:
        proc = t.start(f"yes '{LINE.decode().rstrip()}' | head -c {size}", name="flood")
        assert proc.wait(60) == 0 and proc.wait_output_done(60)
        assert proc.bytes_received == size  # every byte counted
        assert proc.tail(1) == LINE.decode()  # the tail is the flood's end
        skipped = proc._sink.bytes_skipped
    assert skipped > size * 3 // 4, f"only {skipped} of {size} bytes were never read back"


def test_a_killed_keeper_ends_the_output(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path) as t:
        proc = t.start("echo started; exec sleep 300", name="sleeper")
        assert until(lambda: proc.tail() == "started\n")
        keeper = proc._root.popen
        os.kill(keeper.pid, signal.SIGKILL)  # ours: the keeper of this test's process
        assert proc.wait_output_done(10)  # the pump's socket closed: no hang
        t.cleanup(grace=0.5)


class _Piped:
    """One log fed by a real ``Pump`` on a thread, driven here step by step: the test
    writes into the command's pipe and runs the kernel's end (``PumpFeed``) itself."""

    def __init__(self, path: Path, budget: LogBudget) -> None:
        self.log = RotatingLog(path, max_bytes=20 << 20, backups=5, budget=budget)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        out_r, self.out_w = os.pipe()
        err_r, self.err_w = os.pipe()
        self.pump = Pump(out_r, err_r, theirs.detach())
        self.thread = threading.Thread(target=self.pump.run, name=f"pump {path.name}")
        self.thread.start()
        self.feed = PumpFeed(ours, OutputSink(self.log, tail_bytes=4096, tail_lines=10))
        self.written = 0

    def write(self, data: bytes) -> None:
        """Write ``data`` into the pipe (serving the pump meanwhile), then wait until the
        pump says every byte is in the files."""
        view = memoryview(data)
        while view:
            readable, writable, _ = select.select([self.feed.fileno], [self.out_w], [], 5)
            if writable:
                n = os.write(self.out_w, view[:65536])
                view, self.written = view[n:], self.written + n
            if readable:
                self.feed.on_readable()
        assert until(self._caught_up, timeout=10), (self.feed._end, self.written)

    def _caught_up(self) -> bool:
        select.select([self.feed.fileno], [], [], 0.05)
        self.feed.on_readable()
        return self.feed._end >= self.written

    def close(self) -> None:
        os.close(self.out_w)
        os.close(self.err_w)
        assert until(lambda: select.select([self.feed.fileno], [], [], 0.05)[0] != []
                     and self.feed.on_readable()[1], timeout=10)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.feed.close()
        self.log.close()


def test_four_pumped_logs_never_pass_the_session_budget(tmp_path: Path) -> None:
    """Deterministic where the four-floods test samples: after every 300 KiB step, with
    the pump caught up, the files on disk fit the budget. The room granted to the pumps
    (written later, without another charge) must count when the budget makes room: without
    ``RotatingLog.granted`` in ``LogBudget._reclaim`` the logs grew to 9.7 MiB of 8."""
    limit = 8 << 20
    budget = LogBudget(limit)
    logs = [_Piped(tmp_path / f"flood-{i}.log", budget) for i in range(4)]
    step = LINE * (300 * 1024 // len(LINE))
    worst = 0
    try:
        for _ in range(40):
            for piped in logs:
                piped.write(step)
                worst = max(worst, sum(p.stat().st_size for p in tmp_path.iterdir()))
    finally:
        for piped in logs:
            piped.close()
    assert sum(p.written for p in logs) == 160 * len(step)  # 47 MiB, 6x the budget
    assert worst <= limit, f"the logs took {worst} bytes, over the {limit}-byte budget"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".next")]
