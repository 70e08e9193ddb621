"""Loading the extension leaves the kernel's way of dying as it was (issue: SIGTERM during a
long C call). A Python SIGTERM handler would run only between bytecodes, so a kernel busy in
``sum(range(...))`` would live on until the call returned; we install none, and the keeper
tears the tracked trees down once the kernel is gone.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from _kernels import Kernel, remove_tree
from _procs import wait_dead, wait_record

pytestmark = pytest.mark.timeout(120)

#: Tens of seconds in one C call (no bytecode runs, so no Python signal handler could).
LONG_C_CALL = "sum(range(3 * 10**9))"


class BareKernel(Kernel):
    """A kernel without the extension: the baseline."""

    def setup(self) -> None:
        self.pid = int(self.ok("import os; print(os.getpid())").stdout)


def _start_busy(k: Kernel) -> None:
    """Start the long C call; return once the kernel has spent 0.5 s of CPU in it. (Not by
    iopub: the C call holds the GIL, so the kernel may not even send "busy".)"""
    process = psutil.Process(k.pid)
    before = sum(process.cpu_times()[:2])
    k.kc.execute(LONG_C_CALL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(process.cpu_times()[:2]) - before >= 0.5:
            return
        time.sleep(0.05)
    raise AssertionError("the kernel never got busy with the C call")


def _wait_exit(k: Kernel, timeout: float) -> tuple[int | None, float]:
    """(returncode, seconds) of the kernel process, polling up to ``timeout``."""
    process = k.km.provisioner.process  # type: ignore[union-attr]
    t0 = time.monotonic()
    try:
        rc = process.wait(timeout)
    except Exception:  # subprocess.TimeoutExpired
        rc = None
    return rc, time.monotonic() - t0


def test_sigterm_during_a_c_call_kills_the_kernel_at_once(
    kernel: Kernel, tmp_path: Path
) -> None:
    kernel.ok("%%tracked sleepers --no-widget\nsleep 1000 & sleep 1000 & exec sleep 1000\n")
    log_dir = Path(kernel.value("str(__import__('ipyproctrack').notebook_tracker().log_dir)"))
    # the launch returns once sleep is exec'd; the two background sleeps may come later
    members = ("[(p.pid, p.create_time) for p in "
               "__import__('ipyproctrack').tracked('sleepers').tree()]")
    deadline = time.monotonic() + 10
    while len(tree := kernel.value(members)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(tree) == 3, tree
    _start_busy(kernel)
    os.kill(kernel.pid, signal.SIGTERM)
    rc, took = _wait_exit(kernel, 10)
    print(f"the busy kernel died {took:.2f} s after SIGTERM (rc {rc})")
    # Without the extension it dies at once; a Python handler would keep it alive for the
    # tens of seconds the C call runs.
    assert rc == -signal.SIGTERM, rc
    assert took < 3.0, took
    t0 = time.monotonic()
    left = wait_dead([(pid, ctime) for pid, ctime in tree], 3.0 + 5.0)
    gone = time.monotonic() - t0
    print(f"its tracked tree was gone {gone:.2f} s later")
    assert left == [], left
    # The keeper, not the kernel, tore it down, and its record says so.
    record = wait_record(log_dir / "ipyproctrack-kernel-end.txt")
    assert "all gone" in record, f"no keeper record: {record!r}"
    assert re.match(r"kernel gone \((lifeline|kernel)\): the keeper of sleepers ", record), record
    assert "sleepers: 3 process(es), all gone" in record, record


@pytest.mark.perf
def test_sigterm_kills_a_busy_kernel_within_1_s_and_its_tree_within_3_s(
    kernel: Kernel,
) -> None:
    kernel.ok("%%tracked sleeper --no-widget\nexec sleep 1000\n")
    tree = kernel.value(
        "[(p.pid, p.create_time) for p in __import__('ipyproctrack').tracked('sleeper').tree()]"
    )
    _start_busy(kernel)
    os.kill(kernel.pid, signal.SIGTERM)
    rc, took = _wait_exit(kernel, 10)
    assert rc == -signal.SIGTERM and took < 1.0, (rc, took)
    t0 = time.monotonic()
    assert wait_dead([(pid, ctime) for pid, ctime in tree], 5.0) == []
    assert time.monotonic() - t0 < 3.0


@pytest.mark.perf
def test_shutting_down_a_busy_kernel_takes_no_longer_with_the_extension() -> None:
    """Side by side, in one run: ``km.shutdown_kernel()`` of a kernel busy in a C call."""
    timings: dict[str, float] = {}
    for label, factory in (("bare", BareKernel), ("extension", Kernel)):
        k = factory()
        try:
            if label == "extension":
                k.ok("%%tracked sleeper --no-widget\nexec sleep 1000\n")
            _start_busy(k)
            t0 = time.monotonic()
            k.km.shutdown_kernel(now=False)
            timings[label] = time.monotonic() - t0
        finally:
            k.kc.stop_channels()
            if k.km.has_kernel:
                k.km.shutdown_kernel(now=True)
            remove_tree(k.tmpdir)
    print("shutdown_kernel() of a busy kernel: " +
          ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    assert timings["extension"] <= timings["bare"] + 0.5, timings
