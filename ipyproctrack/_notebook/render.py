"""Text and HTML for the notebook front: the process table, cleanup reports, logs, tails.

Also the whole-tree resource sampling (process count, CPU%, RSS, listening ports) that
both ``%proctrack`` and the widgets show. Nothing here talks to IPython or ipywidgets.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from ipyproctrack._engine.ports import listening_ports as _engine_listening_ports

if TYPE_CHECKING:
    from ipyproctrack import CleanupReport, ProcessInfo, TrackedProcess

__all__ = [
    "CleanupView",
    "LogsView",
    "ProcessTable",
    "TreeSampler",
    "TreeStats",
    "format_bytes",
    "format_duration",
    "process_state",
    "sample_trees",
    "status_line",
    "tail_html",
]

#: Colour of stderr text in HTML tails.
STDERR_COLOR = "#c62828"
#: At most this many characters of a tail are rendered (the newest ones).
MAX_TAIL_CHARS = 16_000
#: Lines longer than this are shortened in the middle.
MAX_LINE_CHARS = 2_000


# ----------------------------------------------------------------------------- formatting


def format_clock(seconds: float) -> str:
    """A widget's clock: ``0 s``, ``5 s`` ... ``55 s``, ``3 min``, ``2 h 03 min``. Coarse on
    purpose: it moves at most every 5 s, the refresher's idle pace."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds) // 5 * 5} s"
    if seconds < 3600:
        return f"{int(seconds) // 60} min"
    return format_duration(seconds)


def format_duration(seconds: float) -> str:
    """``4 s``, ``3 min 05 s``, ``2 h 03 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def format_bytes(n: int | None) -> str:
    """``512 B``, ``12.3 MiB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - unreachable


def process_state(proc: TrackedProcess) -> str:
    """The state machine's one wording (``ProcessState.describe``)."""
    return proc.state.describe()


def status_line(proc: TrackedProcess, *, full: bool = True) -> str:
    """The plain one-line status printed when there is no widget frontend.

    ``full=False``: without log path and command (the widget's text form)."""
    parts = [f"{proc.name}: pid {proc.pid} {process_state(proc)}"]
    if not full:
        return "; ".join(parts)
    parts.append(f"log {proc.log_path}")
    return "; ".join(parts) + f"  ({_shorten(proc.command, 80)})"


def _shorten(text: str, limit: int) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_line(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    half = MAX_LINE_CHARS // 2
    return f"{line[:half]} …[{len(line) - MAX_LINE_CHARS} chars]… {line[-half:]}"


def _clip_chunks(chunks: Sequence[tuple[str, str]], max_chars: int) -> list[tuple[str, str]]:
    """Keep the newest ``max_chars`` characters, long lines shortened in the middle."""
    out: list[tuple[str, str]] = []
    total = 0
    for stream, text in reversed(chunks):
        if len(text) > MAX_LINE_CHARS:
            text = "\n".join(_clip_line(line) for line in text.split("\n"))
        if total + len(text) > max_chars:
            keep = max_chars - total
            if keep > 0:
                out.append((stream, text[-keep:]))
            break
        out.append((stream, text))
        total += len(text)
    out.reverse()
    return out


def tail_html(chunks: Sequence[tuple[str, str]], *, max_chars: int = MAX_TAIL_CHARS) -> str:
    """Render ``[(stream, text)]`` as the inside of a ``<pre>``; stderr in red."""
    pieces: list[str] = []
    for stream, text in _clip_chunks(chunks, max_chars):
        escaped = html.escape(text)
        if stream == "stderr":
            pieces.append(f'<span style="color:{STDERR_COLOR}">{escaped}</span>')
        else:
            pieces.append(escaped)
    return "".join(pieces)


def tail_text(chunks: Sequence[tuple[str, str]], *, max_chars: int = MAX_TAIL_CHARS) -> str:
    return "".join(text for _, text in _clip_chunks(chunks, max_chars))


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class TreeStats:
    """Resource use of one tracked tree at one moment."""

    count: int
    cpu_percent: float | None
    rss: int | None
    ports: tuple[int, ...] | None  # None: unknown (the port scan failed)

    def ports_text(self) -> str:
        if self.ports is None:
            return "?"
        return ", ".join(str(p) for p in self.ports) or "-"

    def cpu_text(self) -> str:
        return "-" if self.cpu_percent is None else f"{self.cpu_percent:.0f}%"


EMPTY_STATS = TreeStats(0, None, None, ())


def listening_ports(pids: Sequence[int]) -> tuple[int, ...] | None:
    """The TCP ports the given pids listen on; None when the scan failed."""
    if not pids:
        return ()
    try:
        return tuple(_engine_listening_ports(pids))
    except Exception:  # a display must never fail because a port scan did
        return None


class TreeSampler:
    """Samples trees; keeps ``psutil.Process`` objects so CPU% has an interval.

    Thread-safe: the widget refresher and the ``%proctrack`` magic share one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[int, float], psutil.Process] = {}

    def _process(self, pid: int, create_time: float) -> tuple[psutil.Process, bool]:
        key = (pid, round(create_time, 2))
        found = self._known.get(key)
        if found is not None:
            return found, False
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.05:
            raise psutil.NoSuchProcess(pid)
        self._known[key] = proc
        return proc, True

    def sample_many(
        self, members: Sequence[Sequence[ProcessInfo]], *, prime: float = 0.0
    ) -> list[TreeStats]:
        """Stats per tree, given each tree's members (see :func:`sample_trees`).
        ``prime``: seconds to wait for a first CPU reading of processes seen first now."""
        trees = [[(m.pid, m.create_time) for m in row] for row in members]

        with self._lock:
            fresh: list[psutil.Process] = []
            handles: list[list[psutil.Process]] = []
            for members_ids in trees:
                row: list[psutil.Process] = []
                for pid, ctime in members_ids:
                    try:
                        handle, new = self._process(pid, ctime)
                    except (psutil.Error, OSError):
                        continue
                    row.append(handle)
                    if new:
                        fresh.append(handle)
                handles.append(row)
            for handle in fresh:
                with contextlib.suppress(psutil.Error, OSError):
                    handle.cpu_percent(None)
            if fresh and prime > 0:
                time.sleep(prime)
            fresh_ids = {id(h) for h in fresh}
            result: list[TreeStats] = []
            alive: set[tuple[int, float]] = set()
            for row in handles:
                cpu = 0.0
                rss = 0
                count = 0
                cpu_known = False
                pids: list[int] = []
                for handle in row:
                    try:
                        with handle.oneshot():
                            if handle.status() == psutil.STATUS_ZOMBIE:
                                continue
                            if id(handle) not in fresh_ids or prime > 0:
                                cpu += handle.cpu_percent(None)
                                cpu_known = True
                            rss += handle.memory_info().rss
                    except (psutil.Error, OSError):
                        continue
                    count += 1
                    pids.append(handle.pid)
                    alive.add((handle.pid, round(handle.create_time(), 2)))
                result.append(
                    TreeStats(
                        count=count,
                        cpu_percent=cpu if cpu_known or count == 0 else None,
                        rss=rss if count else None,
                        ports=listening_ports(pids) if count else (),
                    )
                )
            # forget processes that left every tree we looked at
            sampled = {key for row in trees for key in ((p, round(c, 2)) for p, c in row)}
            for key in list(self._known):
                if key in sampled and key not in alive:
                    del self._known[key]
            if len(self._known) > 20_000:
                self._known.clear()
            return result


def _tree_or_empty(proc: TrackedProcess) -> list[ProcessInfo]:
    try:
        return proc.tree()
    except Exception:
        return []


def sample_trees(
    sampler: TreeSampler, procs: Sequence[TrackedProcess], *, prime: float = 0.0
) -> list[TreeStats]:
    """Stats of several tracked trees from ONE process scan per Tracker (``trees()``).

    A process whose name now belongs to a newer launch (it was replaced) is looked up on
    its own: rare, since a replaced tree has been torn down."""
    scans: dict[int, dict[str, list[ProcessInfo]]] = {}
    members: list[list[ProcessInfo]] = []
    for proc in procs:
        tracker = proc.tracker
        if id(tracker) not in scans:
            try:
                scans[id(tracker)] = tracker.trees()
            except Exception:
                scans[id(tracker)] = {}
        found = None
        if proc.name in tracker and tracker.get(proc.name) is proc:
            found = scans[id(tracker)].get(proc.name)
        members.append(found if found is not None else _tree_or_empty(proc))
    return sampler.sample_many(members, prime=prime)


# ----------------------------------------------------------------------------- views

_TABLE_STYLE = (
    "border-collapse:collapse;font-family:var(--jp-code-font-family,monospace);font-size:90%"
)
_CELL_STYLE = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"

_COLUMNS = ("name", "pid", "state", "uptime", "procs", "CPU", "RSS", "ports", "log")


def _badge_color(state: str) -> str:
    if state.startswith("running"):
        return "#2e7d32"
    if state.startswith("starting") or state.startswith("restarting"):
        return "#f9a825"
    if state == "exited 0" or state == "stopped":
        return "#616161"
    return "#c62828"


def badge_html(state: str) -> str:
    return (
        f'<span style="background:{_badge_color(state)};color:white;border-radius:3px;'
        f'padding:0 6px;font-size:90%">{html.escape(state)}</span>'
    )


class ProcessTable:
    """What ``%proctrack`` returns: an HTML table with a plain-text form."""

    def __init__(
        self, procs: Sequence[TrackedProcess], stats: Sequence[TreeStats], *, now: float
    ) -> None:
        self.procs = list(procs)
        self.stats = list(stats)
        self.now = now

    def rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for proc, st in zip(self.procs, self.stats, strict=True):
            state = process_state(proc)
            running = proc.returncode is None or st.count > 0
            rows.append(
                (
                    proc.name,
                    str(proc.pid),
                    state,
                    format_duration(self.now - proc.started_at) if running else "-",
                    str(st.count),
                    st.cpu_text() if st.count else "-",
                    format_bytes(st.rss) if st.count else "-",
                    st.ports_text() if st.count else "-",
                    str(proc.log_path),
                )
            )
        return rows

    def __repr__(self) -> str:
        if not self.procs:
            return "no tracked processes"
        rows = [_COLUMNS, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
        lines = []
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self.procs:
            return "<p><i>no tracked processes</i></p>"
        head = "".join(f'<th style="{_CELL_STYLE}">{c}</th>' for c in _COLUMNS)
        body = []
        for row in self.rows():
            cells = []
            for column, value in zip(_COLUMNS, row, strict=True):
                content = badge_html(value) if column == "state" else html.escape(value)
                if column == "log":
                    content = f"<code>{content}</code>"
                cells.append(f'<td style="{_CELL_STYLE}">{content}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (
            f'<table style="{_TABLE_STYLE}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )


class CleanupView:
    """What ``%proctrack_cleanup`` returns: one line per tree, details on demand."""

    def __init__(self, report: CleanupReport | None, *, verbose: bool = False) -> None:
        self.report = report
        self.verbose = verbose

    def summary(self) -> list[str]:
        report = self.report
        if report is None or not report.names:
            return ["nothing to clean up"]
        lines = list(report.summary_lines())
        lines += [f"  {m}" for m in report.messages]  # escalations: "ignored SIGTERM…"
        if not report.ok:
            survivors = report.survivors()
            lines.append(
                f"WARNING: {len(survivors)} process(es) survived: "
                + ", ".join(f"pid {o.pid} ({_shorten(o.command, 40)})" for o in survivors[:10])
            )
        return lines

    def details(self) -> str:
        report = self.report
        if report is None:
            return ""
        head = (
            f"took {report.duration:.2f} s (grace {report.grace:g} s, "
            f"discovery: {report.discovery})"
        )
        return f"{head}\n{report.details()}"

    def __repr__(self) -> str:
        lines = self.summary()
        if self.report is not None and self.report.names:
            if self.verbose:
                lines = [*lines, self.details()]
            else:
                lines = [*lines, f"(took {self.report.duration:.2f} s; -v for every process)"]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        lines = self.summary()
        ok = self.report is None or self.report.ok
        color = "inherit" if ok else STDERR_COLOR
        body = "".join(
            f'<div style="color:{color};font-family:var(--jp-code-font-family,monospace)">'
            f"{html.escape(line)}</div>"
            for line in lines
        )
        if self.report is not None and self.report.names:
            open_attr = " open" if self.verbose else ""
            body += (
                f"<details{open_attr}><summary>details "
                f"({len(self.report.outcomes)} processes, took {self.report.duration:.2f} s)"
                f"</summary><pre>{html.escape(self.details())}</pre></details>"
            )
        return f"<div>{body}</div>"


class LogsView:
    """What ``%proctrack_logs`` returns: the last lines and the path of the full log."""

    def __init__(self, proc: TrackedProcess, lines: int) -> None:
        self.name = proc.name
        self.path = str(proc.log_path)
        self.state = process_state(proc)
        self.chunks = proc.tail_chunks(lines)

    def __repr__(self) -> str:
        text = tail_text(self.chunks, max_chars=1 << 20).rstrip("\n")
        header = f"{self.name} ({self.state}); full log: {self.path}"
        return f"{header}\n{text}" if text else f"{header}\n(no output yet)"

    def _repr_html_(self) -> str:
        inner = tail_html(self.chunks, max_chars=1 << 20) or "<i>(no output yet)</i>"
        return (
            f"<div><b>{html.escape(self.name)}</b> {badge_html(self.state)} "
            f"full log: <code>{html.escape(self.path)}</code>"
            f'<pre style="max-height:40em;overflow:auto;margin-top:4px">{inner}</pre></div>'
        )
