"""The kernel-ending triggers: whatever way the kernel ends, the session tears down.

design.md fact 3: IPython 9 has no shutdown hook. The measured triggers are
- ``shutdown_kernel()`` / ``restart_kernel()``: ipykernel runs ``kernel.do_shutdown`` on its
  Control thread; we wrap it (keeping its signature, sync or async);
- a bare SIGTERM: nothing runs unless we install a handler, so we install one that tears
  down, restores the previous handler and re-raises the signal;
- ``atexit`` as the last resort (it runs only if the exit finishes in time).
SIGKILL / OOM / the server dying are the engine's watchdog's job, not ours.

Each trigger runs the teardown once, bounded by :data:`KERNEL_END_BUDGET` (jupyter_client
sends SIGTERM at 2.5 s), and never raises.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["KERNEL_END_BUDGET", "KernelEndHooks", "run_bounded"]

log = logging.getLogger(__name__)

#: A kernel-ending teardown gives up waiting after this many seconds.
KERNEL_END_BUDGET = 2.0

_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def run_bounded(
    fn: Callable[[], object], timeout: float, *, inline: Callable[[], object] | None = None
) -> bool:
    """Run ``fn`` on a helper thread and wait at most ``timeout``; True if it finished.

    A thread keeps a signal handler or the Control thread from hanging on a lock the
    interrupted code holds. If no thread can be started (interpreter shutdown), nothing
    can bound ``fn``: run ``inline`` instead (default ``fn``), which must bound itself.
    """
    done = threading.Event()

    def target(call: Callable[[], object] = fn) -> None:
        try:
            call()
        except BaseException:  # cleanup never raises: it reports
            log.exception("the kernel-end teardown failed")
        finally:
            done.set()

    try:
        thread = threading.Thread(target=target, name="ipyproctrack-teardown", daemon=True)
        thread.start()
    except RuntimeError:
        target(fn if inline is None else inline)
        return True
    return done.wait(timeout)


class KernelEndHooks:
    """Installs (and removes) the teardown triggers of design.md fact 3.

    ``teardown(trigger, inline)`` does the work; ``inline`` is True when it runs without a
    helper thread to bound it (so it must be quick by itself).
    """

    def __init__(self, teardown: Callable[[str, bool], None]) -> None:
        self._teardown = teardown
        self._active = False
        self._kernel: Any = None
        self._wrapper: Callable[..., Any] | None = None
        self._original: Callable[..., Any] | None = None
        self._had_instance_attr = False
        self._previous_sigterm: _SignalHandler = None
        self._sigterm_installed = False
        self._pid = os.getpid()

    # ------------------------------------------------------------------ install / remove

    def install(self, shell: InteractiveShell) -> None:
        self._active = True
        # Forked children (multiprocessing workers) inherit the SIGTERM handler and atexit;
        # Pool.terminate() SIGTERMs them. They must never tear down the kernel's trees.
        self._pid = os.getpid()
        self._wrap_do_shutdown(getattr(shell, "kernel", None))
        self._install_sigterm()
        atexit.register(self._on_atexit)

    def uninstall(self) -> None:
        self._active = False
        atexit.unregister(self._on_atexit)
        kernel, wrapper = self._kernel, self._wrapper
        # if someone wrapped it after us, our wrapper stays but is inert (_active)
        if (
            kernel is not None
            and wrapper is not None
            and kernel.__dict__.get("do_shutdown") is wrapper
        ):
            if self._had_instance_attr:
                kernel.do_shutdown = self._original
            else:
                del kernel.do_shutdown
        self._kernel = self._wrapper = None
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._restorable(self._previous_sigterm))
            except (ValueError, OSError):
                pass
            self._sigterm_installed = False

    # ------------------------------------------------------------------ triggers

    def _run(self, trigger: str) -> None:
        if not self._active or os.getpid() != self._pid:
            return
        self._active = False
        finished = run_bounded(
            functools.partial(self._teardown, trigger, False),
            KERNEL_END_BUDGET,
            inline=functools.partial(self._teardown, trigger, True),
        )
        if not finished:  # the keeper finishes what is left
            log.warning("the kernel-end teardown (%s) still runs after %g s; going on",
                        trigger, KERNEL_END_BUDGET)

    def _wrap_do_shutdown(self, kernel: Any) -> None:
        original = getattr(kernel, "do_shutdown", None) if kernel is not None else None
        if original is None:
            return
        hooks = self

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def do_shutdown(restart: bool) -> Any:
                hooks._run("do_shutdown")
                return await original(restart)

            wrapper: Callable[..., Any] = do_shutdown
        else:

            @functools.wraps(original)
            def do_shutdown_sync(restart: bool) -> Any:
                hooks._run("do_shutdown")
                return original(restart)

            wrapper = do_shutdown_sync
        self._had_instance_attr = "do_shutdown" in kernel.__dict__
        kernel.do_shutdown = wrapper
        self._kernel, self._wrapper, self._original = kernel, wrapper, original

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            return
        self._sigterm_installed = True

    @staticmethod
    def _restorable(handler: _SignalHandler) -> Any:
        return signal.SIG_DFL if handler is None else handler

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        try:
            self._run("SIGTERM")
        finally:
            previous = self._restorable(self._previous_sigterm)
            self._sigterm_installed = False
            try:
                signal.signal(signal.SIGTERM, previous)
            except (ValueError, OSError):
                previous = signal.SIG_DFL
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)  # dies here, by SIGTERM as asked

    def _on_atexit(self) -> None:
        self._run("atexit")
