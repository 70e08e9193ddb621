"""Signalling by identity. psutil's rule: one identity check before every signal.

On Linux a pidfd pins the process first, so the identity check made after opening it
cannot race with PID reuse (design.md fact 6).
"""

from __future__ import annotations

import os

from .. import _platform as plat
from .._platform._csignal import signal
from .scan import get_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._platform import SendResult, Signal
    from .identity import ProcId, ProcRecord

_HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def is_alive(ident: ProcId) -> bool:
    """Is ``ident`` still that process, and not a zombie?"""
    rec = get_record(ident.pid)
    return rec is not None and not rec.zombie and ident.matches(rec.create_time)


def send_signal(ident: ProcId, which: Signal) -> SendResult:
    """Send ``which`` to the process ``ident`` if it still is that process. "gone" when
    it is not (or is a zombie), "denied" when the OS refuses. Windows has no graceful
    signal for one process: "term" only checks the identity there (see signal_group)."""
    sig = plat.signal_number(which)
    pidfd = -1
    if _HAS_PIDFD:
        try:
            pidfd = os.pidfd_open(ident.pid)
        except ProcessLookupError:
            return "gone"
        except OSError:
            pidfd = -1  # not allowed here (seccomp, old kernel): check, then os.kill
    try:
        if not is_alive(ident):
            return "gone"
        if sig is None:
            return "sent"
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(ident.pid, sig)
        return "sent"
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "denied"
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def group_holds(group: int, leader: ProcId, rec: ProcRecord | None) -> bool:
    """A group/session id stays reserved while any member lives, so the group is still
    ``leader``'s when the pid that named it is gone (``rec`` None) or still is the leader;
    a recycled pid means it is not."""
    return leader.pid == group and (rec is None or leader.matches(rec.create_time))


def signal_group(group: int, leader: ProcId, which: Signal) -> SendResult:
    """Signal a whole process group if it still is ``leader``'s. killpg is atomic against
    forks racing a scan, but it is only safe while the group is ours."""
    if not group_holds(group, leader, get_record(group)):
        return "gone"
    return plat.signal_group(group, which)
