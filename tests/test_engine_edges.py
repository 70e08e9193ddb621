"""The engine's edges over a long session: interrupts during a replace, a failing
on_launched, one close at exit, and readiness checks that never stall the drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _procs import until

from ipyproctrack import CallableReady, Phase, Tracker

PY = sys.executable


_STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.mark.usefixtures("ctrl_c")
def test_an_interrupted_replace_stops_the_old_tree_and_starts_nothing(tracker: Tracker) -> None:
    old = tracker.start([PY, "-c", _STUBBORN], name="web")
    assert until(lambda: "up" in old.tail())
    main = threading.main_thread().ident
    assert main is not None
    # A real Ctrl-C, while the replace waits out the (long) grace of the SIGTERM-ignoring tree
    timer = threading.Timer(0.5, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            tracker.start([PY, "-c", "print('new')"], name="web", replace=True,
                          replace_grace=60)
    finally:
        timer.cancel()
    assert tracker.processes() == [old]  # the registry tells the truth
    assert old.wait(5) is not None and not old.has_live_tree()
    assert old.state.phase is Phase.STOPPED and old.returncode == -signal.SIGKILL
    assert "new" not in old.tail()


def test_a_failing_on_launched_tears_the_launch_down(tracker: Tracker) -> None:
    seen = []

    def broken(proc: object) -> None:
        seen.append(proc)
        raise RuntimeError("display failed")

    with pytest.raises(RuntimeError, match="display failed"):
        tracker.start("sleep 60", name="checked", ready=CallableReady(lambda: False),
                      on_launched=broken)
    checked = tracker.get("checked")
    assert seen == [checked]
    assert checked.wait(5) is not None and not checked.has_live_tree()
    assert checked.state.phase is Phase.FAILED  # never "starting" forever

    with pytest.raises(RuntimeError, match="display failed"):
        tracker.start("sleep 60", name="plain", on_launched=broken)
    plain = tracker.get("plain")
    assert plain.wait(5) is not None and plain.state.phase is Phase.STOPPED


def test_a_tracker_closed_by_its_owner_at_exit_is_closed_once(tmp_path: Path) -> None:
    code = (
        "import atexit\n"
        "from ipyproctrack._engine.tracker import Tracker\n"
        "real_close = Tracker.close\n"
        "def counted(self, **kw):\n"
        "    print('close', self.log_dir.name, flush=True)\n"
        "    return real_close(self, **kw)\n"
        "Tracker.close = counted\n"
        f"owned = Tracker(log_dir={str(tmp_path / 'a')!r}, close_at_exit=False)\n"
        f"plain = Tracker(log_dir={str(tmp_path / 'b')!r})\n"
        "owned.start('sleep 60', name='x'); plain.start('sleep 60', name='y')\n"
        "atexit.register(lambda: owned.close(grace=0.5))  # the owner's hook, as a notebook\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # each once: "owned" by its owner's hook only, "plain" by the engine's
    assert out.stdout.splitlines() == ["close a", "close b"]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_slow_readiness_check_never_stalls_the_drain(tracker: Tracker, kind: str) -> None:
    ticker = "import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.02)\n"
    flood = tracker.start([PY, "-c", ticker], name="ticker")
    assert until(lambda: flood.bytes_received > 0)
    window: list[float] = []
    seen: list[tuple[float, int]] = []

    def block() -> bool:
        window.append(time.monotonic())
        time.sleep(2)  # blocking, as careless user code does
        window.append(time.monotonic())
        return True

    async def block_async() -> bool:
        return block()

    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append((time.monotonic(), flood.bytes_received))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        check = CallableReady(block_async if kind == "async" else block)
        tracker.start("sleep 60", name="slow", ready=check, ready_timeout=20)
    finally:
        stop.set()
        sampler.join()
    start, end = window[0], window[1]
    during = [n for t, n in seen if start + 0.2 < t < end - 0.2]
    assert len(during) >= 5
    assert len(set(during)) >= 5, during  # the output kept coming in during the block
