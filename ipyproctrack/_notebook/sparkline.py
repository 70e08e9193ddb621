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
    end = points[-1][0]
    shown = [(t, v) for t, v in points if t >= end - window]
    top = max(max(v for _, v in shown), floor_max) or 1.0
    coords = " ".join(
        f"{(width - 1) * (1 - (end - t) / window) + 0.5:.1f},"
        f"{(height - 1) * (1 - v / top) + 0.5:.1f}"
        for t, v in shown
    )
    label = f"<title>{html.escape(title)}</title>" if title else ""
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'style="vertical-align:middle" role="img" aria-label="{html.escape(title)}">{label}'
        f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.2" '
        'stroke-linejoin="round"/></svg>'
    )


def sparklines_html(samples: Sequence[MetricsSample], *, window: float = SPARK_SECONDS) -> str:
    """``CPU <svg> RSS <svg>`` for the header; "" until there are two samples."""
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
    return f"CPU {cpu} RSS {rss}"
