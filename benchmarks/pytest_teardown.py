"""Our pytest fixture vs pytest-xprocess, on a server whose grandchild ignores SIGTERM.

Usage::

    .venv/bin/python benchmarks/pytest_teardown.py [--grace 3.0]

The server (bash) starts a plain grandchild (``sleep``), a grandchild that ignores
SIGTERM, and a double-forked ``env -i`` setsid daemon, prints a banner, then "ready".
Each tool runs it in its own pytest process (the other plugin switched off), twice:

1. A test that fails on purpose: the time from the end of the test to the end of the
   fixture's teardown (``proctrack`` with ``--proctrack-grace``; xprocess's documented
   ``xprocess.getinfo(name).terminate()``, default timeout), whether the failure report
   shows the server's banner, and which processes are left once pytest has exited.
2. A crash: pytest is SIGKILLed while the server runs; what is left 3 s later.

pytest-xprocess is not a dependency of ours: when it is not importable, it is installed
with ``pip install --no-deps --target`` into a temporary directory used for its run only.
Leftovers are printed, then killed by pid (after an identity check). Goal: our teardown
within grace + 0.5 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bench import Identity, is_alive, kill_leftovers, wait_file

SERVER = r"""
pids="$1"
sleep 1000 & echo "grandchild $!" >>"$pids"
(trap '' TERM; exec sleep 1000) & echo "grandchild $!" >>"$pids"
( env -i setsid sh -c 'echo "daemon $$" >>'"$pids"'; exec sleep 1000' & )
while ! grep -q daemon "$pids"; do sleep 0.01; done
echo bench-server-banner
echo ready
wait
"""

COMMON = r"""
import json, os, time
from pathlib import Path
import psutil
import pytest

HERE = Path(__file__).parent
PIDS = HERE / "server.pids"

@pytest.fixture
def timed():  # set up before the server's fixture, so torn down after it
    yield
    end = float((HERE / "test.end").read_text())
    (HERE / "teardown.seconds").write_text(repr(time.monotonic() - end))

def record(root_pid):
    rows = [("root", root_pid)] + [
        (role, int(pid)) for role, pid in (l.split() for l in PIDS.read_text().splitlines())]
    (HERE / "members.json").write_text(json.dumps(
        [[role, pid, psutil.Process(pid).create_time()] for role, pid in rows]))

def finish(crash):
    if crash:
        (HERE / "crash.ready").write_text("1")
        time.sleep(300)  # until SIGKILLed
    (HERE / "test.end").write_text(repr(time.monotonic()))
    assert False, "fails on purpose: is the server's output in the report?"
"""

OURS = COMMON + r"""
from ipyproctrack import OutputReady

def test_server(timed, proctrack):
    proc = proctrack.start(["bash", str(HERE / "server.sh"), str(PIDS)], name="server",
                           ready=OutputReady("ready"))
    record(proc.pid)
    finish(os.environ.get("BENCH_CRASH") == "1")
"""

XPROCESS = COMMON + r"""
from xprocess import ProcessStarter

@pytest.fixture
def server(xprocess):
    class Starter(ProcessStarter):
        pattern = "ready"
        args = ["bash", str(HERE / "server.sh"), str(PIDS)]
    pid, _ = xprocess.ensure("benchserver", Starter)
    yield pid
    xprocess.getinfo("benchserver").terminate()  # as xprocess's docs show

def test_server(timed, server):
    record(server)
    finish(os.environ.get("BENCH_CRASH") == "1")
"""


def xprocess_path(tmp: Path) -> str | None:
    """A PYTHONPATH entry with pytest-xprocess, or None if it is importable already."""
    if importlib.util.find_spec("xprocess") is not None:
        return None
    target = tmp / "xprocess-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), "pytest-xprocess"], check=True)
    return str(target)


def run_case(directory: Path, tool: str, *, crash: bool, grace: float,
             extra_path: str | None) -> dict[str, Any]:
    directory.mkdir(parents=True)
    (directory / "server.sh").write_text(SERVER)
    (directory / "test_bench.py").write_text(OURS if tool == "ours" else XPROCESS)
    env = dict(os.environ, BENCH_CRASH="1" if crash else "0")
    if tool == "ours":
        args = ["--proctrack-grace", str(grace)]
    else:
        args = ["-p", "no:ipyproctrack"]
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "--rootdir", str(directory),
           str(directory / "test_bench.py"), *args]
    pytest_proc = subprocess.Popen(cmd, cwd=directory, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
    if crash:
        wait_file(directory / "crash.ready", 60)
        pytest_proc.send_signal(signal.SIGKILL)
        out = pytest_proc.communicate()[0]
        time.sleep(3.0)
    else:
        out = pytest_proc.communicate(timeout=120)[0]
    rows = json.loads((directory / "members.json").read_text())
    members = [(str(role), (int(pid), float(ct))) for role, pid, ct in rows]
    left = {role: sum(1 for r, m in members if r == role and is_alive(m))
            for role in ("root", "grandchild", "daemon")}
    idents: list[Identity] = [m for _, m in members]
    kill_leftovers(idents)
    result: dict[str, Any] = {"left": left}
    if not crash:
        result["teardown_s"] = float((directory / "teardown.seconds").read_text())
        result["banner_in_report"] = "bench-server-banner" in out
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=3.0)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pytest-") as tmp_name:
        tmp = Path(tmp_name)
        extra = xprocess_path(tmp)
        for tool in ("ours", "xprocess"):
            for crash in (False, True):
                case = "crash" if crash else "teardown"
                print(f"running {tool} / {case} ...", flush=True)
                results.setdefault(tool, {})[case] = run_case(
                    tmp / f"{tool}-{case}", tool, crash=crash, grace=args.grace,
                    extra_path=extra)
    print(json.dumps(results, indent=2))
    print(f"\n| | ipyproctrack `proctrack` (grace {args.grace:g} s) | pytest-xprocess |")
    print("|---|---|---|")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("teardown time", lambda r: f"{r['teardown']['teardown_s']:.2f} s"),
        ("grandchildren left (of 2)", lambda r: str(r["teardown"]["left"]["grandchild"])),
        ("`env -i` daemons left (of 1)", lambda r: str(r["teardown"]["left"]["daemon"])),
        ("server output in the failure report",
         lambda r: "yes" if r["teardown"]["banner_in_report"] else "no"),
        ("left 3 s after pytest is SIGKILLed (of 4)",
         lambda r: str(sum(r["crash"]["left"].values()))),
    ]
    for title, cell in rows:
        print(f"| {title} | {cell(results['ours'])} | {cell(results['xprocess'])} |")
    ours = results["ours"]["teardown"]["teardown_s"]
    goal = args.grace + 0.5
    print(f"\nours: {ours:.2f} s (goal <= grace + 0.5 = {goal:.1f} s): "
          f"{'met' if ours <= goal else 'MISSED'}")


if __name__ == "__main__":
    main()
