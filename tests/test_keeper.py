"""The POSIX keeper (ipyproctrack/_keeper/) and its client, with real processes (Linux).

Each test tags what it starts with its own unique IPYPROCTRACK_SESSION value, so the
conftest leak check sees it, and the ``started`` fixture SIGKILLs by identity whatever the
test started (and whatever carries the test's tag) before the leak check runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from _procs import create_time, is_alive, kill_by_identity, tagged_processes, wait_dead
from _trees import read_nasty_pids, start_nasty, wait_nasty_ready

from ipyproctrack._keeper import main as keeper_main
from ipyproctrack._keeper.client import (
    KEEPER_PATH,
    KeeperProcess,
    KeptProcess,
    keeper_argv,
    make_lifeline,
    spawn_kept,
)
from ipyproctrack._keeper.protocol import encode_event, read_status_events
from ipyproctrack._proc import procfs, scan
from ipyproctrack.errors import LaunchError

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the keeper tests use /proc and the subreaper"
)

REPO = Path(__file__).resolve().parent.parent
GRACE = 1.0
SH = shutil.which("sh") or "/bin/sh"
SLEEP = shutil.which("sleep") or "/bin/sleep"
ENV = shutil.which("env") or "/usr/bin/env"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"

# A small nasty tree: a SIGTERM ignorer, a plain child, and a double-forked setsid daemon
# under `env -i` (no tag). Each member appends "ROLE PID" to the pid file ($1).
SMALL_TREE = textwrap.dedent(
    f"""\
    pf="$1"
    (trap '' TERM INT HUP; echo "ignorer $BASHPID" >>"$pf"; exec {SLEEP} 1000) &
    ( {ENV} -i {SETSID} {SH} -c 'echo "daemon-env-i $$" >>"$1"; exec {SLEEP} 1000' sh "$pf" & )
    {SLEEP} 1000 &
    echo "child $!" >>"$pf"
    echo "root $$" >>"$pf"
    wait
    """
)
SMALL_TREE_COUNT = 4

# A double-forked setsid daemon that keeps its environment (so it carries the launch's
# tag); the command exits at once. The daemon writes its pid to the pid file ($1).
TAGGED_DAEMON = (
    f'( {SETSID} {SH} -c \'echo "$$" >"$1.tmp"; mv "$1.tmp" "$1"; '
    f'exec {SLEEP} 1000\' sh "$1" & ); exit 0'
)


_P = TypeVar("_P", bound=KeeperProcess)

class Started:
    """What a test started: killed by (pid, create_time) at the end, tag sweep included."""

    def __init__(self) -> None:
        self.session = f"keeper-test-{uuid.uuid4().hex[:12]}"
        self.idents: list[tuple[int, float]] = []
        self.popens: list[KeeperProcess] = []
        self.fds: list[int] = []
        self._n = 0

    def tag(self) -> str:
        self._n += 1
        return f"{self.session}-{self._n}"

    def env(self, tag: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPYPROCTRACK_")}
        env.update(IPYPROCTRACK_SESSION=self.session, IPYPROCTRACK_PROCESS=tag)
        return env

    def note(self, pid: int) -> tuple[int, float] | None:
        ctime = create_time(pid)
        if ctime is None:
            return None
        self.idents.append((pid, ctime))
        return pid, ctime

    def popen(self, proc: _P) -> _P:
        self.popens.append(proc)
        self.note(proc.pid)
        return proc

    def kept(self, kp: KeptProcess) -> KeptProcess:
        self.popen(kp.keeper)
        self.note(kp.pid)
        self.fds.append(kp.status_fd)
        return kp

    def finish(self) -> None:
        mine = f"IPYPROCTRACK_SESSION={self.session}".encode()
        for pid, (ctime, _) in tagged_processes().items():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if mine in env.split(b"\0"):
                self.idents.append((pid, ctime))
        kill_by_identity(self.idents)
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        wait_dead(self.idents, 5.0)
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def started() -> Iterator[Started]:
    s = Started()
    try:
        yield s
    finally:
        s.finish()


@pytest.fixture
def lifeline() -> Iterator[tuple[int, int]]:
    r, w = make_lifeline()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def kept(
    started: Started,
    lifeline: tuple[int, int],
    argv: list[str],
    *,
    out: int = subprocess.DEVNULL,
    subreaper: bool = True,
) -> KeptProcess:
    tag = started.tag()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        kp = spawn_kept(
            argv,
            cwd=str(REPO),
            env=started.env(tag),
            stdout=out if out != subprocess.DEVNULL else null,
            stderr=null,
            lifeline_fd=lifeline[0],
            grace=GRACE,
            subreaper=subreaper,
            tag=tag,
            session=started.session,
        )
    finally:
        os.close(null)
    return started.kept(kp)


def read_events(fd: int, timeout: float, *, until: str | None = None) -> list[dict[str, object]]:
    """Status events until EOF (the keeper exited) or until an ``until`` event arrives."""
    buf = bytearray()
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): the fd may be 1024 or more
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"status events so far: {events}")
        if not poller.poll(max(1, int(remaining * 1000))):
            continue
        data = os.read(fd, 4096)
        if not data:
            return events
        events += read_status_events(buf, data)
        if until is not None and any(e.get("event") == until for e in events):
            return events


def ppid_of(pid: int) -> int | None:
    st = procfs.read_stat(pid)
    return st[1] if st is not None else None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def read_pidfile(path: Path, count: int, timeout: float = 10.0) -> dict[str, int]:
    def complete() -> bool:
        return path.exists() and len(path.read_text().splitlines()) >= count

    wait_for(complete, timeout, f"{path} did not list {count} processes")
    return {role: int(pid) for role, pid in (ln.split() for ln in path.read_text().splitlines())}


def read_daemon_pid(path: Path, timeout: float = 10.0) -> int:
    wait_for(path.exists, timeout, f"{path} was not written")
    return int(path.read_text())


# --- (a) pid, parentage, exit codes -------------------------------------------------------


def test_command_runs_under_keeper_and_exit_code_arrives(
    started: Started, lifeline: tuple[int, int], tmp_path: Path
) -> None:
    out_path = tmp_path / "out"
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        kp = kept(started, lifeline, [SH, "-c", "echo hello; sleep 0.5; exit 7"], out=out)
    finally:
        os.close(out)
    assert kp.pid != kp.keeper.pid
    assert ppid_of(kp.pid) == kp.keeper.pid
    assert kp.subreaper is True
    assert kp.start_time == scan.start_seconds(kp.pid) > 0
    # the command runs in the keeper's own session/group, which is not ours
    assert os.getpgid(kp.pid) == kp.keeper.pid == os.getsid(kp.pid)
    events = read_events(kp.status_fd, 10)
    assert events == [{"event": "exited", "returncode": 7}]
    assert kp.keeper.wait(timeout=10) == 7
    assert out_path.read_bytes() == b"hello\n"


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "TERM"), (signal.SIGKILL, "KILL")])
def test_signal_death_is_a_negative_returncode(
    started: Started, lifeline: tuple[int, int], sig: int, name: str
) -> None:
    kp = kept(started, lifeline, [SH, "-c", f"kill -{name} $$"])
    events = read_events(kp.status_fd, 10)
    assert events == [{"event": "exited", "returncode": -sig}]
    assert kp.keeper.wait(timeout=10) == 128 + sig  # the keeper exits like a shell would


def test_command_gets_default_signal_dispositions(
    started: Started, lifeline: tuple[int, int]
) -> None:
    """The keeper ignores TERM/INT/HUP; its command must not inherit that."""
    kp = kept(started, lifeline, [SLEEP, "1000"])
    status = Path(f"/proc/{kp.pid}/status").read_text()
    ignored = int(next(ln for ln in status.splitlines() if ln.startswith("SigIgn:")).split()[1], 16)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        assert not ignored & (1 << (sig - 1)), f"{sig!r} is ignored in the command"
    os.kill(kp.pid, signal.SIGTERM)
    assert read_events(kp.status_fd, 10) == [{"event": "exited", "returncode": -signal.SIGTERM}]


def test_keeper_ignores_group_sigterm_and_exits_after_its_command(
    started: Started, lifeline: tuple[int, int]
) -> None:
    """The engine's teardown SIGTERMs the keeper's group: the command dies, the keeper
    reaps it and exits by itself."""
    kp = kept(started, lifeline, [SLEEP, "1000"])
    os.killpg(kp.keeper.pid, signal.SIGTERM)
    assert read_events(kp.status_fd, 10) == [{"event": "exited", "returncode": -signal.SIGTERM}]
    assert kp.keeper.wait(timeout=10) == 128 + signal.SIGTERM


# --- (b) launch errors --------------------------------------------------------------------


def test_missing_command_is_a_launch_error(started: Started, lifeline: tuple[int, int]) -> None:
    with pytest.raises(LaunchError, match=r"^command not found: no-such-command-xyz$"):
        kept(started, lifeline, ["no-such-command-xyz", "arg"])


def test_not_executable_is_a_launch_error(
    started: Started, lifeline: tuple[int, int], tmp_path: Path
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    with pytest.raises(LaunchError, match=r"^permission denied: .*script\.sh$"):
        kept(started, lifeline, [str(script)])


def test_missing_cwd_and_empty_command(started: Started, lifeline: tuple[int, int]) -> None:
    tag = started.tag()
    common: dict[str, object] = {
        "env": started.env(tag),
        "stdout": 1,
        "stderr": 2,
        "lifeline_fd": lifeline[0],
        "grace": GRACE,
        "subreaper": True,
        "tag": tag,
        "session": started.session,
    }
    with pytest.raises(LaunchError, match="working directory does not exist"):
        spawn_kept([SLEEP, "1"], cwd="/no/such/dir", **common)  # type: ignore[arg-type]
    with pytest.raises(LaunchError, match="empty command"):
        spawn_kept([], cwd=str(REPO), **common)  # type: ignore[arg-type]


def test_keeper_does_not_start_when_the_kernel_is_gone(started: Started) -> None:
    """A kernel pid that is already dead: nothing is spawned, an error is reported."""
    dead = subprocess.Popen([SH, "-c", "exit 0"])
    dead_start = scan.start_seconds(dead.pid) or 1.0
    dead.wait()
    r, w = os.pipe()
    config = {
        "argv": [SLEEP, "1000"],
        "lifeline_fd": -1,
        "status_fd": w,
        "kernel_pid": dead.pid,
        "kernel_start": dead_start,
        "grace": GRACE,
        "subreaper": True,
        "tag": started.tag(),
        "session": started.session,
    }
    keeper = started.popen(
        subprocess.Popen(keeper_argv(config), pass_fds=(w,), start_new_session=True)
    )
    os.close(w)
    started.fds.append(r)
    assert keeper.wait(timeout=10) == 1
    events = read_events(r, 5)
    assert [e["event"] for e in events] == ["error"]
    assert events[0]["message"] == "the kernel is gone"


# --- (c) the subreaper --------------------------------------------------------------------


def test_env_i_daemon_reparents_to_the_keeper(
    started: Started, lifeline: tuple[int, int], tmp_path: Path
) -> None:
    pidfile = tmp_path / "tree.pids"
    kp = kept(started, lifeline, ["bash", "-c", SMALL_TREE, "tree", str(pidfile)])
    roles = read_pidfile(pidfile, SMALL_TREE_COUNT)
    tree = [m for m in (started.note(pid) for pid in roles.values()) if m is not None]
    daemon = roles["daemon-env-i"]
    assert b"IPYPROCTRACK_" not in Path(f"/proc/{daemon}/environ").read_bytes()
    assert os.getsid(daemon) == daemon  # its own session: out of every group of ours
    wait_for(lambda: ppid_of(daemon) == kp.keeper.pid, 5, "daemon not re-parented to keeper")
    # With the command gone, the keeper stays for the daemon it adopted.
    os.kill(roles["root"], signal.SIGKILL)
    assert read_events(kp.status_fd, 10, until="exited")[-1] == {
        "event": "exited",
        "returncode": -signal.SIGKILL,
    }
    time.sleep(0.2)
    assert kp.keeper.poll() is None
    kill_by_identity(tree)  # the tree, not the keeper
    assert kp.keeper.wait(timeout=10) == 128 + signal.SIGKILL


# --- (f) the keeper leaves once its subtree is empty -------------------------------------


def test_keeper_exits_once_command_and_orphans_are_gone(
    started: Started, lifeline: tuple[int, int]
) -> None:
    out_r, out_w = os.pipe()
    try:
        kp = kept(
            started, lifeline, [SH, "-c", f"echo hi; ({SLEEP} 2.5 >/dev/null &); exit 0"], out=out_w
        )
    finally:
        os.close(out_w)
    with open(out_r, "rb") as out:  # EOF once the command is done: the keeper let go of it
        assert out.read() == b"hi\n"
    assert read_events(kp.status_fd, 10, until="exited") == [{"event": "exited", "returncode": 0}]
    assert kp.keeper.poll() is None  # still reaping the orphaned sleep
    assert kp.keeper.wait(timeout=15) == 0
    assert read_events(kp.status_fd, 5) == []  # EOF: nothing more to say


# --- the lifeline closed on purpose, in this process -------------------------------------


def test_closing_the_lifeline_tears_the_launch_down(started: Started, tmp_path: Path) -> None:
    r, w = make_lifeline()
    started.fds.append(r)
    pidfile = tmp_path / "tree.pids"
    try:
        kp = kept(
            started,
            (r, w),
            ["bash", "-c", SMALL_TREE, "tree", str(pidfile)],
        )
        members = [started.note(pid) for pid in read_pidfile(pidfile, SMALL_TREE_COUNT).values()]
    finally:
        os.close(w)
    t0 = time.monotonic()
    events = read_events(kp.status_fd, 3 + GRACE + 5)
    assert events[0] == {"event": "teardown", "reason": "lifeline"}
    assert {"event": "exited", "returncode": -signal.SIGTERM} in events
    assert events[-1]["event"] == "teardown_done"
    assert kp.keeper.wait(timeout=5) == 128 + signal.SIGTERM
    idents = [m for m in members if m is not None]
    assert wait_dead(idents, 1.0) == []
    assert time.monotonic() - t0 < 3 + GRACE


# --- fd numbers of 1024 and more (select() cannot take them) ------------------------------


def test_keeper_works_with_fd_numbers_above_1024(started: Started) -> None:
    """A busy kernel may hold more than 1023 fds: the lifeline and the status pipe then get
    high numbers, and the keeper must still start and still watch the lifeline."""
    low = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = low + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    nulls: list[int] = []
    w = -1
    try:
        while not nulls or nulls[-1] < low:
            nulls.append(os.open(os.devnull, os.O_RDONLY))
        r, w = make_lifeline()
        started.fds.append(r)
        assert min(r, w) > low
        kp = kept(started, (r, w), [SLEEP, "1000"])
        assert kp.status_fd > low
    finally:
        for fd in nulls:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ppid_of(kp.pid) == kp.keeper.pid
    time.sleep(0.2)
    assert kp.keeper.poll() is None  # the lifeline is open: nothing happens
    os.close(w)
    events = read_events(kp.status_fd, 3 + GRACE + 5)
    assert events[0] == {"event": "teardown", "reason": "lifeline"}
    assert {"event": "exited", "returncode": -signal.SIGTERM} in events
    assert events[-1]["event"] == "teardown_done"
    assert kp.keeper.wait(timeout=5) == 128 + signal.SIGTERM


# --- (d), (e) a killed kernel -------------------------------------------------------------

FAKE_KERNEL = textwrap.dedent(
    """\
    import json, multiprocessing, os, sys, time
    from ipyproctrack._keeper.client import make_lifeline, spawn_kept
    cfg = json.loads(sys.argv[1])
    r, w = make_lifeline()
    mp_pid = None
    if cfg["fork_child"]:  # holds the lifeline's write end: no EOF when we die
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
        child.start()
        mp_pid = child.pid
    null = os.open(os.devnull, os.O_RDWR)
    env = dict(os.environ, **cfg["tags"])
    kp = spawn_kept(cfg["argv"], cwd=cfg["cwd"], env=env, stdout=null, stderr=null,
                    lifeline_fd=r, grace=cfg["grace"], subreaper=cfg["subreaper"],
                    tag=cfg["tags"]["IPYPROCTRACK_PROCESS"],
                    session=cfg["tags"]["IPYPROCTRACK_SESSION"])
    print(json.dumps({"keeper": kp.keeper.pid, "command": kp.pid, "mp": mp_pid}), flush=True)
    time.sleep(600)
    """
)


def run_fake_kernel(
    started: Started,
    argv: list[str],
    *,
    fork_child: bool,
    subreaper: bool = True,
) -> tuple[subprocess.Popen[bytes], dict[str, int | None]]:
    tag = started.tag()
    cfg = {
        "argv": argv,
        "cwd": str(REPO),
        "grace": GRACE,
        "fork_child": fork_child,
        "subreaper": subreaper,
        "tags": {"IPYPROCTRACK_SESSION": started.session, "IPYPROCTRACK_PROCESS": tag},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPYPROCTRACK_")}
    kernel = started.popen(
        subprocess.Popen(
            [sys.executable, "-c", FAKE_KERNEL, json.dumps(cfg)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
        )
    )
    assert kernel.stdout is not None
    line = kernel.stdout.readline()
    assert line, f"the fake kernel failed (exit {kernel.wait()})"
    pids: dict[str, int | None] = json.loads(line)
    for pid in pids.values():
        if pid is not None:
            started.note(pid)
    return kernel, pids


def kill_kernel_and_wait(
    kernel: subprocess.Popen[bytes], members: list[tuple[int, float]]
) -> float:
    """SIGKILL the fake kernel; return how long until every member was gone."""
    assert all(is_alive(pid, ct) for pid, ct in members)
    t0 = time.monotonic()
    kernel.kill()
    kernel.wait()
    left = wait_dead(members, 3 + GRACE + 5)
    took = time.monotonic() - t0
    assert left == [], f"still alive {took:.1f} s after the kernel SIGKILL: {left}"
    return took


def _nasty_tree_after_kernel_sigkill(started: Started, tmp_path: Path) -> float:
    """The nasty tree (SIGTERM ignorer, `env -i` double-forked daemon, ...) under a fake
    kernel that is SIGKILLed: seconds until every process, the keeper included, is gone."""
    command, pidfile = start_nasty(tmp_path, env_i=True)
    kernel, pids = run_fake_kernel(
        started, ["bash", "-c", command], fork_child=False
    )
    wait_nasty_ready(pidfile)
    members = [(pid, ct) for role, pid, ct in read_nasty_pids(pidfile) if role != "zombie"]
    for pid, ct in members:
        started.idents.append((pid, ct))
    keeper = pids["keeper"]
    assert keeper is not None
    keeper_ident = started.note(keeper)
    assert keeper_ident is not None
    return kill_kernel_and_wait(kernel, [*members, keeper_ident])


def test_kernel_sigkill_leaves_nothing(started: Started, tmp_path: Path) -> None:
    _nasty_tree_after_kernel_sigkill(started, tmp_path)  # within a deadline, or it fails


@pytest.mark.perf
def test_kernel_sigkill_cleanup_takes_at_most_3_s_plus_grace(
    started: Started, tmp_path: Path
) -> None:
    took = _nasty_tree_after_kernel_sigkill(started, tmp_path)
    assert took < 3 + GRACE, took


def test_forked_child_holding_the_lifeline_does_not_delay_cleanup(
    started: Started, tmp_path: Path
) -> None:
    pidfile = tmp_path / "tree.pids"
    kernel, pids = run_fake_kernel(
        started,
        ["bash", "-c", SMALL_TREE, "tree", str(pidfile)],
        fork_child=True,
    )
    mp_pid, keeper = pids["mp"], pids["keeper"]
    assert mp_pid is not None and keeper is not None
    mp_ident = (mp_pid, create_time(mp_pid) or 0.0)
    try:
        roles = read_pidfile(pidfile, SMALL_TREE_COUNT)
        members = [m for m in (started.note(p) for p in [*roles.values(), keeper]) if m]
        assert len(members) == SMALL_TREE_COUNT + 1
        kill_kernel_and_wait(kernel, members)  # within a deadline, or it fails
        assert is_alive(*mp_ident)  # it still held the write end all along
    finally:
        kill_by_identity([mp_ident])
        wait_dead([mp_ident], 5.0)


# --- without a subreaper (macOS; Linux with subreaper=False) -----------------------------


def _start_tagged_daemon_without_subreaper(
    started: Started, keeper: int, pidfile: Path, command: int | None = None
) -> tuple[int, float]:
    """The daemon is up, outside the keeper's subtree, tagged; the command is gone."""
    daemon = read_daemon_pid(pidfile)
    ident = started.note(daemon)
    assert ident is not None
    assert os.getsid(daemon) == daemon
    environ = Path(f"/proc/{daemon}/environ").read_bytes().split(b"\0")
    assert any(e.startswith(b"IPYPROCTRACK_PROCESS=") for e in environ)
    if command is not None:
        wait_for(lambda: ppid_of(command) != keeper, 5, "the command did not exit")
    assert ppid_of(daemon) != keeper  # no subreaper: it went to init (or another reaper)
    return ident


def test_no_subreaper_keeper_stays_for_a_tagged_daemon_and_tears_it_down(
    started: Started, tmp_path: Path
) -> None:
    """Without a subreaper the keeper has no child left once the command exits, but the
    tagged daemon lives on: the keeper stays its watchdog and ends it with the kernel."""
    pidfile = tmp_path / "daemon.pid"
    kernel, pids = run_fake_kernel(
        started,
        [SH, "-c", TAGGED_DAEMON, "daemon", str(pidfile)],
        fork_child=False,
        subreaper=False,
    )
    keeper, command = pids["keeper"], pids["command"]
    assert keeper is not None and command is not None
    keeper_ident = started.note(keeper)
    assert keeper_ident is not None
    daemon = _start_tagged_daemon_without_subreaper(started, keeper, pidfile, command)
    time.sleep(1.5)  # more than one look for tagged processes
    assert is_alive(*keeper_ident), "the keeper left its tagged daemon unwatched"
    kill_kernel_and_wait(kernel, [daemon, keeper_ident])  # within a deadline, or it fails


def test_no_subreaper_keeper_exits_once_the_tagged_daemon_is_gone(
    started: Started, lifeline: tuple[int, int], tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    kp = kept(started, lifeline, [SH, "-c", TAGGED_DAEMON, "daemon", str(pidfile)], subreaper=False)
    assert kp.subreaper is False
    daemon = _start_tagged_daemon_without_subreaper(started, kp.keeper.pid, pidfile)
    assert read_events(kp.status_fd, 10, until="exited") == [{"event": "exited", "returncode": 0}]
    time.sleep(1.5)
    assert kp.keeper.poll() is None, "the keeper left its tagged daemon unwatched"
    kill_by_identity([daemon])
    assert kp.keeper.wait(timeout=10) == 0  # it noticed (about 1 s: it looks once a second)
    assert read_events(kp.status_fd, 5) == []  # EOF, no teardown


# --- pieces -------------------------------------------------------------------------------


def test_read_status_events_is_incremental() -> None:
    started = encode_event({"event": "started", "pid": 5, "start_time": 1.5, "subreaper": True})
    exited = encode_event({"event": "exited", "returncode": -9})
    buf = bytearray()
    assert read_status_events(buf, started[:7]) == []
    assert read_status_events(buf, started[7:] + b"not an event\npid=3\n" + exited[:9]) == [
        {"event": "started", "pid": 5, "start_time": 1.5, "subreaper": True}
    ]
    assert read_status_events(buf, exited[9:]) == [{"event": "exited", "returncode": -9}]
    assert buf == b""
    read_status_events(buf, b"x" * 70000)
    assert buf == b""  # a runaway line is dropped, not kept


def test_status_event_text_survives_tabs_and_newlines() -> None:
    message = "a\tb\nc\\d=e"
    line = encode_event({"event": "error", "errno": 2, "message": message})
    assert line.count(b"\n") == 1
    assert read_status_events(bytearray(), line) == [
        {"event": "error", "errno": 2, "message": message}
    ]


def test_fallback_ps_scan_finds_descendants(started: Started) -> None:
    """The scan used where /proc is missing (macOS, BSD), run here through ps."""
    child = started.popen(
        subprocess.Popen([SH, "-c", f"{SLEEP} 1000 & wait"], start_new_session=True)
    )
    try:
        _check_ps_scan(child)
    finally:  # the grandchild is not tagged: end the whole session we made, by its id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


def _check_ps_scan(child: subprocess.Popen[bytes]) -> None:
    wait_for(
        lambda: any(ppid_of(int(p)) == child.pid for p in os.listdir("/proc") if p.isdigit()),
        5,
        "no grandchild",
    )
    proc_view = scan.PROCFS.scan(with_tags=False)
    ps_view = scan.PS.scan(with_tags=False)
    assert child.pid in proc_view and child.pid in ps_view
    grandchildren = {p for p, r in proc_view.items() if r.ppid == child.pid}
    assert grandchildren and grandchildren <= {p for p, r in ps_view.items() if r.ppid == child.pid}
    for pid in (child.pid, *grandchildren):  # ps's lstart has whole seconds
        assert abs(ps_view[pid].create_time - proc_view[pid].create_time) < 1.5
        assert ps_view[pid].pgid == proc_view[pid].pgid == child.pid


def test_keeper_path_is_the_package_main() -> None:
    assert KEEPER_PATH.samefile(Path(keeper_main.__file__).parent / "__main__.py")


# --- what the kill path loads; the engine without psutil ----------------------------------

KILL_PATH = textwrap.dedent(
    """\
    import os, sys
    sys.path.insert(0, sys.argv[1])  # -I -S: the keeper's own interpreter set-up
    from ipyproctrack._keeper.main import Keeper
    from ipyproctrack._keeper.protocol import config_arg, read_config
    tag = sys.argv[2]
    env = dict(os.environ, IPYPROCTRACK_PROCESS=tag)
    tree = "sleep 1000 & (trap '' TERM; exec sleep 1000) & wait"
    root = os.posix_spawnp("sh", ["sh", "-c", tree], env)
    keeper = Keeper(read_config(config_arg({"argv": ["sh"], "tag": tag, "grace": 0.3})))
    keeper.main_pid = root
    def children():
        found = []
        for p in os.listdir("/proc"):
            try:  # a process may exit between the listing and the read
                if p.isdigit() and open(f"/proc/{p}/stat").read().split()[3] == str(root):
                    found.append(p)
            except (OSError, IndexError):
                pass
        return found
    while len(children()) < 2:
        pass  # both children forked (a bounded spin: the test has a timeout)
    print(" ".join(children()), flush=True)
    keeper.teardown()
    print(" ".join(m for m in ("psutil", "anyio", "subprocess", "json") if m in sys.modules))
    print(keeper.main_rc)
    """
)


def test_the_keepers_kill_path_imports_no_psutil_anyio_or_subprocess(started: Started) -> None:
    """The keeper's teardown, run as the keeper runs it (``-I -S``, its own sys.path)
    against a real tree with a SIGTERM ignorer: it ends the tree and loads neither psutil,
    anyio, subprocess nor json."""
    tag = started.tag()
    proc = started.popen(subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", KILL_PATH, str(REPO), tag],
        stdout=subprocess.PIPE, env=started.env(tag), start_new_session=True,
    ))
    assert proc.stdout is not None
    children = [started.note(int(p)) for p in proc.stdout.readline().split()]
    assert len(children) == 2 and all(children)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    loaded, rc = out.decode().split("\n")[:2]
    assert loaded == ""
    assert rc == str(-signal.SIGTERM)  # the root shell, reaped through the keeper's reap
    assert wait_dead([c for c in children if c], 1.0) == []



def test_the_keepers_start_up_loads_no_enum_signal_or_importlib() -> None:
    """Every launch waits for a keeper's start, so its imports are kept to the bone:
    ``signal`` (it imports enum: 7 ms of a ~25 ms start) and importlib stay out."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import ipyproctrack._keeper.main; "
             "print(' '.join(m for m in ('enum', 'signal', 'importlib', 'warnings', 're') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(REPO)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() == ""

WITHOUT_PSUTIL = textwrap.dedent(
    """\
    import sys
    sys.modules["psutil"] = None  # `import psutil` raises ImportError from here on
    from ipyproctrack import Tracker
    t = Tracker(log_dir=sys.argv[1], grace=0.5)
    p = t.start("sleep 1000 & (trap '' TERM; exec sleep 1000) & wait", name="x")
    import time
    deadline = time.monotonic() + 10
    while len(p.tree()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    print(" ".join(f"{i.pid}:{i.create_time!r}" for i in p.tree()), flush=True)
    report = t.close()
    print(report.ok, len(report.outcomes), "psutil" in sys.modules and sys.modules["psutil"])
    """
)


def test_the_tracker_runs_without_psutil(started: Started, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPYPROCTRACK_")}
    env["IPYPROCTRACK_SESSION"] = started.session  # the leak sweep finds what escapes
    proc = started.popen(subprocess.Popen(
        [sys.executable, "-c", WITHOUT_PSUTIL, str(tmp_path)], stdout=subprocess.PIPE, env=env
    ))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    first, second = out.decode().splitlines()[:2]
    members = [(int(p), float(c)) for p, c in (m.split(":") for m in first.split())]
    started.idents += members
    assert len(members) == 3
    assert second == "True 3 None"
    assert wait_dead(members, 1.0) == []
