"""Text and HTML for the notebook front: status line, process table, cleanup reports, logs,
badges and output tails.

Every process state is worded by ``ProcessState.describe()`` and coloured by its
:class:`Phase`. Nothing here talks to IPython, ipywidgets or psutil.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ipyproctrack._engine.state import Phase, ProcessState
from ipyproctrack._engine.terminal import PLAIN, Screen, Segment, lines_html
from ipyproctrack.errors import ProcTrackError

from .links import port_url, ports_html

if TYPE_CHECKING:
    from ipyproctrack import CleanupReport, TrackedProcess

    from .stats import TreeStats

__all__ = [
    "CleanupView",
    "LogsView",
    "ProcessTable",
    "badge_html",
    "command_summary",
    "detail_line_html",
    "failure_text",
    "first_line",
    "format_bytes",
    "format_clock",
    "format_duration",
    "format_start",
    "shorten_command",
    "status_line",
    "tail_box_html",
    "tail_html",
    "tail_text",
]

#: Colour of errors (failed launches, survivors of a cleanup).
ERROR_COLOR = "#c62828"
#: stderr text in HTML tails: muted, not red (http.server's access log is no error). The
#: theme's secondary text colour where JupyterLab defines it (readable in dark themes too),
#: else a blue-grey that keeps a 4.5:1 contrast on white.
STDERR_STYLE = "color:var(--jp-content-font-color2,#546e7a)"
#: The start of a line written to stderr: a thin grey bar.
STDERR_MARKER = (
    '<span title="stderr" style="border-left:2px solid #90a4ae;margin-right:4px"></span>'
)
#: At most this many characters of a tail are rendered (the newest ones).
MAX_TAIL_CHARS = 16_000
#: Lines longer than this are shortened in the middle.
MAX_LINE_CHARS = 2_000

_GREEN, _AMBER, _GREY, _RED = "#2e7d32", "#f9a825", "#616161", ERROR_COLOR


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


def format_start(started_at: float, now: float | None = None) -> str:
    """When a process started, in local time: ``14:03:12``; ``Nov 29 14:03`` on an
    earlier day."""
    now = time.time() if now is None else now
    start = time.localtime(started_at)
    if time.strftime("%Y%m%d", start) == time.strftime("%Y%m%d", time.localtime(now)):
        return time.strftime("%H:%M:%S", start)
    return time.strftime("%b %d %H:%M", start)


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


def shorten_command(text: str, limit: int) -> str:
    """A script on one line: blank and comment lines dropped, whitespace collapsed, cut
    at ``limit`` characters."""
    text = " ".join(" ".join(_meaningful_lines(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _meaningful_lines(text: str) -> list[str]:
    stripped = (ln.strip() for ln in text.splitlines())
    return [ln for ln in stripped if ln and not ln.startswith("#")]


def command_summary(text: str) -> str:
    """The first meaningful line of a script (no blank or ``# comment`` line), with `` …``
    when more lines follow: what the widget shows of its command."""
    lines = _meaningful_lines(text)
    if not lines:
        return text.strip()
    return lines[0] + (" …" if len(lines) > 1 else "")


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type name if it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def failure_text(exc: BaseException) -> str:
    """What a widget shows for a launch that failed with ``exc``: the engine's and the
    user's errors (``ProcTrackError``, ``ValueError``) by their message, others typed."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted before it started"
    if isinstance(exc, (ProcTrackError, ValueError)):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def status_line(proc: TrackedProcess, *, full: bool = True) -> str:
    """The plain one-line status printed when there is no widget frontend.

    ``full=False``: without log path and command (the widget's text form)."""
    line = f"{proc.name}: pid {proc.pid} {proc.state.describe()}"
    if not full:
        return line
    where = proc.log_error or f"log {proc.log_path}"  # "no log: …" when there is none
    return f"{line}; {where}  ({shorten_command(proc.command, 80)})"


# ----------------------------------------------------------------------------- badges, tails


def badge_color(state: ProcessState) -> str:
    """Amber while starting, green while running, grey once ended well, red otherwise."""
    if state.alive:
        return _AMBER if state.phase is Phase.STARTING else _GREEN
    return _GREY if state.ok else _RED


def badge_html(state: ProcessState, *, text: str | None = None) -> str:
    """A coloured badge of ``state``; ``text`` (default ``state.describe()``) is its label."""
    label = state.describe() if text is None else text
    return (
        f'<span class="ipyproctrack-badge" style="background:{badge_color(state)};color:white;'
        f'border-radius:3px;padding:0 6px;font-size:90%;white-space:nowrap">'
        f"{html.escape(label)}</span>"
    )


#: A line that never wraps: what does not fit ends in an ellipsis (the full text is in its
#: tooltip). ``min-width:0`` lets it shrink inside the widget's flex row.
_ONE_LINE = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0"
#: The header's detail lines (command, log path): one font, one size, a little muted.
_DETAIL = "font-family:var(--jp-code-font-family,monospace);font-size:85%;opacity:0.75"


def detail_line_html(css_class: str, label: str, text: str, *, tooltip: str) -> str:
    """One line of the widget's header under the status: ``label`` then ``text``, cut with
    an ellipsis where the widget is too narrow; ``tooltip`` is the whole story."""
    prefix = f"{html.escape(label)} " if label else ""
    return (
        f'<div class="{css_class}" style="{_ONE_LINE};{_DETAIL}" '
        f'title="{html.escape(tooltip, quote=True)}">{prefix}{html.escape(text)}</div>'
    )


def _clip_line(line: list[Segment], width: int) -> list[Segment]:
    """A line longer than MAX_LINE_CHARS keeps its start and end, with a note between."""
    half = MAX_LINE_CHARS // 2
    head: list[Segment] = []
    n = 0
    for seg in line:
        if n >= half:
            break
        head.append(seg if n + len(seg.text) <= half else seg._replace(text=seg.text[: half - n]))
        n += len(seg.text)
    tail: list[Segment] = []
    n = 0
    for seg in reversed(line):
        if n >= half:
            break
        size = len(seg.text)
        tail.append(seg if n + size <= half else seg._replace(text=seg.text[size - (half - n) :]))
        n += size
    note = Segment(f" …[{width - 2 * half} chars]… ", PLAIN, line[0].stream)
    return [*head, note, *reversed(tail)]


def _screen_lines(chunks: Sequence[tuple[str, str]], max_chars: int) -> list[list[Segment]]:
    """Raw (stream, text) runs as terminal lines: the newest ``max_chars`` characters,
    long lines shortened in the middle."""
    screen = Screen()
    for stream, text in chunks:
        screen.feed(stream, text)
    lines = screen.result()
    out: list[list[Segment]] = []
    total = 0
    for line in reversed(lines):
        width = sum(len(seg.text) for seg in line)
        if width > MAX_LINE_CHARS:
            line, width = _clip_line(line, width), MAX_LINE_CHARS
        if total + width > max_chars:
            break
        out.append(line)
        total += width + 1
    out.reverse()
    return out


def tail_html(chunks: Sequence[tuple[str, str]], *, max_chars: int = MAX_TAIL_CHARS) -> str:
    """Render raw ``[(stream, text)]`` as the inside of a ``<pre>``, as a terminal shows
    it: ``\\r`` applied, SGR colours as spans, stderr muted and marked (not red: servers
    log to stderr as a matter of course)."""
    return lines_html(_screen_lines(chunks, max_chars), stderr_style=STDERR_STYLE,
                      stderr_marker=STDERR_MARKER)


def tail_text(chunks: Sequence[tuple[str, str]], *, max_chars: int = MAX_TAIL_CHARS) -> str:
    """Render raw ``[(stream, text)]`` as plain text, as a terminal shows it."""
    lines = _screen_lines(chunks, max_chars)
    return "".join("".join(seg.text for seg in line) + "\n" for line in lines)


def tail_box_html(inner: str) -> str:
    """A widget's scrolled output box around :func:`tail_html`'s ``inner``."""
    if not inner:
        inner = '<span style="opacity:0.5">(no output yet)</span>'
    # column-reverse keeps the view scrolled to the newest line
    # JupyterLab's theme variables (light fallbacks elsewhere), set in pairs so that text
    # and background always come from the same theme
    return (
        '<div style="max-height:18em;overflow-y:auto;display:flex;'
        "flex-direction:column-reverse;border:1px solid var(--jp-border-color2,#e0e0e0);"
        'background:var(--jp-layout-color1,white);color:var(--jp-content-font-color1,#212121)">'
        '<pre style="margin:0;padding:4px 6px;white-space:pre-wrap;word-break:break-all;'
        f'font-size:85%;color:inherit;background:transparent">{inner}</pre></div>'
    )


# ----------------------------------------------------------------------------- views

_TABLE_STYLE = (
    "border-collapse:collapse;font-family:var(--jp-code-font-family,monospace);font-size:90%"
)
_CELL_STYLE = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"

_COLUMNS = ("name", "pid", "state", "uptime", "procs", "CPU", "RSS", "ports", "log")
_STATE_COLUMN = _COLUMNS.index("state")
_PORTS_COLUMN = _COLUMNS.index("ports")


class ProcessTable:
    """What ``%proctrack`` returns: an HTML table with a plain-text form."""

    def __init__(
        self, procs: Sequence[TrackedProcess], stats: Sequence[TreeStats], *, now: float,
        link: Callable[[int], str] = port_url,
    ) -> None:
        self.procs = list(procs)
        self.link = link  # port -> the URL its link opens (``links.port_url``)
        self.stats = list(stats)
        self.states = [p.state for p in self.procs]  # one snapshot for both forms
        self.now = now

    def rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for proc, state, st in zip(self.procs, self.states, self.stats, strict=True):
            running = proc.returncode is None or st.count > 0
            rows.append(
                (
                    proc.name,
                    str(proc.pid),
                    state.describe(),
                    format_duration(self.now - proc.started_at) if running else "-",
                    str(st.count),
                    st.cpu_text() if st.count else "-",
                    format_bytes(st.rss) if st.count else "-",
                    st.ports_text() if st.count else "-",
                    proc.log_status,
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
        for state, st, row in zip(self.states, self.stats, self.rows(), strict=True):
            cells = [html.escape(value) for value in row]
            cells[_STATE_COLUMN] = badge_html(state, text=row[_STATE_COLUMN])
            if st.count:
                cells[_PORTS_COLUMN] = ports_html(st.ports, self.link)
            cells[-1] = f"<code>{cells[-1]}</code>"  # the log path
            body.append("<tr>" + "".join(f'<td style="{_CELL_STYLE}">{c}</td>' for c in cells)
                        + "</tr>")
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
                + ", ".join(
                    f"pid {o.pid} ({shorten_command(o.command, 40)})" for o in survivors[:10]
                )
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
        color = "inherit" if ok else ERROR_COLOR
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
        self.log_error = proc.log_error  # shown instead of the path when there is no log
        self.state = proc.state
        self.chunks = proc.tail_chunks(lines, raw=True)  # rendered as a terminal shows it

    def __repr__(self) -> str:
        text = tail_text(self.chunks, max_chars=1 << 20).rstrip("\n")
        where = self.log_error or f"full log: {self.path}"
        header = f"{self.name} ({self.state.describe()}); {where}"
        return f"{header}\n{text}" if text else f"{header}\n(no output yet)"

    def _repr_html_(self) -> str:
        inner = tail_html(self.chunks, max_chars=1 << 20) or "<i>(no output yet)</i>"
        where = (html.escape(self.log_error) if self.log_error
                 else f"full log: <code>{html.escape(self.path)}</code>")
        return (
            f"<div><b>{html.escape(self.name)}</b> {badge_html(self.state)} {where}"
            f'<pre style="max-height:40em;overflow:auto;margin-top:4px">{inner}</pre></div>'
        )
