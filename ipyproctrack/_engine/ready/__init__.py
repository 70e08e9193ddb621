"""Readiness: checks (``checks.py``) that all wait through one deadline loop (``wait.py``).

The engine uses them like this (all on its anyio loop thread, except the two plain calls)::

    checks = as_checks(ready)                       # before launch
    for c in checks:                                # before launch: refuse a taken port
        if c.port is not None:
            check_port_free(c.port, c.host, owners=...)
    proc = <launch>
    for c in checks:                                # right after launch, before draining
        c.prepare(proc)
    <start draining>
    try:
        seconds = await wait_until_ready(proc, checks, timeout=ready_timeout)
    finally:
        close_checks(checks)

``wait_until_ready`` turns the deadline or an early exit into ``ReadyTimeout`` /
``ExitedBeforeReady``; tearing the tree down after that is the engine's job.
"""

from __future__ import annotations

from .checks import (
    CallableReady,
    HttpReady,
    OutputReady,
    PortReady,
    ProcessLike,
    ReadinessCheck,
    as_checks,
    close_checks,
    describe_checks,
)
from .wait import wait_until_ready

__all__ = [
    "CallableReady",
    "HttpReady",
    "OutputReady",
    "PortReady",
    "ProcessLike",
    "ReadinessCheck",
    "as_checks",
    "close_checks",
    "describe_checks",
    "wait_until_ready",
]
