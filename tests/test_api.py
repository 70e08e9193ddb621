"""The public surface: one place, no drift (as anyio tests its __all__)."""

from __future__ import annotations

import ipyproctrack


def test_all_names_exist_and_nothing_public_is_missing() -> None:
    assert isinstance(ipyproctrack.__all__, tuple)
    for name in ipyproctrack.__all__:
        assert hasattr(ipyproctrack, name), name
    public = {
        n for n in vars(ipyproctrack)
        if not n.startswith("_") and n not in {"annotations", "TYPE_CHECKING"}
    }
    assert public - set(ipyproctrack.__all__) == set()


def test_engine_imports_no_ipython_or_widgets() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ipyproctrack\n"
        "bad = [m for m in ('IPython', 'ipywidgets', 'ipykernel') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
