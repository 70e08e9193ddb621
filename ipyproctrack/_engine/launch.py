"""Launch: check a command's arguments before anything runs, then spawn its root process
(through our keeper on POSIX, a plain Popen in a Job Object elsewhere)."""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import _platform as plat
from .._keeper.client import KeeperProcess, KeptProcess, Zygote, spawn_kept
from .._proc.identity import ProcId, create_time_from_start
from .._proc.scan import get_record
from ..errors import LaunchError

log = logging.getLogger(__name__)

# Words a shell runs itself: a script that starts with one of these needs no executable.
_SHELL_WORDS = frozenset(
    {
        "!", ".", ":", "[", "[[", "{", "(", "alias", "bg", "break", "builtin", "caller", "case",
        "cd", "command", "compgen", "complete", "continue", "declare", "dirs", "disown", "echo",
        "enable", "eval", "exec", "exit", "export", "false", "fc", "fg", "for", "function",
        "getopts", "hash", "help", "history", "if", "jobs", "kill", "let", "local", "logout",
        "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray", "readonly", "return",
        "select", "set", "shift", "shopt", "source", "suspend", "test", "time", "times", "trap",
        "true", "type", "typeset", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
        "coproc"
    }
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


# --- argument checks -------------------------------------------------------------------------


def argv_of(command: str | Sequence[str]) -> tuple[list[str], str]:
    """(argv to execute, the command as displayed). A str runs in bash (or sh)."""
    if isinstance(command, str):
        if not command.strip():
            raise LaunchError("empty command: give a shell script or a list of arguments")
        return plat.shell_argv(command), command.strip()
    if isinstance(command, bytes):
        raise LaunchError("command must be str or a list of str, not bytes")
    argv = [os.fspath(a) for a in command]
    if not argv or not argv[0]:
        raise LaunchError("empty command: give a shell script or a list of arguments")
    return argv, shlex.join(argv)


def checked_cwd(cwd: str | os.PathLike[str] | None) -> Path:
    """The resolved working directory; LaunchError if it is missing or not a directory."""
    path = Path(cwd).expanduser() if cwd is not None else Path.cwd()
    if not path.exists():
        raise LaunchError(f"directory not found: {path}")
    if not path.is_dir():
        raise LaunchError(f"not a directory: {path}")
    return path.resolve()


def child_env(env: Mapping[str, str] | None, *, session_tag: str) -> dict[str, str]:
    """Our environment, updated with ``env`` and tagged with the session."""
    full = dict(os.environ)
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key:
            raise LaunchError(f"bad environment entry {key!r}={value!r}: "
                              "keys and values must be strings, keys without '='")
        full[key] = value
    full[plat.TAG_SESSION] = session_tag
    return full


def check_executable(
    command: str | Sequence[str], argv: list[str], env: Mapping[str, str], cwd: Path
) -> None:
    """Catch the missing command before anything runs, also for one-line shell scripts."""
    if isinstance(command, str):
        first = command.strip().splitlines()[0]
        try:
            words = shlex.split(first, comments=True)
        except ValueError:
            return  # unbalanced quotes and the like: let the shell say what it thinks
        words = [w for w in words if not _ASSIGNMENT.fullmatch(w)]
        if not words or words[0] in _SHELL_WORDS or any(c in first for c in "(){}|&;<>`$"):
            return
        exe = words[0]
    else:
        exe = argv[0]
    if os.sep in exe or (os.altsep and os.altsep in exe):
        path = exe if os.path.isabs(exe) else str(cwd / exe)
        if not os.path.exists(path):
            raise LaunchError(f"command not found: {exe}")
        return
    if shutil.which(exe, path=env.get("PATH")) is None:
        raise LaunchError(f"command not found: {exe}")


def _open_file_limit() -> str:
    limits = plat.raise_open_file_limit()
    if limits is None:
        return "the system's limit"
    return f"limit {limits[0]} per process; raise the hard limit with ulimit -Hn"


def _launch_failure(exe: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exe}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exe}"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"too many open files: cannot start {exe} ({_open_file_limit()})"
    return f"cannot start {exe}: {exc.strerror or exc}"


# --- spawning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Root:
    """A spawned root command and what watching it takes."""

    popen: KeeperProcess  # our direct child: the keeper, or the command itself
    pid: int  # the command's pid
    create_time: float
    out_fd: int  # read ends of its stdout and stderr, owned by the drain from now on
    err_fd: int
    helpers: tuple[ProcId, ...] = ()  # our keeper: never signalled or reported
    status_fd: int | None = None  # the keeper's status pipe (POSIX)
    container: plat.Containment | None = None  # Windows: a kill-on-close Job Object
    # Linux: the keeper reads the pipes and writes the log (its pump); out_fd and err_fd
    # are then -1, and this socket says where the output went (``pumped.py``)
    pump: socket.socket | None = None


def keeper_drains() -> bool:
    """Whether the keepers write the logs (Linux, ``IPYPROCTRACK_KEEPER_DRAIN=1``:
    ``_keeper/pump.py``). Not the default: it takes a flood's cost off the kernel, but the
    flood is no faster, and one at full speed then takes the cores the notebook needs,
    where the kernel's drain holds it to the kernel's pace (docs/design.md)."""
    return (plat.IS_LINUX and plat.USE_KEEPER
            and os.environ.get("IPYPROCTRACK_KEEPER_DRAIN", "0") == "1")


def spawn_root(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    tag: str,
    session: str,
    lifeline: Callable[[], int],
    keeper_grace: float,
    name: str = "",
    record: str = "",
    max_memory: int = 0,
    max_runtime: float = 0.0,
    zygote: Zygote | None = None,
) -> Root:
    """Start ``argv`` in a new session (and group) with its output on two new pipes.
    ``lifeline()`` gives the read end the keeper watches; ``record`` is where it reports
    a teardown of ``name`` when the kernel is gone. The keeper holds ``max_memory``
    (bytes) and ``max_runtime`` (s) when > 0; ``zygote`` clones the keeper when it can.
    Raises LaunchError."""
    if (max_memory or max_runtime) and not plat.USE_KEEPER:
        raise LaunchError("max_memory and max_runtime need the keeper (POSIX only)")
    if max_memory and not plat.HAS_PROCFS:
        raise LaunchError("max_memory needs /proc (Linux) to measure the tree's RSS")
    out_r, out_w, err_r, err_w = _pipes(argv[0])
    kept = None
    ours = theirs = None
    try:
        if plat.USE_KEEPER:
            pump: tuple[int, ...] = ()
            if keeper_drains():
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                pump = (out_r, err_r, theirs.fileno())
            # The keeper is the command's parent: a subreaper (Linux) and a watchdog that
            # tears the tree down if this process dies without running any Python.
            kept = spawn_kept(
                argv, cwd=str(cwd), env=env, stdout=out_w, stderr=err_w,
                lifeline_fd=lifeline(), grace=keeper_grace,
                subreaper=plat.HAS_SUBREAPER, tag=tag, session=session,
                name=name, record=record, max_memory=max_memory, max_runtime=max_runtime,
                zygote=zygote, pump=pump,
            )
            popen = kept.keeper
        else:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, cwd=cwd,
                env=env, close_fds=True, **plat.popen_kwargs(),
            )
    except (OSError, LaunchError) as exc:
        for fd in (out_r, err_r):
            os.close(fd)
        if ours is not None:
            ours.close()
        if isinstance(exc, LaunchError):
            raise
        raise LaunchError(_launch_failure(argv[0], exc)) from None
    finally:
        os.close(out_w)
        os.close(err_w)
        if theirs is not None:
            theirs.close()
    if ours is not None:  # the keeper reads the pipes now: ours would only keep them open
        os.close(out_r)
        os.close(err_r)
        out_r = err_r = -1
    if kept is not None:
        return _kept_root(kept, tag, out_r, err_r, ours)
    container = plat.contain(popen.pid)
    log.debug("launched %s: pid %d", tag, popen.pid)
    # Not reaped yet, so the pid cannot have been reused.
    return Root(popen, popen.pid, _create_time(popen.pid), out_r, err_r, container=container)


def _pipes(program: str) -> tuple[int, int, int, int]:
    """Two new pipes for stdout and stderr: (out_r, out_w, err_r, err_w)."""
    fds: list[int] = []
    try:
        for _ in range(2):
            fds.extend(os.pipe())
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise LaunchError(_launch_failure(program, exc)) from None
    return fds[0], fds[1], fds[2], fds[3]


def _kept_root(kept: KeptProcess, tag: str, out_r: int, err_r: int,
               pump: socket.socket | None) -> Root:
    # The keeper read the start time before anyone could reap the command, so it cannot
    # belong to a recycled pid; a fresh read is only the fallback.
    ctime = create_time_from_start(kept.start_time)
    if ctime is None:
        ctime = _create_time(kept.pid)
    popen = kept.keeper
    keeper_rec = get_record(popen.pid)
    keeper = ProcId(popen.pid, keeper_rec.create_time if keeper_rec else 0.0)
    log.debug("launched %s: pid %d under keeper %d", tag, kept.pid, keeper.pid)
    return Root(popen, kept.pid, ctime, out_r, err_r, helpers=(keeper,),
                status_fd=kept.status_fd, pump=pump)


def _create_time(pid: int) -> float:
    rec = get_record(pid)
    return rec.create_time if rec else time.time()
