"""A real ipykernel driven through jupyter_client, for the kernel-level tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import free_port as free_port  # re-exported: the kernel tests import it here
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parents[1]
GRACE = 1.0

# A %%tracked cell flooding stdout ({lines} lines of ~100 bytes every 20 ms) and stderr.
FLOODER = """\
%%tracked flood{i}
python -c '
import sys, time
pad = "x" * 80
n = 0
while True:
    n += 1
    sys.stdout.write("".join(f"flood{i} {{n}}.{{k}} {{pad}}\\n" for k in range({lines})))
    sys.stdout.flush()
    sys.stderr.write(f"flood{i} err {{n}}\\n")
    time.sleep(0.02)
'
"""


def kernel_sockets(directory: str) -> dict[str, str]:
    """A KernelManager's transport: IPC sockets in ``directory`` (POSIX), not TCP ports.
    jupyter_client picks free ports and the kernel binds them later, and meanwhile a
    kernel or server of another test worker may take one ("Address already in use": a CI
    failure of 62404a2). The sockets need a short absolute path of their own: by default
    they are named after the connection file, or relative to the working directory."""
    if os.name != "posix":
        return {}
    return {"transport": "ipc", "ip": os.path.join(directory, "kernel")}


@dataclass
class Result:
    msgs: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.msgs if m["msg_type"] == kind]

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.of("stream")
                       if m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.of("stream")
                       if m["content"]["name"] == "stderr")

    @property
    def error(self) -> str | None:
        errors = self.of("error")
        if not errors:
            return None
        c = errors[0]["content"]
        return f"{c['ename']}: {c['evalue']}"

    def text(self) -> str:
        parts = [self.stdout]
        for m in self.of("execute_result") + self.of("display_data"):
            parts.append(m["content"]["data"].get("text/plain", ""))
        return "\n".join(parts)


class Kernel:
    """One real ipykernel with the extension loaded."""

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        """``env``: extra variables for the kernel's environment."""
        env = {**os.environ, **(env or {})}
        # The kernel's temporary files (ipykernel's cell files, our default log directory)
        # go to a directory of the test's own, removed by close().
        self.tmpdir = tempfile.mkdtemp(prefix="ipyproctrack-kernel-")
        env["TMPDIR"] = self.tmpdir
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
        )
        self.km = KernelManager(kernel_name="python3", **kernel_sockets(self.tmpdir))
        self.km.start_kernel(cwd=str(REPO), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.pid = -1
        self.setup()

    def setup(self) -> None:
        self.ok(f"%load_ext ipyproctrack\n%config ProcTrackConfig.grace = {GRACE}")
        self.pid = int(self.ok("import os; print(os.getpid())").stdout)

    def collect(self, msg_id: str, timeout: float = 60) -> Result:
        """Every iopub message until the kernel is idle after ``msg_id``."""
        result = Result()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no idle after {timeout} s; got {len(result.msgs)} msgs")
            try:
                msg = self.kc.get_iopub_msg(timeout=remaining)
            except Exception:  # queue.Empty
                continue
            msg["received"] = time.monotonic()
            result.msgs.append(msg)
            if (
                msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id
            ):
                return result

    def run(self, code: str, timeout: float = 60) -> Result:
        return self.collect(self.kc.execute(code), timeout)

    def ok(self, code: str, timeout: float = 60) -> Result:
        result = self.run(code, timeout)
        assert result.error is None, f"{code!r} failed: {result.error}\n{result.stderr}"
        return result

    def value(self, expr: str) -> Any:
        return json.loads(self.ok(f"import json; print(json.dumps({expr}))").stdout)

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            try:
                if self.km.has_kernel:  # graceful: the extension tears its trees down
                    self.km.shutdown_kernel(now=False)
                else:  # it was killed: its connection file is still ours to remove
                    self.km.cleanup_resources()
            finally:
                remove_tree(self.tmpdir)


def remove_tree(path: str, timeout: float = 10.0) -> None:
    """Remove a kernel's temporary directory. A keeper that tore a tree down when the kernel
    died may still be appending its report there, so try again until it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path) or time.monotonic() > deadline:
            return
        time.sleep(0.1)



def http_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return int(resp.status)




# ----------------------------------------------------------------------------- soak

#: One soak cycle's launch: ready at once, then idle until it is stopped.
SOAK_CELL = "%%tracked soak --wait-output ready --timeout 20\necho ready; exec sleep 1000\n"
#: The kernel's open file descriptors, OS threads and RSS, as one line.
# Free memory that glibc's malloc keeps cached is not a leak: collect, hand it back to the
# OS (malloc_trim), then read RSS, so the figure reflects what is really held.
_PROBE = ("import gc as _gc, ctypes as _c, psutil as _p; _gc.collect()\n"
          "try:\n    _c.CDLL(None).malloc_trim(0)\nexcept (OSError, AttributeError):\n    pass\n"
          "_me = _p.Process(); "
          "print(_me.num_fds(), _me.num_threads(), _me.memory_info().rss)")


def kernel_usage(kernel: Kernel) -> tuple[int, int, int]:
    """(open fds, OS threads, RSS bytes) of the kernel, measured inside it."""
    fds, threads, rss = (int(v) for v in kernel.ok(_PROBE).stdout.split())
    return fds, threads, rss


def soak_cycles(kernel: Kernel, cycles: int, every: int) -> list[tuple[int, int, int, int]]:
    """``cycles`` start -> ready -> stop cycles of one name in ``kernel``; (cycle, fds,
    threads, RSS) before the first and after every ``every``-th cycle."""
    rows = [(0, *kernel_usage(kernel))]
    for n in range(1, cycles + 1):
        kernel.ok(SOAK_CELL)
        out = kernel.ok("%proctrack_cleanup soak").text()
        assert "all gone" in out, out
        if n % every == 0:
            rows.append((n, *kernel_usage(kernel)))
    return rows
