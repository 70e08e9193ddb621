"""What a ``%%tracked`` cell launches: kept for the Restart button and for re-runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LaunchSpec"]


@dataclass
class LaunchSpec:
    """Everything needed to start (and restart) one tracked command."""

    command: str | list[str]
    name: str
    cwd: str | None = None
    env: dict[str, str] | None = None
    grace: float | None = None
    ready: list[Any] = field(default_factory=list)
    ready_timeout: float = 30.0
    max_memory: str | None = None  # the tree's RSS limit ("512M"), held by the keeper
    max_runtime: float | None = None  # seconds
    #: builds fresh readiness checks for a restart (checks keep per-launch state)
    make_ready: Callable[[], list[Any]] | None = None
    #: "auto", a port number or None: see ``Tracker.start(port=...)``
    port: int | str | None = None

    def describe_ready(self) -> str:
        return ", ".join(
            r.describe() if callable(getattr(r, "describe", None)) else str(r) for r in self.ready
        )

    def for_restart(self) -> LaunchSpec:
        """The same launch with fresh readiness checks."""
        ready = self.make_ready() if self.make_ready is not None else list(self.ready)
        return dataclasses.replace(self, ready=ready)
