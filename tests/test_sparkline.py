"""The widget header's sparklines: pure SVG from the engine's samples."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ipyproctrack import Tracker
from ipyproctrack._engine.metrics import MetricsSample
from ipyproctrack._notebook.sparkline import sparkline_svg, sparklines_html

SVG = "{http://www.w3.org/2000/svg}"


def _points(svg: str) -> list[tuple[float, float]]:
    root = ET.fromstring(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))
    line = root.find(f"{SVG}polyline")
    assert line is not None
    return [(float(x), float(y)) for x, y in
            (p.split(",") for p in line.attrib["points"].split())]


def test_a_sparkline_spans_its_window_newest_at_the_right() -> None:
    # 20 slots of 3 s on a fixed grid: t=3 is 19 slots back (the left edge), t=31.5 10
    svg = sparkline_svg([(3.0, 0.0), (31.5, 50.0), (60.0, 100.0)], window=60, width=61,
                        height=11, title="CPU <x>")
    pts = _points(svg)
    assert pts == [(0.5, 10.5), (28.9, 5.5), (60.5, 0.5)]  # 0 at the bottom, peak on top
    assert "<title>CPU &lt;x&gt;</title>" in svg


def test_old_points_fall_out_and_the_floor_keeps_idle_flat() -> None:
    pts = _points(sparkline_svg([(0.0, 9.0), (97.0, 1.0), (101.0, 1.0)], window=60,
                                floor_max=100, height=11))
    # t=0 is more than 60 s before the newest point; the first kept figure reaches back
    # to the left edge
    assert pts[0][0] == 0.5 and pts[-1][0] == 59.5  # (one flat segment: two corners)
    assert all(y > 10 for _, y in pts)  # 1% of a 100% scale: near the bottom


def test_too_few_samples_draw_nothing() -> None:
    assert sparkline_svg([(0.0, 1.0)]) == ""
    assert sparklines_html([]) == ""
    assert sparklines_html([MetricsSample(1.0, 5.0, 10, 1)]) == ""


def test_header_sparklines_of_cpu_and_rss() -> None:
    samples = [MetricsSample(float(t), 10.0 * t, (t + 1) << 20, 1) for t in range(120)]
    out = sparklines_html(samples)
    assert out.startswith("CPU <svg") and " RSS <svg" in out
    assert len(re.findall(r"<svg ", out)) == 2
    assert "peak 1190%" in out and "peak 120.0 MiB" in out  # of the last 60 s only
    for svg in re.findall(r"<svg .*?</svg>", out):
        pts = _points(svg)  # one point per 3 s slot, flat runs merged into one segment
        assert 2 <= len(pts) <= 20 and pts[0][0] == 0.5 and pts[-1][0] == 59.5


def test_an_unchanging_tree_draws_the_same_picture_every_second() -> None:
    # An idle widget must send no update: new samples of the same figures, a few KiB of RSS
    # jitter and samples arriving off the second, change nothing once the window is full.
    def at(end: float) -> str:
        return sparklines_html([
            MetricsSample(t + 0.013 * (t % 3), 0.0, (50 << 20) + 4096 * (t % 2), 1)
            for t in range(int(end) - 70, int(end))
        ])
    assert at(200.0) == at(203.0) == at(260.0)
    # ... nor while a young tree's window fills
    young = [MetricsSample(float(t), 0.0, 50 << 20, 1) for t in range(30)]
    assert sparklines_html(young[:10]) == sparklines_html(young[:20]) == sparklines_html(young)


def test_the_widget_header_shows_the_sparklines_of_a_real_tree(tmp_path: Path) -> None:
    from ipyproctrack._notebook.config import ProcTrackConfig
    from ipyproctrack._notebook.spec import LaunchSpec
    from ipyproctrack._notebook.widget import ProcessWidget

    class Host:  # what a widget asks of its session (no button is clicked here)
        config = ProcTrackConfig()

        def submit(self, job: Any, what: str) -> bool:
            raise AssertionError("not clicked")

        def relaunch(self, spec: Any, *, on_launched: Any = None) -> Any:
            raise AssertionError("not clicked")

        def stop_process(self, proc: Any, grace: float | None) -> None:
            raise AssertionError("not clicked")

        def wake(self) -> None:
            pass

    with Tracker(log_dir=tmp_path, metrics_interval=0.2) as tracker:
        proc = tracker.start("exec sleep 30", name="sparky")
        widget = ProcessWidget(Host(), LaunchSpec(command="sleep", name="sparky"))
        widget.attach(proc)
        deadline = time.monotonic() + 15
        while not sparklines_html(proc.metrics()) and time.monotonic() < deadline:
            time.sleep(0.05)  # two 3 s slots of samples
        header = dict(widget.pending(time.monotonic()))["header"]
        assert "CPU <svg" in header and "RSS <svg" in header
        proc.stop(grace=0.5)
