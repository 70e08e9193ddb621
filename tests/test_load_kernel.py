"""Free ports and ``--wait-exit`` in a real kernel (issue 10)."""

from __future__ import annotations

import queue
import sys
import time
from typing import Any

import pytest
from _kernels import Kernel, Result, http_status
from _procs import free_port, is_alive, wait_dead

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX kernel interrupts"),
]

SERVER = f"exec {sys.executable} -m http.server $PORT --bind 127.0.0.1\n"


def test_two_port_auto_cells_get_two_ports_that_both_answer(shared: Kernel) -> None:
    for name in ("web1", "web2"):
        shared.ok(f"%%tracked {name} --port auto --wait-http http://127.0.0.1:{{port}}/\n"
                  + SERVER)
    ports = shared.value("[__import__('ipyproctrack').tracked(n).port for n in "
                         "('web1', 'web2')]")
    assert ports[0] != ports[1]
    assert [http_status(p) for p in ports] == [200, 200]
    # {port} in the command and in --wait-port, with a fixed --port (one that was free a
    # moment ago: a port next to an auto port may belong to anyone's connection)
    fixed = free_port()
    shared.ok(f"%%tracked web3 --port {fixed} --wait-port {{port}} --no-widget\n"
              f"exec {sys.executable} -m http.server {{port}} --bind 127.0.0.1\n")
    port3 = shared.value("__import__('ipyproctrack').tracked('web3').port")
    assert port3 == fixed
    assert http_status(port3) == 200


def test_port_placeholder_without_port_is_a_usage_error(shared: Kernel) -> None:
    result = shared.run("%%tracked web --wait-http http://127.0.0.1:{port}/\n" + SERVER)
    assert result.error is None  # a UsageError: one line on stderr, no traceback
    assert "UsageError: {port} in a --wait-* option needs --port auto" in result.stderr
    assert "web" not in shared.value("list(__import__('ipyproctrack').notebook_tracker()"
                                     "._procs)")


def test_wait_exit_shows_the_return_code_and_last_lines(shared: Kernel) -> None:
    result = shared.ok("%%tracked job --wait-exit --timeout 60\n"
                       "for i in 1 2 3; do echo line-$i; done; exit 3\n")
    out = result.stdout
    assert "job: exited 3 (return code 3)" in out, out
    assert "line-1\nline-2\nline-3" in out
    plain = shared.ok("%%tracked job2 --wait-exit --no-widget\necho fine\n").stdout
    assert "job2: exited 0 (return code 0)" in plain and "fine" in plain


def test_wait_exit_timeout_tears_the_tree_down(shared: Kernel) -> None:
    result = shared.run("%%tracked stuck --wait-exit --timeout 1\n"
                        "echo started; sleep 300 & sleep 300; wait\n")
    assert result.error is None
    error = result.stderr
    assert "started" in error  # the last lines
    assert "UsageError: 'stuck' did not exit within 1 s; its tree was torn down" in error
    assert "all gone" in error
    tree = shared.value("len(__import__('ipyproctrack').tracked('stuck').tree())")
    assert tree == 0


def test_interrupting_wait_exit_leaves_the_process_running(shared: Kernel) -> None:
    msg_id = shared.kc.execute("%%tracked sleeper --wait-exit\nexec sleep 300\n")
    early = _until_stdout(shared, msg_id, "waiting for it to exit", timeout=30)
    started = time.monotonic()
    shared.km.interrupt_kernel()
    result = shared.collect(msg_id, timeout=30)
    assert time.monotonic() - started < 10
    # one line (a KeyboardInterrupt subclass, so "Run all" still stops) that says it runs on
    assert "stopped waiting for sleeper; it is still running" in (result.error or ""), result
    assert "waiting for it to exit" in early.stdout
    pid, ctime, running = shared.value(
        "[(p := __import__('ipyproctrack').tracked('sleeper')).pid, p.create_time, "
        "p.is_running()]")
    assert running and is_alive(pid, ctime)
    assert "all gone" in shared.ok("%proctrack_cleanup sleeper").text()
    assert wait_dead([(pid, ctime)], 5) == []


def _until_stdout(kernel: Kernel, msg_id: str, text: str, timeout: float) -> Result:
    """Read iopub messages of ``msg_id`` until its stdout holds ``text``."""
    result = Result()
    deadline = time.monotonic() + timeout
    while text not in result.stdout:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{text!r} not printed; got {result.stdout!r}")
        try:
            msg: dict[str, Any] = kernel.kc.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            result.msgs.append(msg)
    return result
