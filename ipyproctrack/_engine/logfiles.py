"""Log files: private (0600, never through a symlink), rotating, and within one disk budget
per session. A log that cannot be written says why (``error``); the process runs on."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from .. import _platform as plat

log = logging.getLogger(__name__)

__all__ = ["LogBudget", "RotatingLog", "no_log_reason", "open_private"]

# How often a log checks that its file is still there (a tmp cleaner may delete it).
_RECHECK_SECONDS = 1.0
# Under a budget, no one log file grows past this share of it before it rotates.
_BUDGET_FILE_SHARE = 8
_MIN_FILE_CAP = 64 << 10
# What ``RotatingLog.account`` did to the file a pump writes.
FileChange = Literal["same", "adopted", "new"]


def open_private(path: Path, *, append: bool, exclusive: bool = False) -> int:
    """Open ``path`` for writing, created 0600: never through a symlink, never a file of
    another user, never anything but a regular file (a planted FIFO would block us).
    Raises OSError (ELOOP for a symlink, EPERM for a foreign or odd file)."""
    flags = os.O_WRONLY | os.O_CREAT | plat.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if append else os.O_TRUNC
    if exclusive:
        flags |= os.O_EXCL
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | nonblock, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EPERM, "not a regular file", str(path))
        if plat.owned_by_someone_else(st):
            raise OSError(errno.EPERM, "the file belongs to another user", str(path))
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def no_log_reason(path: Path, exc: OSError) -> str:
    """The text shown where the log's path would be: ``no log: permission denied on …``."""
    if exc.errno == errno.ELOOP:
        why = "refusing to follow a symlink"
    elif exc.errno == errno.EMFILE:
        why = "too many open files"
    else:
        why = (exc.strerror or str(exc)).lower()
    return f"no log: {why} on {path}"


class LogBudget:
    """The disk a session's logs may use together; ``limit <= 0``: unlimited.

    Writes are charged before they happen; past the limit the oldest rotated files of all
    the session's logs are deleted first (down to 3/4 of the limit). If that is not enough
    the logs still writing are rotated early, and the writing one starts its file over."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._logs: dict[Path, RotatingLog] = {}
        self._used = 0

    @property
    def file_cap(self) -> int:
        """The size at which any log rotates under this budget (0: no cap)."""
        return max(self.limit // _BUDGET_FILE_SHARE, _MIN_FILE_CAP) if self.limit > 0 else 0

    def add(self, rlog: RotatingLog) -> None:
        with self._lock:
            known = rlog.path in self._logs  # a replaced process's log: same files
            self._logs[rlog.path] = rlog
            if not known:
                self._used += sum(_size(p) for p in rlog.files())

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes

    def charge(self, writer: RotatingLog, nbytes: int) -> None:
        """Account for ``nbytes`` about to be written by ``writer``; make room first."""
        if self.limit <= 0:
            return
        with self._lock:
            self._used += nbytes
            if self._used > self.limit:
                self._reclaim(writer, nbytes)

    def _reclaim(self, writer: RotatingLog, nbytes: int) -> None:
        """Delete the oldest rotated files until the logs fit. Called with the lock held."""
        logs = list(self._logs.values())
        backups: list[tuple[int, int, Path, int]] = []
        current: list[tuple[int, RotatingLog]] = []
        total = 0
        for rlog in logs:
            files = rlog.files()
            for n, path in enumerate(reversed(files[:-1]), start=1):
                try:
                    st = path.stat()
                except OSError:
                    continue
                backups.append((st.st_mtime_ns, -n, path, st.st_size))
                total += st.st_size
            size = _size(files[-1])
            current.append((size, rlog))
            # with a pump: what it may still write, charged already (pumped.py)
            total += size + rlog.next_size() + rlog.granted
        target = min(self.limit * 3 // 4, self.limit - nbytes)
        backups.sort()  # oldest first; within one log the highest number is the oldest
        for _, _, path, size in backups:
            if total <= target:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete the old log %s: %s", path, exc)
                continue
            total -= size
        if total > self.limit - nbytes:  # the files being written are too many to fit
            for size, rlog in current:
                if size and rlog is not writer:
                    rlog.rotate_soon()
            total -= writer.start_over()
        self._used = total + nbytes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class RotatingLog:
    """Raw bytes to ``path``; past ``max_bytes`` it becomes path.1, path.1 becomes path.2...
    like supervisor's logs. ``max_bytes=0``: never rotate (a budget still caps each file).
    ``backups=-1``: keep them all (the budget still applies). Written by the drain thread
    only; ``error`` is set (and logged once) when the log cannot be written."""

    def __init__(
        self, path: Path, *, max_bytes: int, backups: int, budget: LogBudget | None = None
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.error: str | None = None
        self._budget = budget
        caps = [c for c in (max_bytes, budget.file_cap if budget else 0) if c > 0]
        self._limit = min(caps) if caps else 0
        self._rotate_soon = False
        self._checked_at = time.monotonic()
        self.handed = False  # a keeper's pump appends to the files (pumped.py)
        self._opened = 0  # files opened so far: the pump is handed each new one
        self._next_fd = -1  # the pump's next file, made ready before this one is full
        self.granted = 0  # room the pump may still use, reserved (kept by pumped.py)
        self.ready_rotations = 0  # rotations onto a ready file: the pump did not wait
        # Given a deleted file's last descriptor to close (pumped.py: the keeper frees its
        # cached pages, not the kernel); False when it could not take it.
        self.discard_to: Callable[[int], bool] | None = None
        self._fd = self._open(exclusive=False)
        self._size = os.fstat(self._fd).st_size if self._fd >= 0 else 0
        if budget is not None and self._fd >= 0:
            budget.add(self)

    def _open(self, *, exclusive: bool) -> int:
        self._opened += 1
        try:
            return open_private(self.path, append=True, exclusive=exclusive)
        except OSError as exc:
            self._fail(exc)
            return -1

    # --- when a keeper's pump writes (pumped.py): the rules stay here, the bytes go there ---
    @property
    def fd(self) -> int:
        """The current file's descriptor, -1 when there is no log."""
        return self._fd

    def reserve(self, nbytes: int) -> None:
        """Charge the budget for ``nbytes`` the pump may write next (before it does)."""
        if self._budget is not None and nbytes > 0:
            self._budget.charge(self, nbytes)  # never truncates a handed file: start_over

    def unreserve(self, nbytes: int) -> None:
        """Give back to the budget what was reserved and not written."""
        if self._budget is not None and nbytes > 0:
            self._budget.release(nbytes)

    def account(self, nbytes: int) -> FileChange:
        """The pump appended ``nbytes`` (reserved before) to the current file: keep the
        rules (rotation, a deleted file). "new" when the file changed or is gone (the pump
        must be handed ``fd``), "adopted" when the ready file was put in place (the pump
        writes there already), else "same"."""
        if self._fd < 0:
            return "same"
        opened = self._opened
        try:
            self._size += nbytes
            if self._full():
                if self._rotate():
                    return "adopted"
            else:
                self._now_and_then()
        except OSError as exc:
            self._fail(exc)
            self._close_fd()
        return "new" if self._opened != opened or self._fd < 0 else "same"

    def room(self) -> int:
        """Bytes the current file may take before it rotates (0: no limit); a full one is
        rotated first."""
        if self._limit <= 0:
            return 0
        if self._fd >= 0 and self._full():
            try:
                self._rotate()
            except OSError as exc:
                self._fail(exc)
                self._close_fd()
        return max(self._limit - self._size, 1)

    @property
    def limit(self) -> int:
        """The size at which a file rotates (0: never)."""
        return self._limit

    @property
    def _next_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.next")

    def prepare_next(self) -> int:
        """Open the file that follows this one (under ``<name>.next``, 0600, never through
        a symlink) for the pump to switch to by itself when this one is full: the rotation
        then renames it into place and never keeps the pump waiting. -1 when it cannot."""
        if self._next_fd >= 0:
            return self._next_fd
        for _ in range(2):
            try:
                self._next_fd = open_private(self._next_path, append=True, exclusive=True)
                return self._next_fd
            except FileExistsError:  # left by a kernel that died: not ours to append to
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._next_path)
            except OSError as exc:
                log.debug("cannot make %s ready: %s", self._next_path, exc)
                break
        return -1

    def next_size(self) -> int:
        """Bytes the pump has already written into the ready file (before it is in place).
        By path: the budget asks from any thread, and the descriptor may be closed (and its
        number reused) meanwhile."""
        return _size(self._next_path) if self._next_fd >= 0 else 0

    def drop_next(self) -> None:
        """Close and delete the ready file (the pump will not switch to it)."""
        fd, self._next_fd = self._next_fd, -1
        if fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._next_path)
            os.close(fd)

    def pump_failed(self, errno_: int) -> None:
        """The pump could not write (``errno_``): no log from here on."""
        self._fail(OSError(errno_, os.strerror(errno_)))
        self._close_fd()

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = no_log_reason(self.path, exc)
            log.warning("%s", self.error)

    def write(self, data: bytes) -> None:
        # A full disk must never stall the server: record the error and keep draining.
        if self._fd < 0:
            return
        try:
            if self._budget is not None:
                self._budget.charge(self, len(data))
            while data:
                if self._full():
                    self._rotate()
                    if self._fd < 0:
                        return
                room = self._limit - self._size if self._limit > 0 else len(data)
                part = data[:room] if room < len(data) else data
                written = os.write(self._fd, part)
                self._size += written
                data = data[written:]
            self._now_and_then()
        except OSError as exc:
            self._fail(exc)

    def _full(self) -> bool:
        """Whether the current file is due to rotate (full, or asked to by the budget)."""
        return self._rotate_soon or (self._limit > 0 and self._size >= self._limit)

    def _now_and_then(self) -> None:
        """About once a second: is the file still there?"""
        now = time.monotonic()
        if now - self._checked_at >= _RECHECK_SECONDS:
            self._checked_at = now
            self._check_still_there()

    def _check_still_there(self) -> None:
        """A deleted log (a tmp cleaner) would swallow output unseen: open it afresh, or
        say that there is no log."""
        if os.fstat(self._fd).st_nlink > 0:
            return
        self._close_fd()
        self._fd = self._open(exclusive=True)
        self._size = 0

    def rotate_soon(self) -> None:
        """Rotate before the next write (the budget's request; any thread)."""
        self._rotate_soon = True

    def start_over(self) -> int:
        """Empty the current file (the budget's last resort); the bytes freed. A file a
        pump appends to is rotated at its next report instead: emptied under its writer,
        it would no longer hold the bytes where the reader looks for them."""
        if self.handed:
            self._rotate_soon = True
            return 0
        if self._fd < 0:
            return 0
        freed, self._size = self._size, 0
        os.ftruncate(self._fd, 0)
        return freed

    def _rotate(self) -> bool:
        """Whether the ready file became the log (else a fresh file, or none)."""
        self._rotate_soon = False
        # The ready file is the next one only at the end of this one: the pump switches
        # there by itself. Any earlier rotation (the budget, a deleted file) gets a fresh
        # file that the pump is handed.
        ready = self._next_fd >= 0 and self._limit > 0 and self._size >= self._limit
        if not ready:
            self.drop_next()
        self._close_fd()
        if self.backups != 0:
            last = self.backups
            if last < 0:  # unlimited: shift every existing backup up by one
                last = 1
                while self._backup(last).exists():
                    last += 1
            else:
                if self._budget is not None:
                    self._budget.release(_size(self._backup(last)))
                _discard(self._backup(last), hand_to=self.discard_to)
            # Delete first, then rename onto free names only: a rename (or a truncation)
            # that replaces a file makes ext4 write the renamed file's data out at once
            # (auto_da_alloc), which stalled the drain for tens of ms per rotation.
            for n in range(last - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self._backup(n), self._backup(n + 1))
            # (a deleted current file has nothing to keep; its bytes are gone already)
            with contextlib.suppress(FileNotFoundError) if ready else contextlib.nullcontext():
                os.replace(self.path, self._backup(1))
        else:
            if self._budget is not None:
                self._budget.release(self._size)
            _discard(self.path, hand_to=self.discard_to)
        self._size = 0
        if ready:
            fd, self._next_fd = self._next_fd, -1
            try:
                os.replace(self._next_path, self.path)  # the path is free: renamed above
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
            self._opened += 1
            self.ready_rotations += 1
            return True
        # A fresh file: whatever appeared at the path since is not ours to write into.
        self._fd = self._open(exclusive=True)
        return False

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def files(self) -> list[Path]:
        """Oldest first: concatenated, they are the output (as far as backups reach)."""
        found = []
        n = 1
        while self._backup(n).exists():
            found.append(self._backup(n))
            n += 1
        return [*reversed(found), self.path]

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1  # never keep a closed number: it may be reused by now
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                log.debug("closing %s: %s", self.path, exc)

    def close(self) -> None:
        self._close_fd()
        self.drop_next()


def _discard(path: Path, *, hand_to: Callable[[int], bool] | None = None) -> None:
    """Delete a log file. Freeing its cached pages (a few ms per 20 MiB, more on a busy
    machine) happens when its last descriptor closes: ``hand_to`` (a keeper's pump) closes
    it in the keeper, else a short-lived thread does, so the drain does not stall while
    the writer's pipe fills."""
    try:
        fd = os.open(path, os.O_RDONLY)  # not inherited (PEP 446)
    except FileNotFoundError:
        return
    try:
        os.unlink(path)
    except OSError:  # Windows cannot delete an open file: close it, then delete it here
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    if hand_to is not None and hand_to(fd):
        os.close(fd)  # not the last one: the keeper's copy is
        return
    threading.Thread(target=_close_discarded, args=(fd, path), daemon=True,
                     name="ipyproctrack-log-discard").start()


def _close_discarded(fd: int, path: Path) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        log.warning("closing the deleted log %s failed: %s", path, exc)
