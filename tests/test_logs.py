"""Logs over a long session: one per name, private, failures shown, a disk budget, and
the per-user base directory that keeps only the newest ended sessions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from _procs import unshare, until

from ipyproctrack import LaunchError, Tracker
from ipyproctrack._engine.logdirs import default_base, new_session_dir
from ipyproctrack._engine.naming import log_stem
from ipyproctrack._proc.scan import get_record

PY = sys.executable
MiB = 2**20


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- one log per name ---------------------------------------------------------------------


def test_every_name_gets_its_own_log(tracker: Tracker) -> None:
    names = ["a/b", "a_b", "a?b", "αβγ-δ", "сервер-😀", "сервер-🙂", "n" * 300]
    procs = [tracker.start([PY, "-c", f"print('output of {i}')"], name=name)
             for i, name in enumerate(names)]
    for proc in procs:
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
    paths = [p.log_path for p in procs]
    assert len(set(paths)) == len(names)
    for i, proc in enumerate(procs):
        assert proc.log_error is None, proc.log_error
        assert proc.log_path.parent == tracker.log_dir
        assert len(proc.log_path.name.encode()) < 100
        assert proc.log_path.read_text() == f"output of {i}\n"
    assert procs[3].log_path.name.startswith("αβγ-δ-")  # readable where it can be


def test_a_rerun_of_a_name_appends_to_its_log(tracker: Tracker) -> None:
    first = tracker.start([PY, "-c", "print('one')"], name="web")
    assert first.wait(10) == 0 and first.wait_output_done(10)
    second = tracker.start([PY, "-c", "print('two')"], name="web")
    assert second.wait(10) == 0 and second.wait_output_done(10)
    assert second.log_path == first.log_path
    assert second.log_path.read_text() == "one\ntwo\n"


# --- private logs ---------------------------------------------------------------------------


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    shared, victim = tmp_path / "shared", tmp_path / "victim"
    shared.mkdir(mode=0o700)
    victim.write_text("precious\n")
    (shared / f"{log_stem('web')}.log").symlink_to(victim)
    with Tracker(log_dir=shared) as t:
        proc = t.start([PY, "-c", "print('SECRET-TOKEN=1234')"], name="web")
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
        assert proc.log_error is not None
        assert proc.log_error.startswith("no log: refusing to follow a symlink on ")
        assert proc.log_status == proc.log_error
        assert "SECRET-TOKEN" in proc.tail()  # the process ran; its tail is kept
    assert victim.read_text() == "precious\n"


def test_the_kernel_end_record_never_follows_a_symlink(tracker: Tracker, tmp_path: Path) -> None:
    from ipyproctrack._notebook import session

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tracker.log_dir / session.KERNEL_END_RECORD).symlink_to(victim)
    with pytest.raises(OSError):
        session._write_record(tracker, "test", False, 0.5, 0.1, None)
    assert victim.read_text() == "precious\n"
    (tracker.log_dir / session.KERNEL_END_RECORD).unlink()
    session._write_record(tracker, "test", False, 0.5, 0.1, None)
    assert _mode(tracker.log_dir / session.KERNEL_END_RECORD) == 0o600


def test_directories_are_0700_and_logs_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default base is under the temporary directory: this test's, not /tmp
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with Tracker(log_max_bytes=1000, log_backups=2) as default, \
            Tracker(log_dir=tmp_path / "new" / "logs") as configured:
        assert default.log_dir.parent == default_base()
        assert _mode(default_base()) == 0o700
        for t in (default, configured):
            assert _mode(t.log_dir) == 0o700
        proc = default.start([PY, "-c", "print('x' * 2500)"], name="big")
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
        files = proc.log_files()
        assert len(files) == 3  # two rotations: every file made by us is private
        assert all(_mode(f) == 0o600 for f in files)


def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)  # nobody's
    else:
        foreign = Path("/")  # root's
    with pytest.raises(LaunchError, match=r"belongs to another user \(uid \d+\)"):
        Tracker(log_dir=foreign)


def test_a_directory_writable_by_others_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(LaunchError, match="is writable by other users"):
        Tracker(log_dir=shared)
    shared.chmod(0o1777)  # like /tmp: others cannot replace our files
    with Tracker(log_dir=shared) as t:
        assert t.log_dir == shared.resolve()


# --- failures are shown ---------------------------------------------------------------------


def test_a_removed_log_directory_is_shown_and_the_process_runs(tmp_path: Path) -> None:
    from ipyproctrack._notebook.views import LogsView, status_line

    with Tracker(log_dir=tmp_path / "logs") as t:
        (tmp_path / "logs").rmdir()  # a tmp cleaner
        proc = t.start([PY, "-c", "print('still here')"], name="web")
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
        assert proc.tail() == "still here\n"
        expected = f"no log: no such file or directory on {proc.log_path}"
        assert proc.log_error == expected and proc.log_status == expected
        view = LogsView(proc, 10)
        assert expected in repr(view) and "full log" not in repr(view)
        assert expected in view._repr_html_() and "full log" not in view._repr_html_()
        assert expected in status_line(proc)


def test_a_log_deleted_while_running_is_made_again_or_reported(tmp_path: Path) -> None:
    ticker = "import time\nfor i in range(2000):\n    print(i, flush=True); time.sleep(0.01)\n"
    with Tracker(log_dir=tmp_path / "logs") as t:
        proc = t.start([PY, "-c", ticker], name="ticker")
        assert until(lambda: proc.log_path.exists() and proc.log_path.stat().st_size > 0)
        proc.log_path.unlink()  # the file alone: a new one takes the output from now on
        assert until(lambda: proc.log_path.exists() and proc.log_path.stat().st_size > 0)
        assert proc.log_error is None
        proc.log_path.unlink()
        (tmp_path / "logs").rmdir()  # the whole directory: nowhere to write
        assert until(lambda: proc.log_error is not None)
        assert proc.log_error == f"no log: no such file or directory on {proc.log_path}"
        assert proc.is_running()
        proc.stop(grace=0.5)


def test_an_unwritable_log_is_shown(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / f"{log_stem('web')}.log").mkdir()  # not writable, even for root
    with Tracker(log_dir=logs) as t:
        proc = t.start([PY, "-c", "print('hi')"], name="web")
        assert proc.wait(10) == 0 and proc.wait_output_done(10)
        assert proc.log_error == f"no log: is a directory on {proc.log_path}"


# Runs in a mount namespace of its own (root only), with the logs on a 1 MiB tmpfs: the
# server writes 4 MiB, then a last line, then waits to be stopped.
_FULL_DISK = r"""
import json, os, subprocess, sys, time
from ipyproctrack import Tracker
mnt = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mnt], check=True)
writer = ("import sys, time; w = sys.stdout.buffer; w.write(b'x' * (4 << 20)); "
          "w.write(b'\\nthe last line\\n'); w.flush(); time.sleep(60)")
with Tracker(log_dir=os.path.join(mnt, "logs"), log_budget_bytes=0) as t:
    proc = t.start([sys.executable, "-c", writer], name="web")
    deadline = time.monotonic() + 30
    while "the last line" not in proc.tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = {"tail": proc.tail().splitlines()[-1:], "received": proc.bytes_received,
           "pumped": proc._root.pump is not None, "error": proc.log_error,
           "running": proc.is_running(),
           "log_size": proc.log_path.stat().st_size if proc.log_path.exists() else None}
    out["cleanup_ok"] = t.cleanup(grace=1).ok
print(json.dumps(out))
"""


@pytest.mark.parametrize("keeper_drain", ["0", "1"], ids=["kernel-drain", "keeper-pump"])
def test_a_full_disk_is_shown_and_the_server_is_still_drained(
    tmp_path: Path, keeper_drain: str
) -> None:
    # The pump's write error ("W") hands the output to the kernel; the kernel's own drain
    # records the error and keeps reading. Either way nothing stalls and the tail goes on.
    namespace = unshare("--mount", "--propagation", "private")
    if namespace is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and a mount namespace")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "IPYPROCTRACK_KEEPER_DRAIN": keeper_drain}
    run = subprocess.run([*namespace, PY, "-c", _FULL_DISK, str(mnt)],
                         capture_output=True, text=True, timeout=90, env=env, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["pumped"] is (keeper_drain == "1")
    assert out["tail"] == ["the last line"]
    assert out["received"] == (4 << 20) + len("\nthe last line\n")
    assert out["error"] is not None and out["error"].startswith("no log: no space left on device")
    assert out["running"] and out["cleanup_ok"]
    assert out["log_size"] is not None and out["log_size"] <= 1 << 20


# --- the disk budget ------------------------------------------------------------------------


def _disk_use(folder: Path) -> tuple[int, int]:
    """(bytes in files, bytes of allocated blocks) under ``folder``, racing the writers."""
    size = blocks = 0
    for entry in os.scandir(folder):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        size += st.st_size
        blocks += st.st_blocks * 512
    return size, blocks


@pytest.mark.parametrize("keeper_drain", ["0", "1"], ids=["kernel-drain", "keeper-pump"])
def test_four_floods_stay_within_the_session_budget(
    tmp_path: Path, keeper_drain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the pump, the room granted ahead (its file's and the ready next file's) counts.
    monkeypatch.setenv("IPYPROCTRACK_KEEPER_DRAIN", keeper_drain)
    budget = 8 * MiB
    logs = tmp_path / "logs"
    with Tracker(log_dir=logs, log_budget_bytes=budget) as t:
        floods = [t.start(["yes", f"flood {i}"], name=f"flood-{i}") for i in range(4)]
        worst = (0, 0)

        def written() -> bool:
            nonlocal worst
            use = _disk_use(logs)
            worst = (max(worst[0], use[0]), max(worst[1], use[1]))
            return sum(p.bytes_received for p in floods) > 6 * budget

        assert until(written, timeout=60)
        report = t.cleanup(grace=0.5)
        assert report.ok
        assert worst[0] <= budget, worst
        assert worst[1] <= budget + MiB // 4, worst
        after = _disk_use(logs)
        assert after[0] <= budget and after[1] <= budget + MiB // 4, after
        for p in floods:
            assert p.log_error is None
            assert p.log_path.exists()


def test_unlimited_budget_keeps_everything(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path, log_budget_bytes=0, log_max_bytes=MiB,
                 log_backups=-1) as t:
        proc = t.start([PY, "-c", "import sys; sys.stdout.write('z' * (5 * 2**20))"],
                       name="five")
        assert proc.wait(20) == 0 and proc.wait_output_done(20)
        assert sum(f.stat().st_size for f in proc.log_files()) == 5 * MiB


# --- the per-user base directory ------------------------------------------------------------


def test_only_the_newest_ended_sessions_are_kept(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = []
    for i in range(5):  # a dead owner: its pid exited (and any reuse has another start)
        d = base / f"session-{gone.pid}-{1000.0 + i:.3f}-dead{i}"
        d.mkdir()
        (d / "web.log").write_text("old\n")
        os.utime(d, (1_000_000 + i, 1_000_000 + i))
        dead.append(d)
    me = get_record(os.getpid())
    assert me is not None
    live = base / f"session-{os.getpid()}-{me.create_time:.3f}-live"
    live.mkdir()
    os.utime(live, (1, 1))  # the oldest of all, but its owner lives
    other = base / "notes"
    other.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    (base / f"session-{gone.pid}-1.000-link").symlink_to(outside)

    new = new_session_dir(base)

    left = {p.name for p in base.iterdir()}
    assert new.name in left and new.name.startswith(f"session-{os.getpid()}-")
    assert _mode(new) == 0o700
    assert {d.name for d in dead[2:]} <= left  # the 3 newest dead ones
    assert not {d.name for d in dead[:2]} & left
    assert {live.name, "notes", f"session-{gone.pid}-1.000-link"} <= left
    assert (outside / "keep.txt").read_text() == "keep\n"


def test_an_unsafe_base_is_not_used(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o777)  # open to everyone: a private temporary directory instead
    new = new_session_dir(base)
    try:
        assert new.parent != base and _mode(new) == 0o700
    finally:
        new.rmdir()


# --- scale ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_400_processes_under_a_soft_limit_of_1024(tmp_path: Path) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit of open files is {hard}")
    code = (
        "import resource, sys\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))\n"
        "from ipyproctrack import Tracker\n"
        f"t = Tracker(log_dir={str(tmp_path)!r}, grace=0.5)\n"
        "procs = [t.start(['sleep', '60'], name=f's{i}') for i in range(400)]\n"
        "running = sum(p.is_running() for p in procs)\n"
        "r = t.cleanup()\n"
        "ended = all(p.wait(10) is not None for p in procs)\n"
        "gone = ended and not any(p.has_live_tree() for p in procs)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 1024, running, r.ok,\n"
        "      len(r.outcomes), gone)\n"
        "t.close()\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "400", "True", "400", "True"], out.stdout


def test_subscribers_share_one_thread(tracker: Tracker) -> None:
    got: list[int] = []
    ticker = "import time\nwhile True:\n    print('x', flush=True); time.sleep(0.05)\n"
    procs = [tracker.start([PY, "-c", ticker], name=f"p{i}") for i in range(3)]
    unsubs = [p.subscribe(lambda batch: got.append(len(batch))) for p in procs for _ in "ab"]
    assert until(lambda: len(got) >= 12)
    names = [th.name for th in threading.enumerate()]
    assert names.count("ipyproctrack-subscriber") == 1
    for unsub in unsubs:
        unsub()
    assert until(lambda: "ipyproctrack-subscriber" not in
                     [th.name for th in threading.enumerate()])
