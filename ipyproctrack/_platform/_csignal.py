"""``signal`` for the keeper's path, without its cost: the C module ``_signal`` at run time
(``signal`` wraps it in enums, and importing ``enum`` was 7 ms of a keeper's ~30 ms start,
benchmarks/keeper_cost.py); the typed module for mypy. The same functions and constants."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal

__all__ = ["signal"]
