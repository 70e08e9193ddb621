"""Issue 5 in real ipykernels: a ``%%tracked --wait-*`` cell blocks until the server is ready.

Every scenario runs in one module-scoped kernel (started once, extension loaded) and cleans
up after itself (``%proctrack_cleanup`` after each test, helper processes killed by pid).
The leak fixture in ``conftest.py`` checks that no tagged process outlives a test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from typing import Any

import psutil
import pytest
from _kernels import Kernel, Result, free_port
from _procs import closed_port, create_time, tagged_processes

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX shells and /proc-style ports"),
]

NB = "__import__('ipyproctrack')._notebook"
_DATA_MSGS = ("display_data", "update_display_data", "execute_result", "comm_open", "comm_msg")


# ----------------------------------------------------------------------------- helpers


def _all_text(result: Result) -> str:
    """Every piece of text the cell sent: streams, errors, display data and their updates,
    widget state (the header HTML carries the badge)."""
    parts: list[str] = []
    for m in result.msgs:
        c = m["content"]
        kind = m["msg_type"]
        if kind == "stream":
            parts.append(c["text"])
        elif kind == "error":
            parts.append(f"{c['ename']}: {c['evalue']}")
            parts.extend(c.get("traceback", []))
        elif kind in _DATA_MSGS:
            parts.append(json.dumps(c.get("data", {})))
    return "\n".join(parts)


def _failure(result: Result) -> str:
    """The failure a cell reported: IPython shows a UsageError on stderr (no ``error`` msg),
    any other exception as an ``error`` message with a traceback."""
    if result.error is not None:
        return result.error + "\n" + result.stderr
    return result.stderr


def _assert_clean_failure(result: Result) -> str:
    """The cell failed with a message, not with an internal traceback. Returns the text."""
    text = _failure(result)
    assert text.strip(), f"the cell did not fail: {_all_text(result)[:2000]}"
    tracebacks = [t for m in result.of("error") for t in m["content"].get("traceback", [])]
    joined = "\n".join(tracebacks) + "\n" + text
    assert "Traceback (most recent call last)" not in joined, joined
    assert "File \"" not in joined and "site-packages" not in joined, joined
    return text


def _new_tagged(before: set[tuple[int, float]], timeout: float = 3.0) -> dict[int, Any]:
    """Tagged processes not in ``before``, after giving them ``timeout`` s to go away."""
    deadline = time.monotonic() + timeout
    while True:
        new = {pid: info for pid, info in tagged_processes().items()
               if (pid, info[0]) not in before}
        if not new or time.monotonic() >= deadline:
            return new
        time.sleep(0.05)


def _tagged_now() -> set[tuple[int, float]]:
    return {(pid, info[0]) for pid, info in tagged_processes().items()}


def _names(kernel: Kernel) -> list[str]:
    names: list[str] = kernel.value(f"[p.name for p in {NB}.current_tracker().processes()]")
    return names


def _start_port_holder(port: int) -> subprocess.Popen[str]:
    """A plain (untracked) process listening on 127.0.0.1:port."""
    code = textwrap.dedent(
        f"""\
        import socket, sys, time
        s = socket.socket()
        s.bind(("127.0.0.1", {port}))
        s.listen()
        print("listening", flush=True)
        time.sleep(120)
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, "port-holder-for-test"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "listening"
    return holder


# ----------------------------------------------------------------------------- 1. next cell


def test_server_ready_in_the_very_next_cell(shared: Kernel) -> None:
    port = free_port()
    server = (
        'python3 -c "import time, http.server; time.sleep(1.5); '
        f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), "
        'http.server.SimpleHTTPRequestHandler).serve_forever()"'
    )
    started = time.monotonic()
    result = shared.ok(f"%%tracked web --wait-http http://127.0.0.1:{port}/\n{server}\n")
    took = time.monotonic() - started
    # the very next cell, no retry
    fetched = shared.ok(
        "import urllib.request\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5).status)"
    )
    status = fetched.stdout.strip()
    print(f"--wait-http cell took {took:.2f} s; next cell got HTTP {status}")
    assert status == "200"
    assert took >= 1.4, took  # it really waited for the server's 1.5 s sleep
    # the widget's text form: "starting…" while it waits, then "ready in 1.52 s"
    shown = [m["content"]["data"].get("text/plain", "")
             for m in result.of("display_data") + result.of("update_display_data")]
    assert shown and shown[0] == "web: starting…", shown
    assert re.fullmatch(r"web: pid \d+ running · ready in \d+\.\d\d s", shown[-1]), shown
    # and its header badge: the refresher sends it when it wakes, which may be after the
    # cell ended, so it may arrive while any of the next cells runs
    later = shared.ok("import time; time.sleep(1)")
    headers = [json.dumps(m["content"].get("data", {}))
               for r in (result, fetched, later) for m in r.of("comm_msg")]
    assert any(re.search(r"ready in \d+\.\d\d s", h) for h in headers), headers[-3:]
    seconds = shared.value(f"{NB}.get_process('web').ready_seconds")
    assert shared.value(f"{NB}.get_process('web').state.phase.value") == "ready"
    assert 1.4 <= seconds < took + 0.1, seconds


# ----------------------------------------------------------------------------- 2. output


def test_wait_output_matches_a_banner_split_across_two_writes(shared: Kernel) -> None:
    cell = textwrap.dedent(
        """\
        %%tracked banner --wait-output 'Listening on port \\d+' --timeout 15
        python3 -c '
        import sys, time
        sys.stdout.write("Listening on"); sys.stdout.flush()
        time.sleep(0.3)
        sys.stdout.write(" port 8123\\n"); sys.stdout.flush()
        time.sleep(60)
        '
        """
    )
    started = time.monotonic()
    result = shared.ok(cell)
    took = time.monotonic() - started
    print(f"--wait-output on a split banner: cell returned in {took:.2f} s")
    assert took < 10, took
    assert shared.value(f"{NB}.get_process('banner').state.phase.value") == "ready"
    assert shared.value(f"{NB}.get_process('banner').ready_seconds") >= 0.25
    assert re.search(r"ready in \d+\.\d\d s", _all_text(result))
    assert "Listening on port 8123" in shared.value(f"{NB}.get_process('banner').tail(5)")


def test_widget_is_live_during_the_wait(shared: Kernel) -> None:
    """While --wait-output waits, the widget already shows the pid and the lines printed
    before the banner: comm messages carry them before the cell returns."""
    cell = textwrap.dedent(
        """\
        %%tracked chatty --wait-output 'BANNER up' --timeout 20
        python3 -u -c '
        import time
        for i in range(25):
            print("early line", i); time.sleep(0.1)
        print("BANNER up"); time.sleep(60)
        '
        """
    )
    result = shared.ok(cell)
    returned = next(m["received"] for m in result.of("update_display_data"))
    early = [m for m in result.of("comm_msg") if m["received"] < returned]
    texts = [json.dumps(m["content"].get("data", {}), ensure_ascii=False) for m in early]
    pid = shared.value(f"{NB}.get_process('chatty').pid")
    print(f"{len(early)} comm messages before the cell returned")
    assert any("early line" in t for t in texts), texts  # live output while waiting
    assert any(f"pid {pid}" in t and "starting…" in t for t in texts), texts
    shown = [m["content"]["data"].get("text/plain", "") for m in result.of("update_display_data")]
    assert re.fullmatch(r"chatty: pid \d+ running · ready in \d+\.\d\d s", shown[-1]), shown


# ----------------------------------------------------------------------------- 3. timeout


def test_timeout_tears_the_tree_down_with_the_last_lines(shared: Kernel) -> None:
    with closed_port() as port:
        _timeout_tears_down(shared, port)


def _timeout_tears_down(shared: Kernel, port: int) -> None:
    before = _tagged_now()
    cell = textwrap.dedent(
        f"""\
        %%tracked slow --wait-port {port} --timeout 1
        sleep 60 &
        echo "child $!"
        echo "shell $$"
        echo "still booting, please wait"
        wait
        """
    )
    started = time.monotonic()
    result = shared.run(cell)
    took = time.monotonic() - started
    text = _assert_clean_failure(result)
    print(f"timeout cell failed after {took:.2f} s with:\n{text}")
    assert took < 10, took
    assert "not ready after 1 s" in text, text
    assert f"port 127.0.0.1:{port}" in text, text
    assert "still booting, please wait" in text, text  # the last output lines
    pids = [int(p) for p in re.findall(r"(?:child|shell) (\d+)", text)]
    assert len(pids) == 2, text
    # the whole tree is gone, and so is every tagged process the cell made
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
    assert _new_tagged(before) == {}
    assert shared.value(f"{NB}.get_process('slow').state.phase.value") == "failed"
    assert shared.value(f"{NB}.get_process('slow').tree()") == []


# ----------------------------------------------------------------------------- 4. early exit


def test_early_exit_names_the_return_code_and_output(shared: Kernel) -> None:
    with closed_port() as port:
        _early_exit(shared, port)


def _early_exit(shared: Kernel, port: int) -> None:
    before = _tagged_now()
    cell = f"%%tracked early --wait-port {port} --timeout 20\necho boom\nexit 3\n"
    started = time.monotonic()
    result = shared.run(cell)
    took = time.monotonic() - started
    text = _assert_clean_failure(result)
    print(f"early-exit cell failed after {took:.2f} s with:\n{text}")
    assert took < 10, took  # it did not wait for the 20 s timeout
    assert "exited with code 3" in text, text
    assert "boom" in text, text
    assert _new_tagged(before) == {}
    assert shared.value(f"{NB}.get_process('early').returncode") == 3


# ----------------------------------------------------------------------------- 5. taken port


def test_taken_port_names_the_foreign_holder_and_starts_nothing(shared: Kernel) -> None:
    port = free_port()
    holder = _start_port_holder(port)
    try:
        before = _tagged_now()
        names_before = _names(shared)
        result = shared.run(f"%%tracked x --wait-port {port}\necho started-anyway; sleep 60\n")
        text = _assert_clean_failure(result)
        print(f"taken port: {text}")
        assert f"port {port}" in text and "already taken" in text, text
        assert f"pid {holder.pid}" in text, text
        assert "port-holder-for-test" in text, text  # its command line
        assert "started-anyway" not in _all_text(result)
        assert _names(shared) == names_before  # nothing was started
        assert "x" not in names_before
        assert _new_tagged(before, timeout=0.5) == {}
    finally:
        holder.kill()
        holder.wait(5)


def test_taken_port_names_our_own_tracked_holder(shared: Kernel) -> None:
    port = free_port()
    shared.ok(
        f"%%tracked holder --wait-port {port} --timeout 20\n"
        f"python3 -m http.server {port} --bind 127.0.0.1\n"
    )
    names_before = _names(shared)
    result = shared.run(f"%%tracked y --wait-port {port}\necho started-anyway; sleep 60\n")
    text = _assert_clean_failure(result)
    print(f"taken by our own: {text}")
    assert "already taken" in text, text
    assert "'holder'" in text, text
    assert "started-anyway" not in _all_text(result)
    assert _names(shared) == names_before
    assert shared.value(f"{NB}.get_process('holder').returncode") is None  # left alone


# ----------------------------------------------------------------------------- 6. no busy wait


@pytest.mark.perf
def test_waiting_costs_next_to_no_cpu(shared: Kernel) -> None:
    port = free_port()
    kernel = psutil.Process(shared.pid)
    # Warm up first: the first tracked cell of a kernel imports the widget and engine
    # modules, a one-time cost that is not the cost of waiting.
    shared.run(f"%%tracked warmup --no-widget --wait-port {port} --timeout 0.5\nsleep 60\n")
    shared.ok("%proctrack_cleanup")
    cpu0 = kernel.cpu_times()
    started = time.monotonic()
    result = shared.run(f"%%tracked idle --wait-port {port} --timeout 10\nsleep 60\n")
    took = time.monotonic() - started
    cpu1 = kernel.cpu_times()
    used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    print(f"waiting {took:.2f} s for a port that never opens cost the kernel {used:.3f} s CPU "
          f"({100 * used / took:.2f}% of one core)")
    assert "not ready after 10 s" in _failure(result), _failure(result)
    assert took >= 9.5, took
    assert used < 0.5, f"{used:.3f} s CPU in {took:.1f} s"


# ----------------------------------------------------------------------------- 7. ports


def test_listening_ports_of_a_grandchild_show_in_proctrack(shared: Kernel) -> None:
    port = free_port()
    shared.ok(
        f"%%tracked deep --wait-port {port} --timeout 20\n"
        f'bash -c "python3 -m http.server {port} --bind 127.0.0.1 & wait"\n'
        "echo outer shell done\n"  # keeps the outer shell from exec'ing the inner one
    )
    tree = shared.value(f"[(i.pid, i.ppid, i.command) for i in {NB}.get_process('deep').tree()]")
    root = shared.value(f"{NB}.get_process('deep').pid")
    listeners = [pid for pid, _, cmd in tree
                 if "http.server" in cmd and "python" in cmd.split()[0]]
    assert len(listeners) == 1 and root not in listeners, tree
    parent = next(ppid for pid, ppid, _ in tree if pid == listeners[0])
    assert parent != root and parent in [pid for pid, _, _ in tree], tree  # a grandchild
    assert create_time(listeners[0]) is not None
    print(f"root {root}; tree {tree}")

    # the widget's header shows them too (it refreshes on its own while cells run, at
    # its own pace: wait for it with a deadline, a slow machine may need a few rounds)
    link = f'ports <a href=\\"http://127.0.0.1:{port}/\\"'  # as a link, JSON-escaped
    headers: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        later = shared.ok("import time; time.sleep(1.0)")
        headers += [json.dumps(m["content"].get("data", {})) for m in later.of("comm_msg")]
        if any(link in h and f">{port}</a>" in h for h in headers):
            break
    assert any(link in h and f">{port}</a>" in h for h in headers), headers[-3:]

    table = shared.ok("%proctrack").text()
    print(table)
    rows = [line for line in table.splitlines() if re.match(r"\s*deep\b", line)]
    assert rows, table
    assert re.search(rf"\b{port}\b", rows[0]), rows[0]
    html = json.dumps([m["content"]["data"] for m in shared.ok("%proctrack").of("execute_result")])
    assert str(port) in html
