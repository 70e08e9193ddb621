#!/usr/bin/env python3
"""Execute a notebook (default notebooks/demo.ipynb) headless, print what its cells printed,
check for leftovers.

    python scripts/run_demo.py [NOTEBOOK] [--notebook PATH] [--output PATH] [--timeout S]

The notebook runs in a fresh ``python3`` kernel of this interpreter (jupyter_client runs
the native kernel with ``sys.executable``), through nbclient, in the notebook's directory.
The executed notebook is written to ``build/<name>.executed.ipynb``. The exit status is
non-zero if a cell failed or if any process started by the notebook that carries an
ipyproctrack tag is still alive afterwards (those are then killed, by pid and create time).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets.config import Config

# nbformat's read/write are untyped
_nb_read: Callable[..., Any] = nbformat.read
_nb_write: Callable[..., Any] = nbformat.write

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOK = REPO / "notebooks" / "demo.ipynb"
BUILD = REPO / "build"
#: Inherited by the demo's kernel and so by everything it starts: how we find leftovers.
RUN_VARIABLE = "IPYPROCTRACK_DEMO_RUN"
TAG_VARIABLES = ("IPYPROCTRACK_SESSION", "IPYPROCTRACK_PROCESS")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _environ(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return {}


def _has_new_tag(env: dict[str, str]) -> bool:
    """A tag this script did not inherit: run from a tracked process (a ``%%tracked`` cell,
    a test under the pytest plugin), the kernel inherits our tags and is not a leftover."""
    return any(name in env and env[name] != os.environ.get(name) for name in TAG_VARIABLES)


def demo_processes(mark: str, *, tagged_only: bool) -> dict[int, tuple[float, str]]:
    """Live processes carrying this run's mark (and a tag, if ``tagged_only``)."""
    found: dict[int, tuple[float, str]] = {}
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        env = _environ(proc.pid)
        if env.get(RUN_VARIABLE) != mark:
            continue
        if tagged_only and not _has_new_tag(env):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found[proc.pid] = (proc.create_time(), " ".join(proc.cmdline())[:120])
        except (psutil.Error, OSError):
            continue
    return found


def wait_gone(mark: str, timeout: float, *, tagged_only: bool) -> dict[int, tuple[float, str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = demo_processes(mark, tagged_only=tagged_only)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill_leftovers(left: dict[int, tuple[float, str]]) -> None:
    for pid, (ctime, _) in left.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - ctime) < 0.01:
                proc.kill()
        except (psutil.Error, OSError):
            pass


def output_text(output: dict[str, Any]) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return str(output.get("text", ""))
    if kind == "error":
        return ANSI.sub("", f"{output.get('ename')}: {output.get('evalue')}")
    data = output.get("data", {})
    text = str(data.get("text/plain", ""))
    if WIDGET_MIME in data:
        return f"[widget] {text}"
    return text


def print_cell(index: int, cell: Any) -> None:
    source = str(cell.source).strip()
    first = source.splitlines()[0] if source else ""
    more = " …" if "\n" in source else ""
    print(f"[{index}] {first}{more}")
    for output in cell.get("outputs", []):
        text = output_text(output).rstrip("\n")
        if text:
            print(textwrap.indent(text, "    "))


def run(notebook: Path, output: Path, timeout: float) -> int:
    nb = _nb_read(notebook, as_version=4)
    mark = uuid.uuid4().hex
    env = dict(os.environ)
    env[RUN_VARIABLE] = mark
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    sockets = tempfile.mkdtemp(prefix="ipt-kernel-", dir="/tmp" if os.name == "posix" else None)
    try:
        return _run(nb, notebook, output, timeout, env, mark, sockets)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def kernel_sockets(directory: str) -> Config:
    """IPC sockets in ``directory`` (POSIX), not TCP ports: a free port that jupyter_client
    picks may be taken before the kernel binds it, by a server the notebook (or another
    run) starts. A short absolute path of their own: a socket's path has at most 107
    bytes, and by default they are named after the connection file."""
    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(directory, "k")}})


def _run(nb: Any, notebook: Path, output: Path, timeout: float, env: dict[str, str],
         mark: str, sockets: str) -> int:
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
        config=kernel_sockets(sockets),
    )
    failed: str | None = None
    early: dict[int, tuple[float, str]] = {}
    started = time.monotonic()
    print(f"executing {notebook} with {sys.executable}")
    with client.setup_kernel(env=env):
        code_cells = 0
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            code_cells += 1
            try:
                client.execute_cell(cell, index, execution_count=code_cells)
            except CellExecutionError as exc:
                last = ANSI.sub("", str(exc)).strip().splitlines()[-1]
                failed = f"cell {index} failed: {last}"
            print_cell(index, cell)
            if failed:
                break
        client.set_widgets_metadata()
        if not failed:  # the notebook cleaned up after itself: nothing tracked is left
            early = wait_gone(mark, 3.0, tagged_only=True)
    # the kernel is shut down now: nothing of the demo's may be left at all
    late = wait_gone(mark, 5.0, tagged_only=False)
    took = time.monotonic() - started

    output.parent.mkdir(parents=True, exist_ok=True)
    _nb_write(nb, output)
    print(f"\nexecuted notebook written to {output}")
    status = 0
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        status = 1
    for label, left in (("after the last cell", early), ("after kernel shutdown", late)):
        if left:
            print(f"LEFT ALIVE {label}: {len(left)} process(es):", file=sys.stderr)
            for pid, (_, cmd) in sorted(left.items()):
                print(f"  pid {pid}: {cmd}", file=sys.stderr)
            kill_leftovers(left)
            status = status or 2
    if status == 0:
        print(f"demo OK in {took:.1f} s: every cell ran, no tracked process is left")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("notebook_arg", nargs="?", type=Path, metavar="NOTEBOOK",
                        help="the notebook to run (default notebooks/demo.ipynb)")
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--output", type=Path, default=None,
                        help="default build/<notebook>.executed.ipynb")
    parser.add_argument("--timeout", type=float, default=120.0, help="per cell, seconds")
    args = parser.parse_args(argv)
    notebook = args.notebook_arg or args.notebook
    output = args.output or BUILD / f"{notebook.stem}.executed.ipynb"
    return run(notebook.resolve(), output.resolve(), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
