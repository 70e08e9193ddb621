"""The public surface: one place, no drift (as anyio tests its __all__)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import ipyproctrack


def test_all_names_exist_and_nothing_public_is_missing() -> None:
    assert isinstance(ipyproctrack.__all__, tuple)
    assert list(ipyproctrack.__all__) == sorted(set(ipyproctrack.__all__))
    for name in ipyproctrack.__all__:
        assert getattr(ipyproctrack, name) is not None, name
    lazy = set(ipyproctrack._WHERE)
    defined = {  # submodules (errors) are reached by their module path
        n for n, v in vars(ipyproctrack).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations", "TYPE_CHECKING"}
    assert lazy | defined == set(ipyproctrack.__all__)
    assert set(dir(ipyproctrack)) >= set(ipyproctrack.__all__)
    with pytest.raises(AttributeError):
        ipyproctrack.NoSuchProcess  # noqa: B018 (never raised, so not exported)


def test_public_names_come_from_their_modules() -> None:
    import importlib

    for name, module in ipyproctrack._WHERE.items():
        mod = importlib.import_module(module, "ipyproctrack")
        assert getattr(ipyproctrack, name) is getattr(mod, name), name


def test_the_process_layer_imports_only_the_standard_library() -> None:
    """What the keeper loads: no anyio, psutil or IPython, and not the engine."""
    code = (
        "import sys, ipyproctrack._proc, ipyproctrack._proc.teardown, ipyproctrack._keeper.main\n"
        "heavy = ('anyio', 'psutil', 'IPython', 'ipyproctrack._engine', 'subprocess')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_engine_imports_no_ipython_or_widgets() -> None:
    code = (
        "import sys, ipyproctrack\n"
        "ipyproctrack.Tracker, ipyproctrack.CleanupReport\n"
        "bad = [m for m in ('IPython', 'ipywidgets', 'ipykernel') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
