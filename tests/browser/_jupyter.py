"""A real Jupyter server (JupyterLab or Notebook 7) for the browser tests.

Each server listens on 127.0.0.1 with a random token, serves a temporary root, and gets
temporary config, data, runtime and IPython directories, so nothing of the user's own set-up
(settings, extensions loaded at start, a theme) leaks into a test. It is a plain subprocess
that the test stops by pid: SIGTERM (the server then shuts its kernels down), SIGKILL after a
deadline, and then any process of its tree still alive is killed by identity.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from _procs import kill_by_identity, wait_dead

__all__ = ["Frontend", "JupyterServer", "free_port", "notebook_json", "running_server"]

Frontend = Literal["lab", "notebook"]

#: The Python module that starts each front end.
_MODULES: dict[Frontend, str] = {"lab": "jupyterlab", "notebook": "notebook"}
#: Seconds a server may take to answer /api/status on a busy 2-core machine.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0

# No news or update checks: the machine has no network, and their pop-up covers the page.
_NOTIFICATION_SETTINGS = {"fetchNews": "false", "checkForUpdates": False}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def notebook_json(cells: list[str]) -> dict[str, Any]:
    """An nbformat 4 notebook of code cells for the Python 3 kernel."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {
                "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python",
            },
            "language_info": {"name": "python"},
        },
        "cells": [
            {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": src,
             "outputs": [], "execution_count": None}
            for i, src in enumerate(cells)
        ],
    }


@dataclass
class JupyterServer:
    """A running server: where it is and how to reach a notebook in it."""

    frontend: Frontend
    port: int
    token: str
    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def notebook_url(self, name: str) -> str:
        path = "lab/tree" if self.frontend == "lab" else "notebooks"
        return f"http://127.0.0.1:{self.port}/{path}/{name}?token={self.token}"

    def write_notebook(self, name: str, cells: list[str]) -> None:
        (self.root / name).write_text(json.dumps(notebook_json(cells), indent=1))

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no server log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _write_user_settings(config_dir: Path, *, dark: bool) -> None:
    """JupyterLab's user settings (Notebook 7 reads the same directory)."""
    base = config_dir / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    base.mkdir(parents=True)
    (base / "notification.jupyterlab-settings").write_text(json.dumps(_NOTIFICATION_SETTINGS))
    if dark:
        (base / "themes.jupyterlab-settings").write_text(
            json.dumps({"theme": "JupyterLab Dark"})
        )


def _wait_until_up(server: JupyterServer) -> None:
    url = f"http://127.0.0.1:{server.port}/api/status?token={server.token}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"jupyter {server.frontend} exited with {server.proc.returncode}:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"jupyter {server.frontend} did not answer in {START_TIMEOUT:g} s:\n"
                + server.log_tail()
            )
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server by pid, SIGKILL it after a deadline, then whatever of its tree
    (kernels, tracked processes' keepers) is still alive, by identity. Never raises."""
    try:
        tree = [(p.pid, p.create_time()) for p in psutil.Process(proc.pid).children(True)]
    except psutil.Error:
        tree = []
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)
    left = wait_dead(tree, 5.0)
    if left:
        kill_by_identity(pair for pair in tree if pair[0] in left)
        wait_dead(tree, 5.0)


@contextlib.contextmanager
def running_server(frontend: Frontend, tmp: Path, *, dark: bool = False) -> Iterator[JupyterServer]:
    """Start ``jupyter lab`` or ``jupyter notebook`` on a free port; stop it on exit."""
    root, home = tmp / "root", tmp / "jupyter-home"
    root.mkdir()
    for sub in ("config", "data", "runtime", "ipython"):
        (home / sub).mkdir(parents=True)
    _write_user_settings(home / "config", dark=dark)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
        JUPYTER_PLATFORM_DIRS="0",
        TMPDIR=str(tmp),  # the kernels' temporary files and our default logs stay in tmp
    )
    env.pop("JUPYTERLAB_SETTINGS_DIR", None)
    env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
    port, token = free_port(), secrets.token_hex(16)
    argv = [
        sys.executable, "-m", _MODULES[frontend], "--no-browser", "--ip=127.0.0.1",
        f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    if os.geteuid() == 0:  # CI runs as root; the server refuses that without the flag
        argv.append("--allow-root")
    log_path = tmp / f"jupyter-{frontend}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = JupyterServer(frontend, port, token, root, proc, log_path)
    try:
        _wait_until_up(server)
        yield server
    finally:
        _stop(proc)
