"""The cluster view: every ipyparallel engine's tracked processes, from the client.

    import ipyparallel as ipp
    from ipyproctrack import cluster

    rc = ipp.Cluster(n=2).start_and_connect_sync()
    rc[:].execute("%load_ext ipyproctrack")   # or %px %load_ext ipyproctrack
    cluster.table(rc[:])     # engine, host, name, pid, state, CPU, RSS, ports
    cluster.cleanup(rc[:])   # the phased teardown on every engine, reports merged

Each call sends one small function to every engine of the view (a ``DirectView``, or a
``Client`` for all its engines). On the engine it reads every Tracker of the engine's
process that is still open: the extension's (``%%tracked``), and any ``Tracker`` that code
on the engine made itself. The engines need ipyproctrack installed; ipyparallel is
imported only through the view you pass.

Each engine answers on its own: an engine that fails or does not answer in time is a row
saying so, never an exception, and the other engines' answers still count.
"""

from __future__ import annotations

import html
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipyproctrack._engine.state import ProcessState
    from ipyproctrack._proc.teardown import CleanupReport, ProcessOutcome

__all__ = ["ClusterCleanup", "ClusterTable", "EngineCleanup", "EngineRow", "cleanup", "table"]

log = logging.getLogger(__name__)

#: Seconds the client waits for an engine's answer (a cleanup adds its grace).
DEFAULT_TIMEOUT = 30.0

_COLUMNS = ("engine", "host", "name", "pid", "state", "procs", "CPU", "RSS", "ports")
_STATE_COLUMN = _COLUMNS.index("state")


# ----------------------------------------------------------------------------- engine side
# These functions run ON the engines (ipyparallel ships them by reference to this module).


def _whoami() -> tuple[int | None, str, int]:
    """(engine id, host name, pid) of the engine this runs in.

    The engine id is the ``engine_id`` trait of the engine's kernel
    (``get_ipython().kernel.engine_id``), the id the client knows the engine by."""
    from IPython.core.getipython import get_ipython

    from ipyproctrack._notebook.engines import engine_id

    return engine_id(get_ipython()), socket.gethostname(), os.getpid()


def _engine_rows(prime: float) -> tuple[tuple[int | None, str, int], list[EngineRow]]:
    """This engine's tracked processes with their trees' resource use, one scan per Tracker."""
    from ipyproctrack._engine.tracker import live_trackers
    from ipyproctrack._notebook.stats import sample_trees
    from ipyproctrack._notebook.views import format_bytes

    who = _whoami()
    trackers = live_trackers()
    procs = [proc for tracker in trackers for proc in tracker.processes()]
    stats = sample_trees(procs, wait=prime)
    # The members, and with them the count, come from one scan taken after the samples: a
    # row never counts processes it does not list (a tree still starting up grows between
    # a sample and a later scan). CPU, RSS and ports are the sample's.
    scans = {id(tracker): tracker.trees() for tracker in trackers}
    rows = []
    for proc, st in zip(procs, stats, strict=True):
        tree = scans[id(proc.tracker)].get(proc.name, [])
        live = bool(tree) and bool(st.count)
        rows.append(EngineRow(
            engine=who[0], host=who[1], name=proc.name, pid=proc.pid, state=proc.state,
            procs=len(tree), cpu=st.cpu_text() if live else "-",
            rss=format_bytes(st.rss) if live else "-",
            ports=st.ports_text() if live else "-",
            members=tuple((m.pid, m.create_time) for m in tree),
        ))
    return who, rows


def _engine_cleanup(
    names: Sequence[str], grace: float | None
) -> tuple[tuple[int | None, str, int], list[CleanupReport]]:
    """The phased teardown of this engine's tracked trees (all, or those called ``names``)."""
    from ipyproctrack._engine.tracker import live_trackers

    reports = []
    for tracker in live_trackers():
        wanted = [n for n in names if n in tracker]
        if names and not wanted:
            continue
        reports.append(tracker.cleanup(*wanted, grace=grace))  # never raises: it reports
    return _whoami(), reports


# ----------------------------------------------------------------------------- client side


def _engine_views(view: Any) -> list[tuple[int, Any]]:
    """(engine id, one-engine view) for each engine of a DirectView, or of a Client."""
    client = getattr(view, "client", None)
    if client is None:  # a Client itself
        client, targets = view, None
    else:
        targets = view.targets
    if targets is None or targets == "all":
        ids = list(client.ids)
    elif isinstance(targets, int):
        ids = [targets]
    else:
        ids = list(targets)
    return [(i, client[i]) for i in ids]


def _gather(view: Any, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float
            ) -> list[tuple[int, Any, str | None]]:
    """Run ``fn(*args)`` on every engine at once; (engine id, result, error) for each.

    One engine at a time, so a dead or failing engine costs its own answer only."""
    sent: list[tuple[int, Any, str | None]] = []
    for engine, one in _engine_views(view):
        try:
            sent.append((engine, one.apply_async(fn, *args), None))
        except Exception as exc:  # a client without that engine any more, a closed client
            log.warning("engine %s: cannot send %s: %s", engine, fn.__name__, exc)
            sent.append((engine, None, f"{type(exc).__name__}: {exc}"))
    deadline = time.monotonic() + timeout
    out: list[tuple[int, Any, str | None]] = []
    for engine, pending, error in sent:
        if pending is None:
            out.append((engine, None, error))
            continue
        try:
            out.append((engine, pending.get(max(0.1, deadline - time.monotonic())), None))
        except Exception as exc:  # the engine raised, died, or did not answer in time
            log.warning("engine %s: %s failed: %s", engine, fn.__name__, exc)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            out.append((engine, None, f"{type(exc).__name__}: {reason}".rstrip(": ")))
    return out


@dataclass(frozen=True)
class EngineRow:
    """One tracked process on one engine, as the engine measured it."""

    engine: int | None
    host: str
    name: str
    pid: int
    state: ProcessState
    procs: int
    cpu: str
    rss: str
    ports: str
    #: (pid, create time) of every live member of its tree, grandchildren included
    members: tuple[tuple[int, float], ...] = ()

    def cells(self) -> tuple[str, ...]:
        engine = "?" if self.engine is None else str(self.engine)
        return (engine, self.host, self.name, str(self.pid), self.state.describe(),
                str(self.procs), self.cpu, self.rss, self.ports)


@dataclass
class ClusterTable:
    """What :func:`table` returns: every engine's tracked processes, HTML or text."""

    rows: list[EngineRow] = field(default_factory=list)
    #: engine id -> why that engine has no rows (it failed or did not answer)
    errors: dict[int, str] = field(default_factory=dict)
    #: engine id -> (host, pid) of every engine that answered
    engines: dict[int, tuple[str, int]] = field(default_factory=dict)

    def members(self) -> list[tuple[int | None, int, float]]:
        """(engine, pid, create time) of every live process of every tracked tree."""
        return [(r.engine, pid, ct) for r in self.rows for pid, ct in r.members]

    def _error_lines(self) -> list[str]:
        return [f"engine {e}: no answer ({why})" for e, why in sorted(self.errors.items())]

    def __repr__(self) -> str:
        if not self.rows:
            text = f"no tracked processes on {len(self.engines)} engine(s)"
            return "\n".join([text, *self._error_lines()])
        rows = [_COLUMNS, *(r.cells() for r in self.rows)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        return "\n".join([*lines, *self._error_lines()])

    def _repr_html_(self) -> str:
        from ipyproctrack._notebook.views import badge_html

        errors = "".join(f'<div style="color:#c62828">{html.escape(line)}</div>'
                         for line in self._error_lines())
        if not self.rows:
            return (f"<p><i>no tracked processes on {len(self.engines)} engine(s)</i></p>"
                    + errors)
        style = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"
        head = "".join(f'<th style="{style}">{c}</th>' for c in _COLUMNS)
        body = []
        for row in self.rows:
            cells = [html.escape(c) for c in row.cells()]
            cells[_STATE_COLUMN] = badge_html(row.state)
            body.append("<tr>" + "".join(f'<td style="{style}">{c}</td>' for c in cells)
                        + "</tr>")
        return (
            '<table style="border-collapse:collapse;font-size:90%;'
            'font-family:var(--jp-code-font-family,monospace)">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{errors}"
        )


def table(view: Any, *, prime: float = 0.1, timeout: float = DEFAULT_TIMEOUT) -> ClusterTable:
    """Every engine's tracked processes in one table (``_repr_html_`` and a text form).

    ``view``: an ipyparallel ``DirectView`` (``rc[:]``) or ``Client``. ``prime``: seconds
    each engine waits for the first metrics sample of a tree launched just before (its
    CPU% reads "-" until the engine's sampler has measured it, about a second)."""
    result = ClusterTable()
    for engine, answer, error in _gather(view, _engine_rows, (prime,), timeout):
        if error is not None:
            result.errors[engine] = error
            continue
        (_, host, pid), rows = answer
        result.engines[engine] = (host, pid)
        # the client's id is the one to show (the engine's own may be unknown: None)
        result.rows += [r if r.engine == engine else _with_engine(r, engine) for r in rows]
    return result


def _with_engine(row: EngineRow, engine: int) -> EngineRow:
    from dataclasses import replace

    return replace(row, engine=engine)


# ----------------------------------------------------------------------------- cleanup


@dataclass
class EngineCleanup:
    """One engine's teardown: a report per Tracker there, or why there is none."""

    engine: int
    host: str = "?"
    reports: list[CleanupReport] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"[engine {self.engine} @{self.host}]"

    def outcomes(self) -> list[ProcessOutcome]:
        return [o for r in self.reports for o in r.outcomes]

    def lines(self) -> list[str]:
        """One line per tree, then each escalation ("ignored SIGTERM… sent SIGKILL")."""
        if self.error is not None:
            return [f"{self.label} no report: {self.error}"]
        names = [n for r in self.reports for n in r.names]
        if not names:
            return [f"{self.label} nothing to clean up"]
        lines = [f"{self.label} {s}" for r in self.reports for s in r.summary_lines()]
        lines += [f"{self.label}   {m}" for r in self.reports for m in r.messages]
        return lines


@dataclass
class ClusterCleanup:
    """What :func:`cleanup` returns: every engine's report, merged. ``ok`` is True when
    every engine answered and nothing survived anywhere."""

    engines: list[EngineCleanup] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(e.error is None for e in self.engines) and not self.survivors()

    def survivors(self) -> list[tuple[int, ProcessOutcome]]:
        """(engine, outcome) of every process a teardown could not end."""
        return [(e.engine, o) for e in self.engines for r in e.reports for o in r.survivors()]

    def messages(self) -> list[str]:
        """Every engine's escalations, labelled with the engine."""
        return [f"{e.label} {m}" for e in self.engines for r in e.reports for m in r.messages]

    def lines(self) -> list[str]:
        lines = [line for e in self.engines for line in e.lines()]
        survivors = self.survivors()
        if survivors:
            lines.append(f"WARNING: {len(survivors)} process(es) survived: " + ", ".join(
                f"engine {e} pid {o.pid}" for e, o in survivors[:10]))
        return lines

    def details(self) -> str:
        """Every process's outcome, per engine."""
        parts = []
        for e in self.engines:
            for r in e.reports:
                parts.append(f"{e.label} took {r.duration:.2f} s (grace {r.grace:g} s)\n"
                             f"{r.details()}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return "\n".join(self.lines()) if self.engines else "no engines"

    def _repr_html_(self) -> str:
        color = "inherit" if self.ok else "#c62828"
        body = "".join(
            f'<div style="color:{color};font-family:var(--jp-code-font-family,monospace)">'
            f"{html.escape(line)}</div>" for line in (self.lines() or ["no engines"]))
        count = sum(len(e.outcomes()) for e in self.engines)
        return (f"<div>{body}<details><summary>details ({count} processes)</summary>"
                f"<pre>{html.escape(self.details())}</pre></details></div>")


def cleanup(
    view: Any, *names: str, grace: float | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ClusterCleanup:
    """The phased teardown (SIGTERM, grace, SIGKILL, sweep) on every engine of ``view``,
    of every tracked tree or of those called ``names``; never raises: an engine that
    fails or does not answer within ``timeout`` (plus the grace) is reported."""
    result = ClusterCleanup()
    wait = timeout + (grace if grace is not None else 0.0)
    for engine, answer, error in _gather(view, _engine_cleanup, (list(names), grace), wait):
        if error is not None:
            result.engines.append(EngineCleanup(engine, error=error))
            continue
        (_, host, _pid), reports = answer
        result.engines.append(EngineCleanup(engine, host, reports))
    return result
