"""The keepers' zygote (``_keeper/zygote.py``): keepers cloned as the kernel's children,
shown in /proc as keepers, with the kernel's umask and limits at each launch."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _procs import create_time, until, wait_dead

from ipyproctrack import Tracker
from ipyproctrack._engine.sessions import find_sessions
from ipyproctrack._keeper.client import ClonedKeeper, Zygote
from ipyproctrack._keeper.zygote import ENV_ROOM
from ipyproctrack._proc import procfs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux clone")


def _ppid(pid: int) -> int:
    st = procfs.read_stat(pid)
    assert st is not None
    return st[1]


def test_keepers_are_clones_that_proc_shows_as_keepers(tracker: Tracker) -> None:
    procs = [tracker.start(["sleep", "60"], name=f"s{i}") for i in range(3)]
    zygote = tracker._zygote.pid
    assert zygote is not None and _ppid(zygote) == os.getpid()
    assert Path(f"/proc/{zygote}/comm").read_text() == "ipt-zygote\n"
    for proc in procs:
        keeper = proc._root.popen
        assert isinstance(keeper, ClonedKeeper)
        assert _ppid(keeper.pid) == os.getpid()  # the kernel's child, not the zygote's
        assert _ppid(proc.pid) == keeper.pid
        args = procfs.argv(keeper.pid)  # as a Popen-started keeper's
        assert args[-2].endswith(os.path.join("_keeper", "__main__.py")), args
        assert f"tag={proc.tag}" in args[-1].split("\t"), args
        assert procfs.read_tags(keeper.pid) == (tracker.session_tag, proc.tag)
        # named as an exec names it: the scan's tag cache, keyed on the name, reads anew
        assert Path(f"/proc/{keeper.pid}/comm").read_text() == "python\n"
    sessions = [s for s in find_sessions() if s.tag == tracker.session_tag]
    assert len(sessions) == 1 and sessions[0].kernel_alive  # read from the keepers' config
    launches = {launch.name: launch for launch in sessions[0].launches}
    assert sorted(launches) == ["s0", "s1", "s2"]  # the command line's listing finds them
    assert all(launch.keeper is not None for launch in launches.values())
    zygote_ident = (zygote, create_time(zygote) or 0.0)
    report = tracker.close(grace=0.5)
    assert report.ok, report.messages
    assert wait_dead([zygote_ident], 3.0) == []
    assert all(p._root.popen.poll() is not None for p in procs)  # reaped by us


def test_the_kernels_umask_and_limits_at_the_launch_reach_the_command(
    tracker: Tracker,
) -> None:
    tracker.start(["sleep", "60"], name="first")  # the zygote starts here
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    old_umask = os.umask(0o027)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (777, hard))
        proc = tracker.start("umask; ulimit -n", name="limits")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.umask(old_umask)
    assert isinstance(proc._root.popen, ClonedKeeper)
    assert proc.wait(10) == 0 and proc.wait_output_done(10)
    assert proc.tail() == "0027\n777\n"


def test_a_dead_zygote_leaves_keepers_to_start_on_their_own(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    first = tracker.start(["sleep", "60"], name="first")
    assert isinstance(first._root.popen, ClonedKeeper)
    zygote = tracker._zygote.pid
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)  # ours, by pid
    with caplog.at_level(logging.WARNING, logger="ipyproctrack"):
        second = tracker.start("echo still here", name="second")
    assert isinstance(second._root.popen, subprocess.Popen)
    assert second.wait(10) == 0 and second.wait_output_done(10)
    assert second.tail() == "still here\n"
    assert any("zygote" in r.getMessage() for r in caplog.records)
    assert first.is_running()  # its keeper does not depend on the zygote


def test_an_environment_too_big_for_the_zygote_gets_a_keeper_of_its_own(
    tracker: Tracker,
) -> None:
    proc = tracker.start("echo ${#BIG}", name="big", env={"BIG": "x" * ENV_ROOM})
    assert isinstance(proc._root.popen, subprocess.Popen)
    assert proc.wait(10) == 0 and proc.wait_output_done(10)
    assert proc.tail() == f"{ENV_ROOM}\n"


def test_zygote_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPYPROCTRACK_ZYGOTE", "0")
    with Tracker(log_dir=tmp_path, grace=0.5) as t:
        proc = t.start(["sleep", "60"], name="plain")
        assert isinstance(proc._root.popen, subprocess.Popen) and t._zygote.pid is None


DIES = textwrap.dedent("""
    import os, signal, sys
    from ipyproctrack import Tracker
    t = Tracker(log_dir=sys.argv[1], grace=0.5)
    p = t.start(["sleep", "60"], name="x")
    print(t._zygote.pid, p.pid, p._root.popen.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_zygote_and_the_tree_end_with_the_kernel(tmp_path: Path) -> None:
    """A kernel SIGKILLed: the lifeline's EOF ends the zygote, and the keeper its tree."""
    kernel = subprocess.run([sys.executable, "-c", DIES, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert kernel.returncode == -signal.SIGKILL, kernel.stderr
    pids = [int(p) for p in kernel.stdout.split()]
    assert len(pids) == 3, kernel.stdout
    idents = [(pid, ct) for pid in pids if (ct := create_time(pid)) is not None]
    assert until(lambda: wait_dead(idents, 0.1) == [], 10), idents


@pytest.mark.parametrize("tracked", [True, False], ids=["tracker", "bare-zygote"])
def test_a_forked_child_cannot_use_the_parents_zygote(tracker: Tracker, tracked: bool) -> None:
    """A clone's parent would be our parent, not the child: the child must never ask.
    Through a Tracker, the at-fork hook and the owner check both stand in the way; a
    zygote no Tracker knows has the owner check alone."""
    if tracked:
        tracker.start(["sleep", "60"], name="first")  # the zygote runs now
        zygote = tracker._zygote
    else:
        zygote = Zygote(tracker._lifeline_read)
        r, w = os.pipe()
        first = zygote.spawn({"argv": ["true"], "kernel_pid": os.getpid()}, program="true",
                             cwd="/", env={}, stdout=w, stderr=w, status_w=w)
        os.close(w)
        assert isinstance(first, ClonedKeeper)  # it serves the process that started it
        first.wait(10)
        os.close(r)
    pid = os.fork()
    if pid == 0:  # the child: never clone through the parent's zygote
        r, w = os.pipe()
        got = zygote.spawn({"argv": ["true"]}, program="true", cwd="/", env={},
                           stdout=w, stderr=w, status_w=w)
        os._exit(0 if got is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert zygote.pid is not None  # and the parent's zygote still runs
    if not tracked:
        zygote.close()
