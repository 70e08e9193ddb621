"""The per-tree limits as the API takes them: ``max_memory="512M"`` and ``max_runtime=60``.

The keeper holds them (``_keeper/limits.py``); this module only checks and converts."""

from __future__ import annotations

import math
import re

from ..errors import LaunchError

__all__ = ["parse_runtime", "parse_size"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(value: str | int | None) -> int:
    """Bytes from ``"512M"``, ``"1G"``, ``"1.5GiB"``, ``"100MB"`` or an int of bytes
    (binary units: M is MiB); 0 for None. LaunchError for anything else."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise LaunchError(f"bad max_memory {value!r}: give bytes or a size like '512M'")
    if isinstance(value, int):
        if value <= 0:
            raise LaunchError(f"max_memory must be > 0 bytes, not {value}")
        return value
    match = _SIZE.match(str(value))
    if match is None:
        raise LaunchError(f"bad max_memory {value!r}: give bytes or a size like '512M', '1G'")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise LaunchError(f"max_memory must be > 0 bytes, not {value!r}")
    return size


def parse_runtime(value: float | None) -> float:
    """Seconds (finite, > 0); 0.0 for None. LaunchError for anything else."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LaunchError(f"bad max_runtime {value!r}: give seconds")
    if not (math.isfinite(value) and value > 0):
        raise LaunchError(f"max_runtime must be a finite number of seconds > 0, not {value}")
    return float(value)
