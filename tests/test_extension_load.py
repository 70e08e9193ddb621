"""Loading and unloading the extension is idempotent and leaves nothing behind: one set of
hooks however often it is loaded, the kernel's SIGTERM disposition untouched, and no
reference to a shell from our code once it is unloaded."""

from __future__ import annotations

import atexit
import gc
import signal
import sys
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import ipyproctrack._notebook as nb
from ipyproctrack._notebook import hooks


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    """The process's one InteractiveShell, as an earlier test in this process left it, minus
    what IPython and Python keep of earlier cells: the last traceback (``sys.last_*``), the
    last result and the output cache hold their frames, and through them objects of ours
    that refer to the shell. Only what this test leaves then counts."""
    ip = InteractiveShell.instance()
    if "ipyproctrack" in ip.extension_manager.loaded:  # type: ignore[union-attr]
        ip.run_line_magic("unload_ext", "ipyproctrack")
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    ip.last_execution_result = None
    ip.reset(new_session=False)  # type: ignore[no-untyped-call]
    gc.collect()
    nb._saved_settings.pop(ip, None)
    ip.config.pop("ProcTrackConfig", None)  # what %config in earlier tests left
    yield ip
    if "ipyproctrack" in ip.extension_manager.loaded:  # type: ignore[union-attr]
        ip.run_line_magic("unload_ext", "ipyproctrack")


def _ours(obj: object) -> bool:
    """Is this an object of ipyproctrack, or one of its module-level containers?"""
    module = type(obj).__module__ or ""
    if module.startswith("ipyproctrack"):
        return True
    return any(obj is c for c in (nb._sessions, hooks._installed))


def test_load_leaves_sigterm_alone(shell: InteractiveShell) -> None:
    before = signal.getsignal(signal.SIGTERM)
    shell.run_line_magic("load_ext", "ipyproctrack")
    assert signal.getsignal(signal.SIGTERM) is before


def test_100_load_unload_cycles_leave_one_set_of_hooks(shell: InteractiveShell) -> None:
    # what earlier tests in this process left (widgets they built outside a session's
    # life, kept by ipywidgets' registry) is not this test's business
    earlier = [r for r in gc.get_referrers(shell) if _ours(r)]
    sigterm = signal.getsignal(signal.SIGTERM)
    atexit_before = atexit._ncallbacks()
    for _ in range(100):
        shell.run_line_magic("load_ext", "ipyproctrack")
        shell.run_line_magic("load_ext", "ipyproctrack")  # a second load is a no-op
        assert len(hooks._installed) == 1
        shell.run_line_magic("unload_ext", "ipyproctrack")
        assert len(hooks._installed) == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm
    assert atexit._ncallbacks() == atexit_before  # the one hook is registered at import
    assert nb._sessions == {}
    # After the unload nothing of ours refers to the shell (IPython itself may: its atexit
    # entry, its singleton).
    gc.collect()
    holders = [type(r).__qualname__ for r in gc.get_referrers(shell)
               if _ours(r) and not any(r is e for e in earlier)]
    assert holders == [], holders
    kernel = getattr(shell, "kernel", None)  # a kernel's do_shutdown is unwrapped again
    assert kernel is None or "do_shutdown" not in vars(kernel)


def test_settings_survive_a_reload_without_holding_the_shell(shell: InteractiveShell) -> None:
    shell.run_line_magic("load_ext", "ipyproctrack")
    shell.run_line_magic("config", "ProcTrackConfig.grace = 0.25")
    shell.run_line_magic("unload_ext", "ipyproctrack")
    assert nb._saved_settings[shell] == {"grace": 0.25}
    shell.run_line_magic("load_ext", "ipyproctrack")
    assert nb.current_session().config.grace == 0.25
    configs = [c for c in shell.configurables if type(c).__name__ == "ProcTrackConfig"]
    assert len(configs) == 1  # reloads do not pile up configurables
