"""Output as a terminal shows it: ``\\r`` overwrites the current line, SGR colours style
the text, every other escape sequence is dropped. No IPython here.

:class:`Screen` is fed (stream, text) runs, stdout and stderr interleaved as they were
read, and keeps one cursor for both, as a terminal does. Its lines are lists of
:class:`Segment` (text, style, stream). :func:`plain_runs` gives the plain text (for
``tail()``); :func:`lines_html` gives styled HTML (for the widget). The raw log on disk
keeps every byte; this only shapes what people read.

The work per line is small: a line's text is a few segments, and a progress bar that
rewrites its line a thousand times costs a thousand short overwrites, not a re-render.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "PLAIN",
    "Screen",
    "Segment",
    "Style",
    "lines_html",
    "plain_runs",
    "plain_text",
]

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other two-byte escapes, the control
# characters a terminal acts on, and runs of ordinary text.
_TOKEN = re.compile(
    r"\x1b\[([0-?]*)[ -/]*([@-~])"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[ -/]*[0-~]"
    r"|([\r\n\b])"
    r"|([\x00-\x06\x0e-\x1a\x1c-\x1f\x7f\x07\x0b\x0c])"
    r"|([^\x00-\x1f\x7f]+|\t)"
)
# An escape sequence cut off at the end of a chunk: kept until the next chunk.
_PARTIAL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[ -/]*)\Z")

# A line longer than twice this that is rewritten with \r starts at its last \r before
# the final window: what came before was overwritten long ago (a progress bar that ran
# for an hour), and skipping it keeps a render of a 1 MiB tail at about 1 ms, not 250 ms.
_REWRITE_WINDOW = 8192

# The 16 standard colours (xterm-ish values that read well on light and dark themes).
_BASIC = (
    "#000000", "#c23621", "#25bc24", "#adad27", "#492ee1", "#d338d3", "#33bbc8", "#cbcccd",
    "#818383", "#fc391f", "#31e722", "#eaec23", "#5833ff", "#f935f8", "#14f0f0", "#e9ebeb",
)


class Style(NamedTuple):
    """The SGR attributes that survive into HTML."""

    fg: str | None = None
    bg: str | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False

    def css(self) -> str:
        parts = []
        if self.fg:
            parts.append(f"color:{self.fg}")
        if self.bg:
            parts.append(f"background-color:{self.bg}")
        if self.bold:
            parts.append("font-weight:bold")
        if self.dim:
            parts.append("opacity:0.7")
        if self.italic:
            parts.append("font-style:italic")
        if self.underline:
            parts.append("text-decoration:underline")
        return ";".join(parts)


PLAIN = Style()


class Segment(NamedTuple):
    text: str
    style: Style
    stream: str


def _color_256(n: int) -> str | None:
    if 0 <= n < 16:
        return _BASIC[n]
    if 16 <= n < 232:
        n -= 16
        levels = [0 if v == 0 else 55 + 40 * v for v in (n // 36, n // 6 % 6, n % 6)]
        return "#{:02x}{:02x}{:02x}".format(*levels)
    if 232 <= n < 256:
        v = 8 + 10 * (n - 232)
        return f"#{v:02x}{v:02x}{v:02x}"
    return None


def _extended(codes: list[int], i: int) -> tuple[str | None, int]:
    """The colour of ``38;5;n`` / ``38;2;r;g;b`` starting at ``codes[i]`` (the 38 or 48),
    and the index after it."""
    kind = codes[i + 1] if i + 1 < len(codes) else None
    if kind == 5 and i + 2 < len(codes):
        return _color_256(codes[i + 2]), i + 3
    if kind == 2 and i + 4 < len(codes):
        r, g, b = (max(0, min(255, c)) for c in codes[i + 2 : i + 5])
        return f"#{r:02x}{g:02x}{b:02x}", i + 5
    return None, len(codes)  # malformed: ignore the rest of the sequence


def apply_sgr(style: Style, params: str) -> Style:
    """The style after ``ESC [ params m``."""
    codes = [int(p) if p.isdigit() else 0 for p in params.replace(":", ";").split(";")]
    i = 0
    while i < len(codes):
        c = codes[i]
        i += 1
        if c == 0:
            style = PLAIN
        elif c == 1:
            style = style._replace(bold=True)
        elif c == 2:
            style = style._replace(dim=True)
        elif c == 3:
            style = style._replace(italic=True)
        elif c == 4:
            style = style._replace(underline=True)
        elif c == 22:
            style = style._replace(bold=False, dim=False)
        elif c == 23:
            style = style._replace(italic=False)
        elif c == 24:
            style = style._replace(underline=False)
        elif 30 <= c <= 37 or 90 <= c <= 97:
            style = style._replace(fg=_BASIC[c - 30 if c < 90 else c - 82])
        elif 40 <= c <= 47 or 100 <= c <= 107:
            style = style._replace(bg=_BASIC[c - 40 if c < 100 else c - 92])
        elif c == 39:
            style = style._replace(fg=None)
        elif c == 49:
            style = style._replace(bg=None)
        elif c in (38, 48):
            color, i = _extended(codes, i - 1)
            style = style._replace(fg=color) if c == 38 else style._replace(bg=color)
    return style


class Screen:
    """A terminal's lines, fed with (stream, text) runs. ``lines`` holds the finished
    lines; :meth:`result` adds the current one."""

    def __init__(self) -> None:
        self.lines: list[list[Segment]] = []
        self._line: list[Segment] = []
        self._width = 0  # characters in _line
        self._col = 0
        self._style = PLAIN
        self._pending = ""

    def feed(self, stream: str, text: str) -> None:
        if self._pending:
            text, self._pending = self._pending + text, ""
        if len(text) > 2 * _REWRITE_WINDOW:
            text = _drop_overwritten(text)
        partial = _PARTIAL.search(text, max(0, len(text) - 64))
        if partial is not None:
            self._pending = text[partial.start() :]
            text = text[: partial.start()]
        for match in _TOKEN.finditer(text):
            plain = match.group(5)
            if plain is not None:
                self._write(Segment(plain, self._style, stream))
            elif (ctl := match.group(3)) is not None:
                if ctl == "\n":
                    self.lines.append(self._line)
                    self._line, self._width, self._col = [], 0, 0
                elif ctl == "\r":
                    self._col = 0
                else:  # backspace
                    self._col = max(0, self._col - 1)
            elif match.group(2) is not None:
                self._csi(match.group(1), match.group(2))
            # anything else (OSC titles, lone controls, other escapes) is dropped

    def _csi(self, params: str, final: str) -> None:
        if final == "m":
            self._style = apply_sgr(self._style, params)
        elif final == "K":  # erase in line: what progress bars send after \r
            mode = params or "0"
            if mode == "0":
                self._cut(self._col)
            elif mode == "2":
                # the cursor stays where it was: pad up to it, as the terminal shows blanks
                self._line = [Segment(" " * self._col, PLAIN, "stdout")] if self._col else []
                self._width = self._col
        # cursor movement, screen erasing, modes...: dropped

    def _cut(self, col: int) -> None:
        """Keep the first ``col`` characters of the current line."""
        if col >= self._width:
            return
        kept: list[Segment] = []
        n = 0
        for seg in self._line:
            if n + len(seg.text) <= col:
                kept.append(seg)
                n += len(seg.text)
            else:
                if col > n:
                    kept.append(seg._replace(text=seg.text[: col - n]))
                break
        self._line, self._width = kept, col

    def _write(self, seg: Segment) -> None:
        if self._col >= self._width:  # appending: the common case
            self._line.append(seg)
            self._width = self._col = self._width + len(seg.text)
            return
        # overwrite from _col: what is before, the new text, then what is after its end
        end = self._col + len(seg.text)
        rest = self._tail_from(end)
        self._cut(self._col)
        self._line.append(seg)
        self._line.extend(rest)
        self._width = end + sum(len(s.text) for s in rest)
        self._col = end

    def _tail_from(self, col: int) -> list[Segment]:
        out: list[Segment] = []
        n = 0
        for seg in self._line:
            size = len(seg.text)
            if n + size > col:
                out.append(seg if n >= col else seg._replace(text=seg.text[col - n :]))
            n += size
        return out

    def result(self) -> list[list[Segment]]:
        """Every line, the unfinished last one included (if it has text)."""
        return [*self.lines, self._line] if self._line else list(self.lines)

    @property
    def ends_with_newline(self) -> bool:
        return not self._line


def _drop_overwritten(text: str) -> str:
    """``text`` without the start of each very long line that a later \r overwrote (see
    _REWRITE_WINDOW); a final update narrower than the ones before it is the one case
    where this shows less than a terminal would."""
    parts = []
    pos, size = 0, len(text)
    while pos < size:
        newline = text.find("\n", pos)
        end = size if newline < 0 else newline + 1
        if end - pos > 2 * _REWRITE_WINDOW:
            cr = text.find("\r", end - _REWRITE_WINDOW, end)
            if cr > pos:
                pos = cr
        parts.append(text[pos:end])
        pos = end
    return "".join(parts)


def screen_of(runs: Iterable[tuple[str, str]]) -> Screen:
    screen = Screen()
    for stream, text in runs:
        screen.feed(stream, text)
    return screen


def plain_runs(runs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(stream, text) runs as a terminal would show them, as plain text: ``\\r`` applied,
    escape sequences removed, neighbouring text of one stream merged."""
    screen = screen_of(runs)
    out: list[tuple[str, list[str]]] = []
    lines = screen.result()
    last = len(lines) - 1
    for i, line in enumerate(lines):
        for seg in line:
            if out and out[-1][0] == seg.stream:
                out[-1][1].append(seg.text)
            else:
                out.append((seg.stream, [seg.text]))
        if i < last or screen.ends_with_newline:
            stream = line[-1].stream if line else (out[-1][0] if out else "stdout")
            if out and out[-1][0] == stream:
                out[-1][1].append("\n")
            else:
                out.append((stream, ["\n"]))
    return [(s, "".join(parts)) for s, parts in out]


def plain_text(text: str) -> str:
    """One text as a terminal would show it, as plain text."""
    return "".join(t for _, t in plain_runs([("stdout", text)]))


def lines_html(
    lines: Sequence[Sequence[Segment]], *, stderr_style: str, stderr_marker: str
) -> str:
    """Lines as the inside of a ``<pre>``: styled spans; stderr text gets
    ``stderr_style`` (where SGR set no colour) and a line that starts on stderr begins
    with ``stderr_marker``."""
    out: list[str] = []
    for line in lines:
        if line and line[0].stream == "stderr":
            out.append(stderr_marker)
        for seg in line:
            text = html.escape(seg.text)
            css = seg.style.css() if seg.style is not PLAIN else ""
            if seg.stream == "stderr" and not seg.style.fg:
                css = f"{stderr_style};{css}" if css else stderr_style
            out.append(f'<span style="{css}">{text}</span>' if css else text)
        out.append("\n")
    return "".join(out)
