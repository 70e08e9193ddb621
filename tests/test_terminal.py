"""Output as a terminal shows it (issue 9): the converter alone, then through a real
process's tail and log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ipyproctrack import Tracker
from ipyproctrack._engine.terminal import (
    PLAIN,
    Screen,
    Segment,
    Style,
    apply_sgr,
    lines_html,
    plain_runs,
    plain_text,
)
from ipyproctrack._notebook.views import STDERR_STYLE

RED = "#c23621"


def texts(screen: Screen) -> list[str]:
    return ["".join(seg.text for seg in line) for line in screen.result()]


def html_of(*runs: tuple[str, str]) -> str:
    screen = Screen()
    for stream, text in runs:
        screen.feed(stream, text)
    return lines_html(screen.result(), stderr_style="color:grey", stderr_marker="|")


def test_a_carriage_return_progress_loop_keeps_one_line() -> None:
    bar = "".join(f"\r{i:3d}% |{'#' * (i // 10):<10}|" for i in range(101))
    text = plain_text(f"downloading\n{bar}\ndone\n")
    assert text == "downloading\n100% |##########|\ndone\n"


def test_carriage_return_overwrites_like_a_terminal() -> None:
    assert plain_text("abcdef\rXY\n") == "XYcdef\n"  # a shorter update leaves the rest
    assert plain_text("abcdef\rXY\x1b[K\n") == "XY\n"  # ... unless the line is erased
    assert plain_text("abc\x1b[2K\rnew\n") == "new\n"
    assert plain_text("line\r\n") == "line\n"  # CRLF is one line ending
    assert plain_text("abc\bX\n") == "abX\n"


def test_sgr_colours_and_bold_become_spans() -> None:
    html = html_of(("stdout", "\x1b[31mred\x1b[0m \x1b[1mbold\x1b[0m plain <b>\n"))
    assert f'<span style="color:{RED}">red</span>' in html
    assert '<span style="font-weight:bold">bold</span>' in html
    assert html.endswith(" plain &lt;b&gt;\n")  # escaped, unstyled after the reset
    assert "\x1b" not in html and "[0m" not in html


def test_sgr_attributes() -> None:
    style = apply_sgr(PLAIN, "1;31")
    assert style == Style(fg=RED, bold=True)
    assert apply_sgr(style, "0") == PLAIN
    assert apply_sgr(style, "22") == Style(fg=RED)
    assert apply_sgr(PLAIN, "38;5;196").fg == "#ff0000"  # 256-colour cube
    assert apply_sgr(PLAIN, "38;5;244").fg == "#808080"  # grey ramp
    assert apply_sgr(PLAIN, "38;5;9").fg == "#fc391f"  # the bright basic colours
    assert apply_sgr(PLAIN, "48;2;1;2;3").bg == "#010203"  # true colour
    assert apply_sgr(PLAIN, "38;5").fg is None  # malformed: ignored, no exception
    assert apply_sgr(PLAIN, "") == PLAIN  # ESC [ m is a reset


def test_other_escape_sequences_are_dropped() -> None:
    text = "a\x1b[2Ab\x1b[10;5Hc\x1b[?25ld\x1b]0;title\x07e\x1b(Bf\x1b[2Jg\x07\n"
    assert plain_text(text) == "abcdefg\n"


def test_an_escape_sequence_split_across_chunks() -> None:
    screen = Screen()
    for part in ("x\x1b", "[3", "8;5;", "196mred\x1b[0", "m!\n"):
        screen.feed("stdout", part)
    (line,) = screen.result()
    assert line == [Segment("x", PLAIN, "stdout"), Segment("red", Style(fg="#ff0000"), "stdout"),
                    Segment("!", PLAIN, "stdout")]


def test_one_cursor_for_both_streams() -> None:
    runs = plain_runs([("stdout", "server up\n"), ("stderr", " 10%\r 50%\r100%\n"),
                       ("stdout", "GET /\n")])
    assert runs == [("stdout", "server up\n"), ("stderr", "100%\n"), ("stdout", "GET /\n")]


def test_stderr_is_marked_and_muted_not_red() -> None:
    html = html_of(("stdout", "out\n"), ("stderr", '127.0.0.1 - "GET / HTTP/1.1" 200 -\n'),
                   ("stderr", "\x1b[31mreal red\x1b[0m\n"))
    lines = html.splitlines()
    assert lines[0] == "out"
    assert lines[1].startswith('|<span style="color:grey">127.0.0.1')
    assert lines[2] == f'|<span style="color:{RED}">real red</span>'  # its own colour wins


def test_the_widget_tail_renders_terminal_lines() -> None:
    from ipyproctrack._notebook.views import STDERR_MARKER, tail_html, tail_text

    chunks = [("stdout", "\r1%\r50%\r100%\n\x1b[32mok\x1b[0m\n"), ("stderr", "warn\n")]
    html = tail_html(chunks)
    assert html.count("%") == 1 and "100%" in html and "\r" not in html
    assert '<span style="color:#25bc24">ok</span>' in html
    assert STDERR_MARKER + f'<span style="{STDERR_STYLE}">warn</span>' in html
    assert tail_text(chunks) == "100%\nok\nwarn\n"
    # a huge line is shortened in the middle, the newest lines are kept
    long = tail_html([("stdout", "a" * 5000 + "b" * 5000 + "\nlast\n")])
    assert "chars]…" in long and long.endswith("last\n") and len(long) < 3000


@pytest.mark.skipif(sys.platform == "win32", reason="printf in bash")
def test_tail_is_plain_and_the_log_keeps_every_byte(tmp_path: Path) -> None:
    script = (
        "for i in 1 2 3; do printf '\\rstep %s' $i; done; printf '\\n';"
        " printf '\\033[1;31mFAIL\\033[0m x\\n'; printf 'warn\\r\\n' >&2"
    )
    with Tracker(log_dir=tmp_path) as tracker:
        proc = tracker.start(script, name="term")
        proc.wait(10)
        assert proc.wait_output_done(10)
        assert proc.tail() == "step 3\nFAIL x\nwarn\n"
        assert proc.tail(stream="stderr") == "warn\n"
        assert proc.tail_chunks(raw=True)[0][1].startswith("\rstep 1\rstep 2")
        raw = proc.log_path.read_bytes()
    assert b"\rstep 1\rstep 2\rstep 3\n" in raw and b"\x1b[1;31mFAIL\x1b[0m" in raw


def test_released_output_keeps_no_tail(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path) as tracker:
        proc = tracker.start("echo hello", name="gone")
        proc.wait(10)
        assert proc.wait_output_done(10) and proc.tail() == "hello\n"
        proc.release_output()
        assert proc.tail() == "" and proc.tail_chunks(raw=True) == []
        assert proc.log_path.read_text() == "hello\n"  # the log keeps it


def test_an_hour_long_progress_bar_renders_its_last_update() -> None:
    # about 1 MiB of one line rewritten 15 000 times: the render skips what was overwritten
    bar = "".join(f"\r\x1b[32m{'#' * (i % 50):<50}\x1b[0m {i % 100:3d}%" for i in range(15000))
    screen = Screen()
    screen.feed("stderr", f"start\n{bar}\nend\n")
    assert texts(screen) == ["start", f"{'#' * 49} {' 99%':>5}", "end"]
    assert screen.result()[1][0] == Segment(f"{'#' * 49} ", Style(fg="#25bc24"), "stderr")
    # a long line with no \r near its end is kept whole
    assert plain_text("x" * 20000 + "\r" + "y" * 20000 + "\n") == "y" * 20000 + "\n"
