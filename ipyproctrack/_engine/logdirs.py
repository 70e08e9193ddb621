"""Where logs live: one private per-user base directory with a directory per session, or a
directory the user configured (refused when it is another user's, or open to everyone).

A session directory is named after its owner process (pid and create time), so a new
session can tell which old ones are dead: those are deleted, except the most recent
:data:`KEEP_DEAD_SESSIONS` (as pytest keeps its last tmp directories)."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from .. import _platform as plat
from .._proc.identity import ProcId
from .._proc.scan import get_record
from .._proc.signals import is_alive
from ..errors import LaunchError

log = logging.getLogger(__name__)

__all__ = ["KEEP_DEAD_SESSIONS", "checked_log_dir", "default_base", "new_session_dir",
           "prune_dead_sessions"]

#: The log directories of this many ended sessions are kept (the newest ones).
KEEP_DEAD_SESSIONS = 3
_PREFIX = "session-"


def default_base() -> Path:
    """``<tmp>/ipyproctrack-<uid>``: every session of this user lives under it."""
    return Path(tempfile.gettempdir()) / f"ipyproctrack-{plat.user_id()}"


def _dir_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if plat.owned_by_someone_else(st):
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return "is writable by other users (and not sticky)"
    return None


def checked_log_dir(path: str | os.PathLike[str]) -> Path:
    """A configured log directory, created 0700 if missing. LaunchError when it cannot be
    created, belongs to another user or is writable by others without the sticky bit."""
    where = Path(path).expanduser()
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        where = where.resolve()
        st = os.stat(where)
    except OSError as exc:
        raise LaunchError(f"cannot create log directory {where}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    problem = _dir_problem(st)
    if problem is not None:
        raise LaunchError(f"log directory {where} {problem}: choose a directory of your own")
    return where


def _private_base(base: Path) -> Path | None:
    """``base``, created 0700 and checked: ours, private and no symlink. None if not."""
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(base)
    except OSError as exc:
        log.warning("cannot use the log base directory %s: %s", base, exc)
        return None
    problem = _dir_problem(st) or ("is open to other users"
                                   if plat.IS_POSIX and st.st_mode & 0o077 else None)
    if problem is not None:
        log.warning("not using the log base directory %s: it %s", base, problem)
        return None
    return base


def new_session_dir(base: Path | None = None) -> Path:
    """A fresh 0700 directory for this session's logs, under the per-user base (old dead
    sessions there are pruned first). If the base cannot be used safely, a private
    temporary directory of its own (with a warning)."""
    base = _private_base(default_base() if base is None else base)
    me = get_record(os.getpid())
    ctime = me.create_time if me is not None else 0.0
    name = f"{_PREFIX}{os.getpid()}-{ctime:.3f}-{secrets.token_hex(3)}"
    if base is None:
        return Path(tempfile.mkdtemp(prefix=f"ipyproctrack-{name}-"))
    prune_dead_sessions(base)
    path = base / name
    try:
        path.mkdir(mode=0o700)
    except OSError as exc:
        raise LaunchError(f"cannot create log directory {path}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    return path


def _owner(name: str) -> ProcId | None:
    """The owner process recorded in a session directory's name."""
    pid, _, rest = name[len(_PREFIX):].partition("-")
    ctime, _, _ = rest.partition("-")
    try:
        return ProcId(int(pid), float(ctime))
    except ValueError:
        return None


def _alive(owner: ProcId) -> bool:
    if owner.create_time == 0.0:  # its create time was unknown: any such pid counts
        return get_record(owner.pid) is not None
    return is_alive(owner)


def prune_dead_sessions(base: Path, *, keep: int = KEEP_DEAD_SESSIONS) -> list[Path]:
    """Delete the session directories under ``base`` whose owner process is gone, except
    the ``keep`` most recent ones; the directories deleted. A live session is never
    touched; neither is anything that is not one of our session directories."""
    dead: list[tuple[float, Path]] = []
    try:
        entries = list(os.scandir(base))
    except OSError as exc:
        log.warning("cannot list %s: %s", base, exc)
        return []
    for entry in entries:
        owner = _owner(entry.name) if entry.name.startswith(_PREFIX) else None
        if owner is None or not entry.is_dir(follow_symlinks=False) or _alive(owner):
            continue
        try:
            dead.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path)))
        except OSError:
            continue
    dead.sort(reverse=True)
    removed = []
    for _, path in dead[keep:]:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("cannot delete the old session logs %s: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        log.debug("deleted %d old session log directories under %s", len(removed), base)
    return removed
