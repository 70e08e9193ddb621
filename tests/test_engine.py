"""The engine against real process trees: launch, drain, discovery, teardown."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
from _procs import create_time, is_alive, kill_by_identity, until, wait_dead
from _trees import read_nasty_pids, start_nasty, wait_nasty_ready

from ipyproctrack import (
    CallableReady,
    LaunchError,
    NameInUseError,
    OutputChunk,
    Phase,
    ProcessState,
    Tracker,
    UnknownProcessError,
)
from ipyproctrack import _platform as plat
from ipyproctrack._engine.output import RotatingLog
from ipyproctrack._proc import ProcId, Target, discovery_name, procfs, run_teardown, send_signal

PY = sys.executable


def _clean_up_the_nasty_tree(tracker: Tracker, tmp_path: Path, grace: float) -> float:
    """Start the nasty tree, clean it up, check nothing survives; seconds it took."""
    command, pidfile = start_nasty(tmp_path)
    proc = tracker.start(command, name="nasty")
    wait_nasty_ready(pidfile)
    members = read_nasty_pids(pidfile)
    assert len(members) >= 60
    assert all(is_alive(pid, ct) for role, pid, ct in members if role != "zombie")
    t0 = time.monotonic()
    report = tracker.cleanup(grace=grace)
    elapsed = time.monotonic() - t0
    alive = wait_dead([(pid, ct) for _, pid, ct in members if ct], 2.0)
    assert alive == [], f"still alive: {alive}\n{report}"
    assert report.ok, str(report)
    ignorers = {pid for role, pid, _ in members if "ignor" in role}
    assert ignorers, members
    killed = {o.pid for o in report.outcomes if o.ended_by == "SIGKILL"}
    assert ignorers & killed, str(report)
    assert any(f"pid {p}" in m and "SIGKILL" in m for p in ignorers for m in report.messages)
    daemons = {pid for role, pid, _ in members if "daemon" in role}
    tagged = {o.pid for o in report.outcomes if o.found_by == "tag"}
    assert daemons and daemons <= tagged | {o.pid for o in report.outcomes}
    assert proc.stopped and not proc.is_running()
    assert "nasty: " in str(report)
    return elapsed


def test_nasty_tree_leaves_nothing(tracker: Tracker, tmp_path: Path) -> None:
    _clean_up_the_nasty_tree(tracker, tmp_path, grace=1.0)


@pytest.mark.perf
def test_nasty_tree_cleanup_takes_at_most_grace_plus_1_s(tracker: Tracker, tmp_path: Path) -> None:
    elapsed = _clean_up_the_nasty_tree(tracker, tmp_path, grace=1.0)
    assert elapsed < 1.0 + 1.0, elapsed


def test_draining_while_caller_sleeps(tracker: Tracker) -> None:
    writer = (
        "import sys, time\n"
        "line = b'x' * 1023 + b'\\n'\n"
        "while True:\n"
        "    sys.stdout.buffer.write(line * 64); sys.stdout.flush(); time.sleep(1/16)\n"
    )
    proc = tracker.start([PY, "-c", writer], name="writer")
    assert until(lambda: proc.bytes_received > 0)
    before = proc.log_path.stat().st_size
    time.sleep(3)  # the caller's thread blocks; the drain must not
    grown = proc.log_path.stat().st_size - before
    assert grown > 1.5 * 2**20, grown  # ~3 MiB written at 1 MiB/s
    proc.stop(grace=0.5)


@pytest.mark.parametrize("keeper_drain", ["1", "0"], ids=["keeper-pump", "kernel-drain"])
def test_nothing_lost_with_rotation(
    keeper_drain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPYPROCTRACK_KEEPER_DRAIN", keeper_drain)
    size = 200 * 2**20
    code = (
        "import sys, hashlib\n"
        f"n = {size}\n"
        "block = b''.join(b'%08d abcdefghijklmnopqrstuvwxyz\\n' % i for i in range(4096))\n"
        "out = sys.stdout.buffer\n"
        "while n > 0:\n"
        "    out.write(block[:n]); n -= len(block)\n"
        "out.flush()\n"
    )
    with Tracker(log_dir=tmp_path, log_max_bytes=16 * 2**20, log_backups=-1) as t:
        proc = t.start([PY, "-c", code], name="flood")
        assert proc.wait(60) == 0
        assert proc._drained.wait(30)
        files = proc.log_files()
    assert len(files) == 13  # 12 full backups of 16 MiB and the current file
    block = b"".join(b"%08d abcdefghijklmnopqrstuvwxyz\n" % i for i in range(4096))
    expected = hashlib.sha256()
    n = size
    while n > 0:
        expected.update(block[:n])
        n -= len(block)
    got = hashlib.sha256()
    total = 0
    for f in files:
        data = f.read_bytes()
        total += len(data)
        got.update(data)
    assert total == size
    assert got.hexdigest() == expected.hexdigest()


def test_rotation_keeps_a_bounded_number_of_backups(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=100, backups=2)
    for _ in range(10):
        log.write(b"a" * 60)
    log.close()
    assert [p.name for p in log.files()] == ["x.log.2", "x.log.1", "x.log"]
    assert all(p.stat().st_size <= 100 for p in log.files())


def test_bounded_rotation_keeps_the_newest_bytes_in_order(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=100, backups=2)
    stream = b"".join(b"%06d\n" % i for i in range(200))  # 1400 bytes: 14 files' worth
    for i in range(0, len(stream), 70):
        log.write(stream[i : i + 70])
    log.close()
    kept = b"".join(p.read_bytes() for p in log.files())
    assert kept == stream[-300:]  # two full backups and a full current file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log", "x.log.1", "x.log.2"]


def test_rotation_without_backups_starts_the_log_afresh(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=100, backups=0)
    log.write(b"a" * 100)
    log.write(b"b" * 30)
    log.close()
    assert log.files() == [tmp_path / "x.log"]
    assert (tmp_path / "x.log").read_bytes() == b"b" * 30


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_deleted_backup_is_closed_soon(tmp_path: Path) -> None:
    # The oldest backup is deleted with its descriptor closed on a thread (that is where
    # its cached pages are freed): that descriptor must not leak.
    log = RotatingLog(tmp_path / "x.log", max_bytes=1000, backups=1)
    for _ in range(5):
        log.write(b"x" * 1000)
    log.close()

    def held() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)):
                found.append(target)
        return found

    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log", "x.log.1"]


def test_pid_reuse_record_is_never_signalled(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ct = create_time(victim.pid)
        assert ct is not None
        stale = ProcId(victim.pid, ct - 100.0)  # same pid, another process's identity
        assert send_signal(stale, "term") == "gone"
        report = run_teardown(
            [Target(name="old", root=stale, tag="no-such-tag", group=victim.pid)], grace=0.2
        )
        assert victim.poll() is None, "a recycled pid was signalled"
        assert all(o.pid != victim.pid for o in report.outcomes)
    finally:
        victim.kill()
        victim.wait()


def test_two_sessions_are_independent(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path / "a") as a, Tracker(log_dir=tmp_path / "b") as b:
        pa = a.start("sleep 60", name="same")
        pb = b.start("sleep 60", name="same")
        assert a.session_tag != b.session_tag
        report = a.cleanup(grace=0.5)
        assert {o.pid for o in report.outcomes} == {pa.pid}
        assert pb.is_running() and is_alive(pb.pid, pb.create_time)
        assert not is_alive(pa.pid, pa.create_time)


def test_tags_are_exact(tracker: Tracker) -> None:
    proc = tracker.start(
        [PY, "-c", "import os; print(os.environ['IPYPROCTRACK_SESSION'], "
         "os.environ['IPYPROCTRACK_PROCESS'])"],
        name="tags",
    )
    # all of it: with PYTHONUNBUFFERED set, print() writes its two words apart
    assert proc.wait(10) == 0 and proc.wait_output_done(10)
    session, process = proc.tail().split()
    assert session == tracker.session_tag
    assert process == proc.tag and process.startswith(session)


def test_missing_cwd(tracker: Tracker, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="directory not found"):
        tracker.start("true", cwd=tmp_path / "nope")


@pytest.mark.parametrize("command", [["no-such-command-xyz"], "no-such-command-xyz --flag"])
def test_missing_command(tracker: Tracker, command: object) -> None:
    with pytest.raises(LaunchError, match="command not found: no-such-command-xyz"):
        tracker.start(command)  # type: ignore[arg-type]
    assert tracker.processes() == []


@pytest.mark.parametrize("command", ["", "   \n ", []])
def test_empty_command(tracker: Tracker, command: object) -> None:
    with pytest.raises(LaunchError, match="empty command"):
        tracker.start(command)  # type: ignore[arg-type]


def test_name_in_use_and_replace(tracker: Tracker) -> None:
    first = tracker.start("sleep 60", name="web")
    with pytest.raises(NameInUseError, match="'web' is still running"):
        tracker.start("sleep 60", name="web")
    second = tracker.start("sleep 60", name="web", replace=True)
    assert not first.is_running() and first.stopped
    assert second.is_running()
    assert [p.name for p in tracker.processes()] == ["web"]
    with pytest.raises(UnknownProcessError, match="no tracked process named 'nope'"):
        tracker.get("nope")


def test_undecodable_output(tracker: Tracker) -> None:
    garbage = bytes(range(256)) * 4 + b"\xff\xfe\n" + "h\u00e9llo\n".encode()
    proc = tracker.start(
        [PY, "-c", f"import sys; sys.stdout.buffer.write({garbage!r})"], name="bin"
    )
    assert proc.wait(10) == 0
    assert proc._drained.wait(10)
    assert proc.log_path.read_bytes() == garbage  # the log keeps the raw bytes
    text = proc.tail()
    assert "\ufffd" in text and "h\u00e9llo" in text


def test_ten_megabyte_line(tracker: Tracker) -> None:
    proc = tracker.start(
        [PY, "-c", "import sys; sys.stdout.write('y' * 10_000_000); sys.stdout.flush()"],
        name="longline",
    )
    assert proc.wait(20) == 0
    assert proc._drained.wait(20)
    assert proc.log_path.stat().st_size == 10_000_000
    tail = proc.tail(5)
    assert len(tail) < 100_000 and tail.endswith("y")
    assert "characters cut" in tail
    assert sum(len(d) for _, d in proc._sink._tail) <= 2 * tracker.tail_bytes


def test_tail_is_bounded_in_lines(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path, tail_lines=100) as t:
        proc = t.start([PY, "-c", "for i in range(5000): print(i)"], name="many")
        assert proc.wait(10) == 0 and proc._drained.wait(10)
        assert proc.tail(3) == "4997\n4998\n4999\n"
        assert len(proc.tail(10_000).splitlines()) == 100
        assert sum(d.count(b"\n") for _, d in proc._sink._tail) == 100


def test_subscribers_get_batches_and_a_slow_one_blocks_nothing(tracker: Tracker) -> None:
    got: list[OutputChunk] = []
    slow_calls = []
    release = threading.Event()

    def slow(batch: list[OutputChunk]) -> None:
        slow_calls.append(len(batch))
        release.wait(5)

    proc = tracker.start(
        [PY, "-c", "import sys\nfor i in range(20000): print(i)\nprint('err', file=sys.stderr)"],
        name="sub",
    )
    unsub_fast = proc.subscribe(got.extend)
    unsub_slow = proc.subscribe(slow)
    assert proc.wait(10) == 0
    assert proc._drained.wait(10)  # draining finished although `slow` is stuck
    release.set()
    assert until(lambda: any(c.stream == "stderr" for c in got))
    unsub_fast()
    unsub_slow()
    assert slow_calls


def test_async_twins(tmp_path: Path) -> None:
    async def main() -> None:
        with Tracker(log_dir=tmp_path) as t:
            proc = await t.astart("sleep 60", name="a")
            assert proc.is_running()
            report = await t.acleanup(grace=0.5)
            assert [o.pid for o in report.outcomes] == [proc.pid]
            assert report.outcomes[0].ended_by == "SIGTERM"

    anyio.run(main)


def test_exit_code_and_stop_report(tracker: Tracker) -> None:
    proc = tracker.start("exit 3", name="three")
    assert proc.wait(10) == 3
    assert str(proc.state) == "exited 3" and proc.state.phase is Phase.EXITED
    report = proc.stop()
    assert [o.ended_by for o in report.outcomes] == ["exited"]


def test_without_psutil(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['psutil'] = None\n"
        "from ipyproctrack import Tracker\n"
        f"t = Tracker(log_dir={str(tmp_path)!r})\n"
        "p = t.start('sleep 60 & sleep 60', name='x')\n"
        "import time; time.sleep(0.3)\n"
        "r = t.close(grace=0.5)\n"
        "print(r.discovery, len(r.outcomes), r.ok)\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    discovery, count, ok = out.stdout.split()
    assert discovery == discovery_name()
    assert int(count) == 3 and ok == "True"


def test_cleanup_never_raises(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    ct = create_time(child.pid)
    assert ct is not None

    def broken_reap() -> bool:
        raise RuntimeError("boom")

    try:
        report = run_teardown(
            [Target(name="c", root=ProcId(child.pid, ct), tag="t", group=child.pid,
                    reap=broken_reap)],
            grace=0.5,
        )
        assert [(o.pid, o.ended_by) for o in report.outcomes] == [(child.pid, "SIGTERM")]
    finally:
        if child.poll() is None:
            kill_by_identity([(child.pid, ct)])
        child.wait(5)


@pytest.mark.skipif(not plat.HAS_SUBREAPER, reason="needs PR_SET_CHILD_SUBREAPER (Linux)")
def test_env_i_daemon_is_found_through_the_subreaper(tracker: Tracker, tmp_path: Path) -> None:
    command, pidfile = start_nasty(tmp_path, env_i=True)
    proc = tracker.start(command, name="nasty")
    wait_nasty_ready(pidfile)
    members = read_nasty_pids(pidfile)
    untagged = [pid for role, pid, _ in members if "env" in role and "daemon" in role]
    assert untagged, members
    report = tracker.cleanup(grace=1.0)
    alive = wait_dead([(pid, ct) for _, pid, ct in members], 2.0)
    assert alive == [], f"still alive: {alive}\n{report}"
    assert set(untagged) <= {o.pid for o in report.outcomes if o.found_by == "tree"}
    keeper = proc._helpers[0]
    assert all(o.pid != keeper.pid for o in report.outcomes)  # helpers are not user processes
    assert wait_dead([(keeper.pid, keeper.create_time)], 2.0) == []


def test_signal_death_and_no_helper_left(tracker: Tracker) -> None:
    proc = tracker.start("kill -TERM $$", name="selfkill")
    assert proc.wait(10) == -15
    assert str(proc.state) == "killed by SIGTERM" and proc.state.returncode == -15
    assert proc._drained.wait(10)  # the keeper exits once its subtree is empty
    for helper in proc._helpers:
        assert wait_dead([(helper.pid, helper.create_time)], 2.0) == []
    assert [p.name for p in tracker.processes()] == ["selfkill"]
    assert proc.tree() == []


def test_forked_child_never_tears_down_the_parents_processes(tmp_path: Path) -> None:
    # A forked child inherits the Tracker and the atexit hook; exiting must not stop
    # the parent's tree, and it cannot start or clean up anything itself.
    code = (
        "import os, sys\n"
        "from ipyproctrack import Tracker, TrackerClosedError\n"
        f"t = Tracker(log_dir={str(tmp_path)!r})\n"
        "p = t.start('sleep 60', name='s')\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    r = t.cleanup()\n"
        "    assert 'forked child' in r.messages[0] and not r.outcomes, r\n"
        "    try:\n"
        "        t.start('sleep 1')\n"
        "    except TrackerClosedError:\n"
        "        pass\n"
        "    else:\n"
        "        os._exit(3)\n"
        "    sys.exit(0)  # runs atexit: it must leave the parent's processes alone\n"
        "_, status = os.waitpid(child, 0)\n"
        "print(os.waitstatus_to_exitcode(status), p.is_running(), p.tree() != [])\n"
        "r = t.close(grace=0.5)\n"
        "print(r.ok, len(r.outcomes))\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True", "True", "True", "1"], out.stdout + out.stderr


def test_a_name_whose_tree_outlives_its_root_stays_in_use(tracker: Tracker) -> None:
    launcher = tracker.start("sleep 300 & exit 0", name="db")  # like `pg_ctl start`
    assert launcher.wait(10) == 0
    server = launcher.tree()
    assert len(server) == 1
    with pytest.raises(NameInUseError, match="'db' exited 0 but its tree still runs"):
        tracker.start("sleep 300", name="db")
    assert tracker.get("db") is launcher
    again = tracker.start("sleep 300", name="db", replace=True, replace_grace=0.5)
    assert wait_dead([(server[0].pid, server[0].create_time)], 2.0) == []
    assert tracker.get("db") is again and again.is_running()


def test_tag_finds_a_process_outside_the_tree(tmp_path: Path) -> None:
    # A tag of this run's own: another test run's teardown of a fixed tag would end ours.
    tag = f"outside-tag-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ, IPYPROCTRACK_PROCESS=tag)
    stray = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        ct = create_time(stray.pid)
        assert ct is not None
        # Popen returns once the exec is under way, but /proc shows the new environment only
        # once it has finished: before that, there is no tag to find.
        assert until(lambda: procfs.read_tags(stray.pid)[1] == tag, 10)
        target = Target(name="t", root=None, tag=tag, reap=lambda: bool(stray.poll()))
        report = run_teardown([target], grace=1.0)
        assert [(o.pid, o.found_by, o.ended_by) for o in report.outcomes] == [
            (stray.pid, "tag", "SIGTERM")
        ]
        # An inexact tag (a prefix, a suffix) is never a match.
        for inexact in (tag[:-1], tag + "0"):
            again = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
            try:
                report = run_teardown([Target(name="t", root=None, tag=inexact)], grace=0.2)
                assert report.outcomes == [] and again.poll() is None
            finally:
                again.kill()
                again.wait()
    finally:
        if stray.poll() is None:
            stray.kill()
        stray.wait()


def test_a_failed_rotation_closes_no_foreign_descriptor(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    log = RotatingLog(folder / "x.log", max_bytes=100, backups=2)
    log.write(b"a" * 100)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()  # a /tmp cleaner removed the log directory
    log.write(b"b" * 10)  # the rotation fails: recorded, not raised
    assert log.error is not None and log.error.startswith("no log: ")
    r, w = os.pipe()  # likely reuses the number the log had
    try:
        for _ in range(3):
            log.write(b"c" * 200)
        os.write(w, b"still open")
        assert os.read(r, 100) == b"still open"
        log.close()  # never raises
    finally:
        os.close(r)
        os.close(w)


def test_subscriber_thread_ends_when_the_output_closes(tracker: Tracker) -> None:
    release = threading.Event()

    def slow(batch: list[OutputChunk]) -> None:
        release.wait(5)

    proc = tracker.start([PY, "-c", "print('a'); print('b')"], name="sub-end")
    proc.subscribe(slow)
    assert proc.wait_output_done(10)
    release.set()
    assert until(
        lambda: not [t for t in threading.enumerate() if t.name == "ipyproctrack-subscriber"]
    )


def test_on_exit_callback_may_restart_the_process(tracker: Tracker) -> None:
    restarted: list[object] = []

    def restart(proc: object) -> None:
        restarted.append(tracker.start([PY, "-c", "print('second life')"], name="phoenix"))

    first = tracker.start("exit 1", name="phoenix")
    first.on_exit(restart)
    assert until(lambda: bool(restarted))
    second = tracker.get("phoenix")
    assert second is restarted[0] and second is not first
    assert second.wait(10) == 0 and second.wait_output_done(10)
    assert second.tail() == "second life\n"


def test_close_racing_a_start_leaves_nothing(tracker: Tracker) -> None:
    tracker.start("trap '' TERM; exec sleep 60", name="stubborn")
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            tracker.start("sleep 60", name="stubborn", replace=True)
        except BaseException as exc:
            errors.append(exc)

    starter = threading.Thread(target=restart)
    starter.start()
    time.sleep(0.2)  # the restart is now waiting out the old tree's grace
    tracker.close(grace=0.5)
    starter.join(10)
    assert tracker.closed
    assert all(not p.has_live_tree() for p in tracker.processes())


def test_trees_of_every_process_from_one_scan(tracker: Tracker) -> None:
    a = tracker.start("sleep 60 & sleep 60", name="a")
    b = tracker.start("sleep 60", name="b")
    assert until(lambda: len(a.tree()) == 3)
    trees = tracker.trees()
    assert {k: len(v) for k, v in trees.items()} == {"a": 3, "b": 1}
    assert [i.pid for i in trees["b"]] == [b.pid]


def test_a_readiness_check_that_breaks_leaves_nothing(tracker: Tracker) -> None:
    from ipyproctrack import ReadinessCheck

    class Broken(ReadinessCheck):
        def describe(self) -> str:
            return "broken"

        def prepare(self, proc: object) -> None:
            raise RuntimeError("prepare failed")

        async def check(self, proc: object) -> bool:
            return False

    with pytest.raises(RuntimeError, match="prepare failed"):
        tracker.start("exec sleep 60", name="b", ready=Broken())
    proc = tracker.get("b")
    assert proc.wait(5) is not None  # torn down: `sleep 60` does not end by itself
    assert proc.state.phase is Phase.FAILED  # final: the teardown that followed kept it
    assert proc.wait_output_done(5)  # its pipes were drained to the end
    assert proc.tree() == []


def test_a_stopped_process_reads_stopped_as_soon_as_it_exits(tracker: Tracker) -> None:
    states: list[str] = []
    proc = tracker.start("exec sleep 60", name="s")
    proc.on_exit(lambda p: states.append(str(p.state)))
    proc.stop(grace=1.0)
    assert until(lambda: bool(states))
    assert states == ["stopped"]


@pytest.mark.usefixtures("ctrl_c")
def test_the_state_machine_through_an_interrupted_wait(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    ready, polled = threading.Event(), threading.Event()

    def probe() -> bool:
        polled.set()
        return ready.is_set()

    def interrupt_once_polled() -> None:  # what Ctrl-C (a kernel interrupt) does
        if polled.wait(10):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    launched: list[Phase] = []
    caplog.set_level(logging.DEBUG, logger="ipyproctrack._engine.process")
    threading.Thread(target=interrupt_once_polled, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        tracker.start("exec sleep 60", name="w", ready=CallableReady(probe),
                      on_launched=lambda p: launched.append(p.state.phase))
    proc = tracker.get("w")
    assert launched == [Phase.STARTING]
    assert proc.state == ProcessState(Phase.RUNNING) and proc.is_running()  # it runs on
    ready.set()
    seconds = proc.wait_ready(10)
    assert proc.state == ProcessState(Phase.READY, None, seconds)
    proc.stop(grace=1.0)
    assert proc.wait(5) is not None and proc.stopped
    assert proc.state == ProcessState(Phase.STOPPED, proc.returncode, seconds)
    moves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("w: ")]
    assert moves == [
        "w: starting -> running", "w: running -> starting", "w: starting -> ready",
        "w: ready -> stopped", "w: stopped -> killed ignored",  # STOPPED is final
    ]


def test_callbacks_that_raise_are_logged_and_harm_no_other(
    tracker: Tracker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = tmp_path / "gate"
    proc = tracker.start(f"while [ ! -e {gate} ]; do sleep 0.01; done; echo hello", name="cb")
    got: list[str] = []

    def broken(_: object) -> None:
        raise RuntimeError("boom")

    proc.subscribe(broken)
    proc.subscribe(lambda chunks: got.extend(c.text for c in chunks))
    proc.on_exit(broken)
    proc.on_exit(lambda p: got.append(f"exit {p.returncode}"))
    gate.touch()
    assert until(lambda: sorted(got) == ["exit 0", "hello\n"]), got

    def logged() -> dict[str, str]:  # logger -> message, for the records of our "boom"
        return {r.name: r.getMessage() for r in caplog.records
                if r.exc_info and "boom" in str(r.exc_info[1])}

    assert until(lambda: len(logged()) == 2), logged()
    assert logged()["ipyproctrack._engine.output"].startswith("output subscriber")
    assert logged()["ipyproctrack._engine.process"].startswith("cb: on_exit callback")


def test_a_broken_on_change_is_logged_once_and_stops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("display boom")

    gate = tmp_path / "gate"
    script = f"echo first; while [ ! -e {gate} ]; do sleep 0.01; done; echo second; exit 3"
    with Tracker(log_dir=tmp_path / "logs", on_change=broken) as tracker:
        proc = tracker.start(script, name="oc")
        assert until(lambda: proc.tail() == "first\n")  # on_change has raised by now
        gate.touch()
        assert proc.wait(10) == 3  # the exit is still seen
        assert proc.wait_output_done(10)
        assert proc.tail() == "first\nsecond\n"  # and the drain went on
    assert len(calls) >= 2
    errors = [r for r in caplog.records if r.name == "ipyproctrack._engine.tracker"
              and r.levelno == logging.ERROR]
    assert len(errors) == 1 and "display boom" in str(errors[0].exc_info)


@pytest.mark.skipif(not plat.IS_LINUX, reason="runs the POSIX fallback on Linux")
def test_posix_without_psutil_still_ends_the_group(tmp_path: Path) -> None:
    # What macOS without psutil gets: the `ps` scan (no tags: procps has no `ps -E`) and
    # the launch's group. Run here by switching the scanner to ps.
    code = (
        "import sys; sys.modules['psutil'] = None\n"
        "from ipyproctrack._proc import scan\n"
        "scan.use_scanner(scan.PS)\n"
        "from ipyproctrack import Tracker\n"
        f"t = Tracker(log_dir={str(tmp_path)!r})\n"
        "p = t.start('sleep 60 & exec sleep 60', name='x')\n"
        "import time; time.sleep(0.5)\n"
        "print(open(f'/proc/{p.pid}/stat').read().split()[4])\n"  # the group it sits in
        "r = t.close(grace=0.5)\n"
        "print(p.wait(5), scan.discovery_name())\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pgid, returncode, discovery = out.stdout.split()
    assert discovery == "ps"
    assert returncode == "-15"  # ended by SIGTERM
    assert until(lambda: _live_in_group(pgid) == [], 3.0), _live_in_group(pgid)


def _live_in_group(pgid: str) -> list[str]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if group == pgid and state != "Z":
            found.append(pid)
    return found


def test_generated_names_follow_the_main_command(tracker: Tracker) -> None:
    first = tracker.start("cd /tmp && exec sleep 60")  # "sleep" is only a fallback base
    second = tracker.start([PY, "-c", "import time; time.sleep(60)"])
    third = tracker.start("FOO=1 exec python3 -c 'import time; time.sleep(60)'")
    assert first.name == "sleep-1"
    assert second.name == f"{Path(PY).name}-1"
    assert third.name == "python3-1"
