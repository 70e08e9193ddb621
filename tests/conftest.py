"""Shared test set-up: the leak check every test runs under.

``_no_tagged_leftovers`` is autouse. It notes every process that carries an ipyproctrack tag
(``IPYPROCTRACK_SESSION`` or ``IPYPROCTRACK_PROCESS`` in its environment) before the test,
and after the test (and after the test's other fixtures have been torn down) it gives new
tagged processes up to ``LEAK_GRACE`` seconds to go away, since helpers exit
asynchronously. Whatever is still there is SIGKILLed by identity and the test fails (as an
error in teardown) with the pid and command line of each leftover.

Only processes of this test run count: importing this conftest marks the run with a fresh
``IPYPROCTRACK_TEST_RUN`` value in ``os.environ`` (see ``_procs.mark_test_run``), so other
test runs going on at the same time on this machine are never touched. A process launched
with a whole new environment (``env -i``, or ``Popen(env=...)`` without ``os.environ``)
loses the mark and escapes this check.

It also counts orphans of this run: processes carrying the run's mark, tagged or not,
whose parent is gone (re-parented to init), such as the grandchild of a plain
``subprocess`` that a test killed without its children.

A test that means to leave processes running for a later test cannot exist here: every
test cleans up after itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from _procs import (
    kill_by_identity,
    mark_test_run,
    orphans_of_this_run,
    tagged_processes,
    wait_dead,
)

if TYPE_CHECKING:
    from pathlib import Path

    from _kernels import Kernel

    from ipyproctrack import Tracker

mark_test_run()

# The tests' commands say "python3" and "python": the test run's own interpreter. A pyenv
# shim there is a bash script that costs 0.1 s per start: 100 re-runs of one cell took 45 s.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

LEAK_GRACE = 3.0



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the ``slow`` tests over the xdist workers. ``--dist worksteal`` first hands
    each worker a contiguous share of the collection: each share starts with its own slow
    tests, dealt round robin, so that no worker gets them all and ends a minute late."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    n = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))  # set in each worker
    size = -(-len(rest) // n)
    items[:] = [item for k in range(n) for item in (*slow[k::n], *rest[k * size:(k + 1) * size])]


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this test, as at a terminal. A shell that starts
    the run in the background (``cmd &``, nohup) leaves SIGINT ignored, and Python then
    installs no handler: a test's Ctrl-C would do nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _no_tagged_leftovers() -> Iterator[None]:
    before = {(pid, ctime) for pid, (ctime, _) in tagged_processes().items()}
    before |= {(pid, ctime) for pid, (ctime, _) in orphans_of_this_run().items()}
    yield
    after = tagged_processes() | orphans_of_this_run()
    new = {pid: info for pid, info in after.items() if (pid, info[0]) not in before}
    if not new:
        return
    still = set(wait_dead([(pid, ctime) for pid, (ctime, _) in new.items()], LEAK_GRACE))
    leftovers = {pid: info for pid, info in new.items() if pid in still}
    if not leftovers:
        return
    kill_by_identity((pid, ctime) for pid, (ctime, _) in leftovers.items())
    unkillable = wait_dead([(pid, ctime) for pid, (ctime, _) in leftovers.items()], 2.0)
    lines = [
        f"  pid {pid}: {cmd or '?'}"
        + ("  (STILL ALIVE after SIGKILL)" if pid in unkillable else "")
        for pid, (_, cmd) in sorted(leftovers.items())
    ]
    pytest.fail(
        f"test left {len(leftovers)} tagged or orphaned process(es) alive {LEAK_GRACE:g} s "
        "after it ended; they were SIGKILLed by pid:\n" + "\n".join(lines),
        pytrace=False,
    )


@pytest.fixture(scope="module")
def _shared_kernel() -> Iterator[Kernel]:
    """One real kernel per test module that asks for ``shared``."""
    from _kernels import Kernel

    k = Kernel()
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def shared(_shared_kernel: Kernel) -> Iterator[Kernel]:
    """The module's kernel; whatever a test started is cleaned up after it, pass or fail."""
    yield _shared_kernel
    _shared_kernel.run("%proctrack_cleanup")


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    """A Tracker logging under the test's tmp dir; closed (everything torn down) after."""
    from ipyproctrack import Tracker

    t = Tracker(log_dir=tmp_path / "logs", grace=1.0)
    yield t
    t.close(grace=0.5)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    """A fresh real kernel for a test that ends it (shutdown, restart, signals)."""
    from _kernels import Kernel

    k = Kernel()
    try:
        yield k
    finally:
        k.close()
