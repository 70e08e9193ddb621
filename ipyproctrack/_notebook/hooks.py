"""The kernel-ending triggers: whatever way the kernel ends, the session tears down.

IPython 9 has no shutdown hook (docs/design.md, fact 3). The triggers are:
- ``shutdown_kernel()`` / ``restart_kernel()``: ipykernel runs ``kernel.do_shutdown`` on its
  Control thread; we wrap it (keeping its signature, sync or async);
- ``atexit`` as the last resort (it runs only if the exit finishes in time): ONE hook for
  the whole process, however often the extension is loaded;
- SIGTERM, SIGKILL, an OOM kill, the server dying: no Python of ours runs. We install no
  SIGTERM handler on purpose: a Python handler runs only between bytecodes, so during a
  long C call it would defer the kernel's death (fact 4). Each launch's keeper sees the
  kernel die, tears its tree down and appends its report to the kernel-end record.

Each trigger runs the teardown once, bounded by :data:`KERNEL_END_BUDGET` (jupyter_client
sends SIGTERM at 2.5 s), and never raises.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["KERNEL_END_BUDGET", "KernelEndHooks", "run_bounded"]

log = logging.getLogger(__name__)

#: A kernel-ending teardown gives up waiting after this many seconds.
KERNEL_END_BUDGET = 2.0

# The installed hooks of this process; one atexit entry runs them all (see _run_atexit).
_installed: weakref.WeakSet[KernelEndHooks] = weakref.WeakSet()


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
        self._pid = os.getpid()

    # ------------------------------------------------------------------ install / remove

    def install(self, shell: InteractiveShell) -> None:
        self._active = True
        # Forked children (multiprocessing workers) inherit atexit; they must never tear
        # down the kernel's trees.
        self._pid = os.getpid()
        self._wrap_do_shutdown(getattr(shell, "kernel", None))
        _installed.add(self)

    def uninstall(self) -> None:
        self._active = False
        _installed.discard(self)
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
        self._kernel = self._wrapper = self._original = None

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
        # A weak reference: should someone wrap do_shutdown after us, our wrapper stays in
        # their chain after an unload, and must not keep the session (and its shell) alive.
        hooks = weakref.ref(self)

        def run() -> None:
            live = hooks()
            if live is not None:
                live._run("do_shutdown")

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def do_shutdown(restart: bool) -> Any:
                run()
                return await original(restart)

            wrapper: Callable[..., Any] = do_shutdown
        else:

            @functools.wraps(original)
            def do_shutdown_sync(restart: bool) -> Any:
                run()
                return original(restart)

            wrapper = do_shutdown_sync
        self._had_instance_attr = "do_shutdown" in kernel.__dict__
        kernel.do_shutdown = wrapper
        self._kernel, self._wrapper, self._original = kernel, wrapper, original

    def _on_atexit(self) -> None:
        self._run("atexit")


@atexit.register
def _run_atexit() -> None:
    """The one atexit entry of the notebook front (registered at import, never per load)."""
    for hooks in list(_installed):
        hooks._on_atexit()
