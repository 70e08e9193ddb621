"""The widget in a real browser: JupyterLab and Notebook 7, driven by headless Chromium.

One scenario per front end, in the order a person would go (issue 13):
1. open a notebook that loads the extension and starts an HTTP server with ``--wait-http``;
2. the widget says running with the right pid, and requests made from outside show in the
   tail within 1 s;
3. Stop: the tree is gone (checked through /proc by pid and create time), badge stopped;
4. Restart: a new pid that answers;
5. a flooding process: its tail changes at most 5 times a second and the page stays
   responsive;
6. Kernel -> Shut Down Kernel: every widget shows its final stopped state and no tagged
   process is left;
7. no console error in the whole session.
Along the way the header's layout is checked (buttons whole, one-line command and log path
with their tooltips, readable colours) and each state is saved under ``build/browser/``.

The timing bounds (1 s, 5 Hz, responsiveness) are the issue's spec and are asserted here:
like the ``perf`` tests, these tests run in a step of their own (``-m browser``), never in the
default run. Checks whose failure should not hide the later steps are collected
(:class:`Checks`) and reported together at the end.
"""

from __future__ import annotations

import functools
import statistics
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from _procs import create_time, tagged_processes, wait_dead

from ._jupyter import Frontend, free_port, running_server
from ._page import UI_TIMEOUT, NotebookPage, WidgetView, poll

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, ViewportSize

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

#: The issue's bounds.
TAIL_LATENCY = 1.0  # seconds from a request to its access-log line in the page
MAX_TAIL_HZ = 5  # tail updates per second while a process floods
FLOOD_WINDOW = 3.0  # seconds over which the rate is measured
MAX_EVENT_LOOP_LAG = 1.0  # seconds the page's event loop may stall meanwhile
MIN_CONTRAST = 4.5  # WCAG AA for normal text

VIEWPORT: ViewportSize = {"width": 1000, "height": 900}

WEB, FLOOD = 1, 2  # cell indexes


def notebook_cells(web_port: int, root: Path) -> list[str]:
    return [
        "%load_ext ipyproctrack",
        f"%%tracked web --wait-http http://127.0.0.1:{web_port}/\n"
        "# a static file server for this notebook's folder; its access log goes to stderr\n"
        f"python3 -m http.server {web_port} --bind 127.0.0.1 --directory {root}\n",
        "%%tracked flood\n"
        "# about a thousand lines a second, for a minute at most\n"
        "python3 -u -c 'import time\n"
        "for i in range(60_000):\n"
        "    print(f\"flood line {i}\")\n"
        "    time.sleep(0.001)'\n",
    ]


class Checks:
    """Soft checks: each failure is noted and the scenario goes on; :meth:`verify` fails
    with all of them."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, ok: object, message: str) -> None:
        if not ok:
            self.failures.append(message)

    def expect_soon(
        self, what: str, check: Callable[[], object], timeout: float = UI_TIMEOUT
    ) -> None:
        try:
            poll(what, check, timeout)
        except AssertionError as exc:
            self.failures.append(str(exc))

    def verify(self) -> None:
        assert not self.failures, "\n".join(self.failures)


# ----------------------------------------------------------------------------- helpers


def get(url: str) -> int:
    """Status of a GET from outside the browser (4xx and 5xx included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def answers(url: str) -> bool:
    try:
        return get(url) == 200
    except OSError:
        return False


def tree_of(pid: int) -> list[tuple[int, float]]:
    """``pid``, its descendants and its keeper (the parent ipyproctrack started it under),
    each as (pid, create time)."""
    root = psutil.Process(pid)
    members = [root, *root.children(recursive=True)]
    parent = root.parent()
    if parent is not None and "_keeper" in " ".join(parent.cmdline()):
        members.append(parent)
    return [(p.pid, p.create_time()) for p in members]


def contrast(element: Locator) -> float:
    """WCAG contrast of an element's text against what is behind it, opacity included."""
    ratio: float = element.evaluate(_CONTRAST_JS)
    return ratio


_CONTRAST_JS = """el => {
  const rgba = s => { const m = s.match(/[\\d.]+/g).map(Number);
                      return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  let bg = null, opacity = 1;
  for (let e = el; e; e = e.parentElement) {
    const st = getComputedStyle(e);
    opacity *= Number(st.opacity);
    const c = rgba(st.backgroundColor);
    if (!bg && c[3] > 0.5) bg = c;
  }
  bg = bg || [255, 255, 255, 1];
  const fg = rgba(getComputedStyle(el).color);
  const a = fg[3] * opacity;
  const mix = [0, 1, 2].map(i => fg[i] * a + bg[i] * (1 - a));
  const lum = c => { const v = c.map(x => { x /= 255;
      return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const [hi, lo] = [lum(mix), lum(bg)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}"""


# ----------------------------------------------------------------------------- the steps


def start_web(nb: NotebookPage, web_port: int) -> WidgetView:
    """Steps 1 and 2: load the extension, start the server, check pid and live tail."""
    nb.run_cell(0)
    nb.run_cell(WEB)  # returns once --wait-http saw the server answer
    web = nb.widget(WEB)
    web.wait_badge(r"^running")
    pid = web.pid()
    assert pid is not None, web.header.inner_text()
    server = psutil.Process(pid)
    assert "http.server" in " ".join(server.cmdline()), server.cmdline()
    assert any(c.laddr.port == web_port for c in server.net_connections("tcp")), (
        f"pid {pid} does not listen on {web_port}"
    )
    latencies = []
    for _ in range(3):
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        assert get(f"http://127.0.0.1:{web_port}/{probe}") == 404
        web.wait_tail_contains(probe)
        latencies.append(time.monotonic() - t0)
    print(f"tail latencies: {', '.join(f'{x:.3f} s' for x in latencies)}")
    # a median of three: one stall of a shared 2-core machine is not the widget's latency
    assert statistics.median(latencies) <= TAIL_LATENCY, f"tail latencies {latencies}"
    return web


def check_layout(web: WidgetView, checks: Checks) -> None:
    """Buttons whole, command and log path on one line each with tooltips, readable."""
    for button in (web.stop, web.restart):
        fits = button.evaluate("b => b.scrollWidth <= b.clientWidth + 1")
        checks.expect(fits, f"button {button.inner_text()!r} is squeezed")
    cmd, log = web.command, web.log_line
    checks.expect(cmd.inner_text().startswith("python3 -m http.server"),
                  f"command line shows {cmd.inner_text()!r}, not the first meaningful line")
    checks.expect("# a static file server" in (cmd.get_attribute("title") or ""),
                  "the command's tooltip is not the whole script")
    checks.expect((log.get_attribute("title") or "").endswith(".log"), "no log path tooltip")
    for el, what in ((cmd, "command"), (log, "log path")):
        lines = el.evaluate(
            "e => Math.round(e.getBoundingClientRect().height"
            " / parseFloat(getComputedStyle(e).lineHeight || '1'))"
        )
        checks.expect(lines <= 1, f"the {what} takes {lines} lines")
    sizes = {el.evaluate("e => getComputedStyle(e).fontSize") for el in (cmd, log)}
    checks.expect(len(sizes) == 1, f"command and log path in different sizes: {sizes}")
    for el, what in ((web.header, "header"), (cmd, "command"), (web.tail, "tail")):
        ratio = contrast(el)
        checks.expect(ratio >= MIN_CONTRAST, f"{what} contrast {ratio:.1f} < {MIN_CONTRAST}")


def check_stderr_style(web: WidgetView, checks: Checks) -> None:
    """http.server's access log (stderr) is told apart from stdout, but not in red."""
    style = web.tail.evaluate(_STDERR_STYLE_JS, "GET /probe-")
    if style is None:
        checks.failures.append("no access-log line in the tail")
        return
    checks.expect(style["distinct"], f"stderr looks like stdout: {style}")
    r, g, b = style["rgb"]
    checks.expect(not (r >= 150 and r > 2 * g and r > 2 * b), f"stderr is red: {style}")
    # the innermost element holding an access-log line: the last match in document order
    ratio = contrast(web.tail.locator("*", has_text="GET /probe-").last)
    checks.expect(ratio >= MIN_CONTRAST, f"stderr contrast {ratio:.1f} < {MIN_CONTRAST}")


_STDERR_STYLE_JS = """(root, text) => {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode()) && !node.textContent.includes(text)) {}
  if (!node) return null;
  const el = node.parentElement, pre = root.querySelector('pre');
  const a = getComputedStyle(el), b = getComputedStyle(pre);
  const keys = ['color', 'backgroundColor', 'fontStyle', 'fontWeight', 'opacity',
                'borderLeftWidth', 'textDecorationLine'];
  return {
    distinct: el !== pre && keys.some(k => a[k] !== b[k]),
    rgb: a.color.match(/[\\d.]+/g).slice(0, 3).map(Number),
    color: a.color,
  };
}"""


def stop_and_restart(nb: NotebookPage, web: WidgetView, web_port: int) -> None:
    """Steps 3 and 4."""
    pid = web.pid()
    assert pid is not None and create_time(pid) is not None
    tree = tree_of(pid)
    web.stop.click()
    assert wait_dead(tree, UI_TIMEOUT) == [], f"Stop left {tree} alive"
    web.wait_badge(r"stopped")
    assert not answers(f"http://127.0.0.1:{web_port}/")
    nb.screenshot("3-stopped")

    web.restart.click()
    poll("a new pid", lambda: web.pid() not in (None, pid))
    web.wait_badge(r"^running")
    poll("the restarted server to answer", lambda: answers(f"http://127.0.0.1:{web_port}/"))
    nb.screenshot("4-restarted")


_FLOOD_JS = """(el, ms) => new Promise(resolve => {
  let updates = 0, maxLag = 0, last = performance.now();
  const observer = new MutationObserver(records => {
    for (const r of records) if (r.target === el && r.type === 'childList') updates++;
  });
  observer.observe(el, {childList: true});
  const tick = setInterval(() => {
    const now = performance.now();
    maxLag = Math.max(maxLag, now - last - 50);
    last = now;
  }, 50);
  setTimeout(() => { observer.disconnect(); clearInterval(tick);
                     resolve({updates, maxLag: maxLag / 1000}); }, ms);
})"""


def flood(nb: NotebookPage) -> WidgetView:
    """Step 5: a process that writes a thousand lines a second."""
    nb.run_cell(FLOOD)
    view = nb.widget(FLOOD)
    view.wait_tail_contains("flood line")
    m = view.tail.evaluate(_FLOOD_JS, FLOOD_WINDOW * 1000)
    t0 = time.monotonic()
    view.tail.evaluate("el => el.textContent.length")
    round_trip = time.monotonic() - t0
    print(f"flood: {m['updates']} tail updates in {FLOOD_WINDOW:g} s, page stalled at most "
          f"{m['maxLag']:.3f} s, JS round trip {round_trip:.3f} s")
    nb.screenshot("5-flood")
    assert 2 <= m["updates"] <= MAX_TAIL_HZ * FLOOD_WINDOW + 1, (
        f"{m['updates']} tail updates in {FLOOD_WINDOW:g} s (live, at most {MAX_TAIL_HZ}/s)"
    )
    assert m["maxLag"] <= MAX_EVENT_LOOP_LAG, f"the page stalled {m['maxLag']:.2f} s"
    assert round_trip <= MAX_EVENT_LOOP_LAG, f"a JS round trip took {round_trip:.2f} s"
    return view


def shut_down(nb: NotebookPage, views: list[WidgetView], checks: Checks) -> None:
    """Step 6: Kernel -> Shut Down Kernel; every widget ends stopped, nothing is left."""
    nb.shut_down_kernel()
    poll("every tagged process of this run to end", lambda: not tagged_processes())
    for view in views:
        checks.expect_soon(
            "the final stopped state", functools.partial(view.badge_has, "stopped"), 10.0
        )
        for button in (view.stop, view.restart):
            checks.expect(button.is_disabled(), f"{button.inner_text()!r} still enabled")
    nb.screenshot("6-kernel-shut-down")


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("frontend", ["lab", "notebook"])
def test_widget_in_a_browser(
    frontend: Frontend, chromium: Browser, tmp_path: Path, shots: Path
) -> None:
    checks = Checks()
    with running_server(frontend, tmp_path) as server:
        web_port = free_port()
        server.write_notebook("widget.ipynb", notebook_cells(web_port, server.root))
        page = chromium.new_page(viewport=VIEWPORT)
        nb = NotebookPage(page, shots, frontend)
        try:
            nb.open(server.notebook_url("widget.ipynb"))
            web = start_web(nb, web_port)
            nb.screenshot("2-running")
            nb.cell(WEB).screenshot(path=str(shots / f"{frontend}-web-cell.png"))
            check_layout(web, checks)
            check_stderr_style(web, checks)
            stop_and_restart(nb, web, web_port)
            flood_view = flood(nb)
            shut_down(nb, [web, flood_view], checks)
            checks.expect(not nb.console.errors, "console errors:\n" + "\n".join(
                nb.console.errors))
            print(f"known upstream page errors forgiven: {nb.console.forgiven}")
        except BaseException:
            nb.screenshot("failed")
            raise
        finally:
            page.close()
    checks.verify()


def test_dark_theme_is_readable(chromium: Browser, tmp_path: Path, shots: Path) -> None:
    """JupyterLab Dark: the widget's text stays readable (contrast), one screenshot."""
    checks = Checks()
    with running_server("lab", tmp_path, dark=True) as server:
        web_port = free_port()
        server.write_notebook("dark.ipynb", notebook_cells(web_port, server.root)[:WEB + 1])
        page = chromium.new_page(viewport=VIEWPORT)
        nb = NotebookPage(page, shots, "lab-dark")
        try:
            nb.open(server.notebook_url("dark.ipynb"))
            page.locator('body[data-jp-theme-name="JupyterLab Dark"]').wait_for(
                state="attached", timeout=UI_TIMEOUT * 1000
            )
            web = start_web(nb, web_port)
            nb.screenshot("2-running")
            nb.cell(WEB).screenshot(path=str(shots / "lab-dark-web-cell.png"))
            check_layout(web, checks)
            check_stderr_style(web, checks)
            nb.shut_down_kernel()
            poll("every tagged process of this run to end", lambda: not tagged_processes())
            checks.expect(not nb.console.errors, "console errors:\n" + "\n".join(
                nb.console.errors))
        finally:
            page.close()
    checks.verify()
