"""Fixtures of the browser tests: one headless Chromium (Debian's, driven by Playwright's
Python package) for the whole run, and the directory the screenshots go to.

What the tests need: ``/usr/bin/chromium`` (or ``$IPYPROCTRACK_CHROMIUM``), the
``playwright`` package, and ``jupyterlab`` and ``notebook`` in this interpreter;
``bash scripts/setup_browser.sh`` installs them all. Without one of them the tests skip with a
one-line reason, unless ``IPYPROCTRACK_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes
the same reason a failure: CI can never pass by skipping them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

REQUIRE_VARIABLE = "IPYPROCTRACK_REQUIRE_BROWSER"
CHROMIUM = os.environ.get("IPYPROCTRACK_CHROMIUM", "/usr/bin/chromium")
#: No network here: without the background-networking flags Chromium keeps trying (and
#: failing) to reach its services. No sandbox: CI runs as root.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "build" / "browser"


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (bash scripts/setup_browser.sh installs it)"
    for module in ("playwright", "jupyterlab", "notebook"):
        if importlib.util.find_spec(module) is None:
            return f"Python package {module!r} missing (bash scripts/setup_browser.sh)"
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    reason = missing_requirement()
    if reason is not None:
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"browser tests required ({REQUIRE_VARIABLE}=1): {reason}",
                        pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots() -> Path:
    """Where screenshots go (``build/browser/``, ignored by git)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
