"""Long sessions in a real kernel (issue 9): memory on re-runs, terminal text in the
widget, interrupted waits, honest widgets after a shutdown, a short soak."""

from __future__ import annotations

import contextlib
import queue
import sys
import time
from typing import Any

import psutil
import pytest
from _kernels import Kernel, Result, free_port, kernel_usage, soak_cycles

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX kernels and signals"),
]

NB = "__import__('ipyproctrack')._notebook"
SESSION = f"{NB}.current_session()"
MiB = 1 << 20


# ----------------------------------------------------------------------------- memory

#: Prints 1 MB (100-byte lines), then "done", then idles until it is replaced.
BIG = (
    "%%tracked big --wait-output done --timeout 30\n"
    f"yes {'x' * 99} | head -n 10000; echo done\n"  # no Python start-up per run
    "exec sleep 1000\n"
)


@pytest.mark.slow
def test_rerunning_a_cell_does_not_grow_the_kernel(shared: Kernel) -> None:
    """100 re-runs of a cell that prints 1 MB: each releases the widget before it (its
    comms closed, its process and tail dropped); the kernel's RSS stays flat."""
    widgets = "len(__import__('ipywidgets').widgets.widget._instances)"
    for _ in range(10):  # warm-up: imports, caches, the allocator's first arenas
        shared.ok(BIG)
    shared.ok("import gc; gc.collect()")
    _, _, rss0 = kernel_usage(shared)
    instances0 = shared.value(widgets)
    for _ in range(100):
        shared.ok(BIG)
    shared.ok("import gc; gc.collect()")
    _, _, rss1 = kernel_usage(shared)
    instances1 = shared.value(widgets)
    shown, tail = shared.value(f"[len({SESSION}.refresher.widgets), "
                               f"len({NB}.get_process('big').tail(100000))]")
    print(f"100 re-runs: kernel RSS {rss0 / MiB:.1f} -> {rss1 / MiB:.1f} MiB, "
          f"ipywidgets instances {instances0} -> {instances1}")
    assert shown == 1  # the refresher keeps the newest widget only
    assert instances1 == instances0  # every released widget closed all of its comms
    assert tail > 100_000  # the newest process keeps its tail (2000 lines)
    assert rss1 - rss0 <= 15 * MiB


# ----------------------------------------------------------------------------- terminal text

PROGRESS = r"""%%tracked prog --wait-output finished --timeout 30
python3 -c '
import sys, time
print("\x1b[1mbuild\x1b[0m starting")
for i in range(0, 101, 5):
    sys.stdout.write(f"\rprogress {i:3d}%"); sys.stdout.flush(); time.sleep(0.01)
print()
print("\x1b[31mred\x1b[0m \x1b[38;5;28mgreen\x1b[0m \x1b[?25lcursor\x1b[1A gone")
print("finished")
'
exec sleep 1000
"""


def test_widget_tail_shows_terminal_lines(shared: Kernel) -> None:
    shared.ok(PROGRESS)
    widget = f"{SESSION}.refresher.widgets[-1]"
    deadline = time.monotonic() + 20
    while "finished" not in (value := shared.value(f"{widget}.tail.value")):
        assert time.monotonic() < deadline, value
        time.sleep(0.1)
    assert value.count("progress") == 1 and "progress 100%" in value, value
    assert '<span style="color:#c23621">red</span>' in value
    assert '<span style="color:#008700">green</span>' in value
    assert '<span style="font-weight:bold">build</span>' in value
    assert "\x1b" not in value and "\r" not in value and "[0m" not in value
    tail = shared.value(f"{NB}.get_process('prog').tail()")
    assert tail == "build starting\nprogress 100%\nred green cursor gone\nfinished\n"
    log = shared.value(f"{NB}.get_process('prog').log_path.read_bytes().decode()")
    assert "\rprogress  50%\r" in log and "\x1b[31mred" in log  # the log keeps every byte


# ----------------------------------------------------------------------------- interrupts


def _wait_for_child(kernel: Kernel, argv: list[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    kernel_proc = psutil.Process(kernel.pid)
    while True:
        for child in kernel_proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.cmdline() == argv:
                    return
        assert time.monotonic() < deadline, f"no {argv} under the kernel"
        time.sleep(0.05)


def _output_lines(result: Result) -> list[str]:
    """Every line a person sees in the cell's output (streams and the error)."""
    lines = (result.stdout + result.stderr).splitlines()
    for m in result.of("error"):
        for entry in m["content"]["traceback"]:
            lines += entry.splitlines()
    return [ln for ln in lines if ln.strip()]


@pytest.mark.parametrize("widget", [True, False], ids=["widget", "text"])
def test_an_interrupted_wait_says_so_in_one_line(shared: Kernel, widget: bool) -> None:
    port = free_port()
    flag = "" if widget else " --no-widget"
    msg_id = shared.kc.execute(
        f"%%tracked web --wait-port {port} --timeout 60{flag}\nexec sleep 1000\n")
    _wait_for_child(shared, ["sleep", "1000"])  # (a cell would queue behind the wait)
    time.sleep(0.3)  # inside the wait now
    shared.km.interrupt_kernel()
    result = shared.collect(msg_id, timeout=30)
    lines = _output_lines(result)
    pid = shared.value(f"{NB}.get_process('web').pid")
    print("\n".join(lines))
    assert len(lines) <= 5, lines
    assert (f"stopped waiting for web; it is still running (pid {pid}); "
            "%proctrack_cleanup web stops it") in lines[-1]
    assert not any("threading" in ln or "Traceback" in ln for ln in lines), lines
    table = shared.ok("%proctrack").text()
    row = next(ln for ln in table.splitlines() if ln.startswith("web "))
    assert f" {pid} " in row and "running" in row, table
    assert "all gone" in shared.ok("%proctrack_cleanup web").text()


# ----------------------------------------------------------------------------- shutdown


def _drain_iopub(kernel: Kernel, until_gone: float) -> list[dict[str, Any]]:
    """Every iopub message until the kernel has exited and its channel is quiet."""
    msgs: list[dict[str, Any]] = []
    deadline = time.monotonic() + until_gone
    while time.monotonic() < deadline:
        try:
            msgs.append(kernel.kc.get_iopub_msg(timeout=0.5))
        except queue.Empty:
            if not kernel.km.is_alive():
                break
    return msgs


def test_widgets_say_stopped_after_a_shutdown_request(kernel: Kernel) -> None:
    kernel.ok("%%tracked web --wait-output up\necho up; exec sleep 1000\n")
    kernel.ok("%%tracked other\nexec sleep 1000\n")
    buttons = kernel.value(f"[[w.stop_button.model_id, w.restart_button.model_id] "
                           f"for w in {SESSION}.refresher.widgets]")
    deadline = time.monotonic() + 10  # both show "running" with a live Stop button
    while kernel.value(f"[w.stop_button.disabled for w in {SESSION}.refresher.widgets]"
                       ) != [False, False]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    kernel.kc.shutdown()  # a shutdown_request on the control channel, as a frontend sends
    msgs = _drain_iopub(kernel, 15)
    states = [m["content"]["data"]["state"] for m in msgs if m["msg_type"] == "comm_msg"
              and m["content"]["data"].get("method") == "update"]
    headers = [s["value"] for s in states if "stopped: kernel shut down" in s.get("value", "")]
    assert len(headers) == 2, states
    assert all("web" in h or "other" in h for h in headers)
    disabled = {m["content"]["comm_id"] for m in msgs if m["msg_type"] == "comm_msg"
                and m["content"]["data"].get("state", {}).get("disabled") is True}
    assert {b for pair in buttons for b in pair} <= disabled, (buttons, disabled)
    kernel.km.shutdown_kernel(now=True)  # (the process has exited: this only cleans up)


# ----------------------------------------------------------------------------- soak


def test_short_soak_leaves_fds_and_threads_flat(shared: Kernel) -> None:
    """30 start -> ready -> stop cycles: after a warm-up, no fd, thread or MiB leaks."""
    soak_cycles(shared, 5, 5)  # warm-up
    rows = soak_cycles(shared, 30, 10)
    for cycle, fd_count, thread_count, rss in rows:
        print(f"cycle {cycle:3d}: {fd_count} fds, {thread_count} threads, "
              f"RSS {rss / MiB:.1f} MiB")
    fds = [r[1] for r in rows]
    threads = [r[2] for r in rows]
    # A leak grows with the cycles (30 cycles: 30 fds); a few descriptors come and go at
    # any moment (a pidfd being waited on, a deleted log closing on its thread, a /proc
    # read of the sampler), so flat means "no growth", not "the same number each time".
    assert fds[-1] - fds[0] <= 3 and max(fds) - min(fds) <= 6, rows
    assert threads[-1] - threads[0] <= 2 and max(threads) - min(threads) <= 4, rows
    assert rows[-1][3] - rows[0][3] <= 10 * MiB, rows
