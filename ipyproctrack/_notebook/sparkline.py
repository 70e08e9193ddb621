"""Small inline SVG sparklines of a tree's CPU and RSS, for the widget header.

Pure functions of the engine's samples (``TrackedProcess.metrics()``): no widget, no
thread. The SVG goes inside the existing HTML widget, so no frontend code is needed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from ipyproctrack._engine.metrics import MetricsSample

from .views import format_bytes

__all__ = ["SPARK_SECONDS", "sparkline_svg", "sparklines_html"]

#: The window the header's sparklines show.
SPARK_SECONDS = 60.0
_WIDTH = 60
_HEIGHT = 14
_SLOTS = 20  # points per sparkline: one per window / 20 seconds (3 s by default)
_CPU_COLOR = "#1f77b4"
_RSS_COLOR = "#9467bd"


def sparkline_svg(
    points: Sequence[tuple[float, float]],
    *,
    window: float = SPARK_SECONDS,
    floor_max: float = 0.0,
    color: str = _CPU_COLOR,
    title: str = "",
    width: int = _WIDTH,
    height: int = _HEIGHT,
) -> str:
    """An inline ``<svg>`` polyline of ``(t, value)`` points over the last ``window``
    seconds (the newest point at the right edge). The vertical scale is 0 to the largest
    value, at least ``floor_max``. Fewer than two points: an empty string."""
    if len(points) < 2:
        return ""
    slots = _slotted(points, window)
    if len(slots) < 2:
        return ""
    if slots[0][0] < _SLOTS - 1:
        # A young tree: its first figure reaches back to the left edge, so the picture has
        # a fixed width and stays the same while the figures do (no update for an idle
        # widget as its window fills).
        slots.insert(0, (_SLOTS - 1, slots[0][1]))
    top = max(max(v for _, v in slots), floor_max) or 1.0
    # Whole slots and whole pixel rows: a tree whose figures do not change draws the same
    # picture on every refresh, so an idle widget sends no update (each one costs the
    # kernel a message; 100 idle widgets must stay quiet).
    xy = [((width - 1) * (1 - k / (_SLOTS - 1)) + 0.5, round((height - 1) * (1 - v / top)) + 0.5)
          for k, v in slots]
    # Only the corners: a flat run is one segment, whatever its number of samples.
    corners = [p for i, p in enumerate(xy)
               if i in (0, len(xy) - 1) or not xy[i - 1][1] == p[1] == xy[i + 1][1]]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in corners)
    label = f"<title>{html.escape(title)}</title>" if title else ""
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'style="vertical-align:middle" role="img" aria-label="{html.escape(title)}">{label}'
        f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.2" '
        'stroke-linejoin="round"/></svg>'
    )


def _slotted(points: Sequence[tuple[float, float]], window: float) -> list[tuple[int, float]]:
    """(slots back from the newest, peak value in that slot), oldest first: the window cut
    into ``_SLOTS`` slots on a fixed grid of time, so slots do not shift between samples."""
    step = window / _SLOTS
    newest = int(points[-1][0] // step)
    peaks: dict[int, float] = {}
    for t, v in points:
        back = newest - int(t // step)
        if 0 <= back < _SLOTS:
            peaks[back] = max(peaks.get(back, v), v)
    return sorted(peaks.items(), reverse=True)


def sparklines_html(samples: Sequence[MetricsSample], *, window: float = SPARK_SECONDS) -> str:
    """``CPU <svg> RSS <svg>`` for the header; "" until two time slots have samples."""
    if len(samples) < 2:
        return ""
    end = samples[-1].t
    recent = [s for s in samples if s.t >= end - window]
    if len(recent) < 2:
        return ""
    peak_cpu = max(s.cpu_percent for s in recent)
    peak_rss = max(s.rss for s in recent)
    cpu = sparkline_svg([(s.t, s.cpu_percent) for s in recent], window=window,
                        floor_max=100.0, color=_CPU_COLOR,
                        title=f"CPU, last {window:g} s (peak {peak_cpu:.0f}%)")
    rss = sparkline_svg([(s.t, float(s.rss)) for s in recent], window=window,
                        color=_RSS_COLOR,
                        title=f"RSS, last {window:g} s (peak {format_bytes(peak_rss)})")
    if not cpu or not rss:  # fewer than two time slots so far
        return ""
    return f"CPU {cpu} RSS {rss}"
