"""ipyparallel engines: which engine a shell is, and that engine's id in every text line.

An ipyparallel engine is an ipykernel (``ipyparallel.engine.kernel.IPythonParallelKernel``)
whose output ``%px`` relays to the client. It has no widget front end: comm messages are
not relayed, so a widget displayed there would never render. The magics therefore print
their text forms on an engine, each line labelled ``[engine N]``.

ipyparallel is never imported here: the engine's kernel is recognised by its
``engine_id`` trait (an ``Integer``, -1 until the engine has registered with the
controller, then the id the client knows it by, as in ``rc.ids``).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["EngineLabelled", "engine_id", "is_engine", "label_lines", "on_engine"]


class _View(Protocol):
    def _repr_html_(self) -> str: ...


def is_engine(shell: InteractiveShell | None) -> bool:
    """True when ``shell`` runs in an ipyparallel engine (registered or not)."""
    kernel = getattr(shell, "kernel", None)
    return kernel is not None and isinstance(getattr(kernel, "engine_id", None), int)


def engine_id(shell: InteractiveShell | None) -> int | None:
    """The engine id of ``shell``'s kernel; None outside a registered ipyparallel engine."""
    if not is_engine(shell):
        return None
    value: int = shell.kernel.engine_id  # type: ignore[union-attr]
    return value if value >= 0 else None


def label_lines(text: str, engine: int | None) -> str:
    """Each line of ``text`` prefixed with ``[engine N]`` (unchanged when ``engine`` is None)."""
    if engine is None:
        return text
    return "\n".join(f"[engine {engine}] {line}" for line in text.split("\n"))


class EngineLabelled:
    """A magic's result (table, cleanup view) as shown on an engine: the text form with
    the engine id on each line, the HTML form under an ``engine N`` caption."""

    def __init__(self, view: _View, engine: int) -> None:
        self.view = view
        self.engine = engine

    def __repr__(self) -> str:
        return label_lines(repr(self.view), self.engine)

    def _repr_html_(self) -> str:
        caption = f"<div><b>engine {html.escape(str(self.engine))}</b></div>"
        return caption + self.view._repr_html_()


def on_engine(view: _View, shell: InteractiveShell | None) -> object:
    """``view`` labelled with the engine id when ``shell`` is an engine, else ``view``."""
    engine = engine_id(shell)
    return view if engine is None else EngineLabelled(view, engine)
