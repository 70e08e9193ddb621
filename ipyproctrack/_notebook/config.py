"""The extension's defaults, as a traitlets ``Configurable``.

Set them with ``%config ProcTrackConfig.grace = 1.0`` in a notebook, or with
``c.ProcTrackConfig.grace = 1.0`` in ``ipython_config.py``.
"""

from __future__ import annotations

import math
from typing import Any

from traitlets import Float, Int, TraitError, Unicode, validate
from traitlets.config import Configurable

from .links import proxy_url_problem

__all__ = ["MAX_GRACE", "MAX_REFRESH_HZ", "ProcTrackConfig", "grace_problem"]

#: The widgets never refresh faster than this, whatever the configuration says.
MAX_REFRESH_HZ = 5.0
#: The longest grace accepted (seconds): a stop must end, so inf and NaN are refused.
MAX_GRACE = 600.0


def grace_problem(value: float) -> str | None:
    """Why ``value`` cannot be a grace (None if it can): finite, 0 to MAX_GRACE seconds."""
    if not math.isfinite(value) or not 0 <= value <= MAX_GRACE:
        return f"must be a number of seconds from 0 to {MAX_GRACE:g}, not {value:g}"
    return None


class ProcTrackConfig(Configurable):
    """Defaults of the ipyproctrack notebook extension."""

    grace = Float(
        3.0,
        help="Seconds a tracked tree gets between SIGTERM and SIGKILL in %%proctrack_cleanup, "
        "the Stop button and a re-run of a %%tracked cell (0 to 600). Kernel shutdown uses "
        "at most 1 s.",
    ).tag(config=True)

    # Int bounds: traitlets itself refuses a value below min, naming the trait
    tail_lines = Int(40, min=1, help="Lines of output shown in each process widget.").tag(
        config=True
    )

    refresh_hz = Float(
        4.0, help=f"How often the widgets refresh, per second (at most {MAX_REFRESH_HZ:g})."
    ).tag(config=True)

    log_dir = Unicode(
        "",
        help="Directory for the full output logs; empty means the engine's default (a "
        "fresh directory per session under <tmp>/ipyproctrack-<uid>/; those of ended "
        "sessions are deleted but for the newest 3). A configured directory must be "
        "yours and not writable by others. Used when the Tracker is created.",
    ).tag(config=True)

    log_max_bytes = Int(
        20 * 2**20, min=0, help="Rotate a log file at this size; 0 means never rotate."
    ).tag(config=True)

    log_backups = Int(
        5, min=-1, help="Rotated log files kept per process; -1 keeps them all."
    ).tag(config=True)

    log_budget_bytes = Int(
        512 * 2**20,
        min=0,
        help="Disk all the session's logs may use together; past it the oldest rotated "
        "files are deleted first. 0 means unlimited.",
    ).tag(config=True)

    proxy_url = Unicode(
        "",
        help="Where the port links of the widgets and %proctrack point, as a template: "
        "{port} is the port, {base_url} the JupyterHub prefix (JUPYTERHUB_SERVICE_PREFIX, "
        "e.g. /user/alice/; '/' without a hub), {host} 127.0.0.1. Example: "
        "'{base_url}proxy/{port}/'. Empty: http://127.0.0.1:PORT/ locally, "
        "{base_url}proxy/PORT/ (jupyter-server-proxy) under JupyterHub.",
    ).tag(config=True)

    @validate("proxy_url")
    def _check_proxy_url(self, proposal: Any) -> str:
        value = str(proposal["value"])
        problem = proxy_url_problem(value)
        if problem is not None:
            raise TraitError(f"proxy_url: {problem}")
        return value

    @validate("grace")
    def _check_grace(self, proposal: Any) -> float:
        value = float(proposal["value"])
        problem = grace_problem(value)
        if problem is not None:
            raise TraitError(f"grace {problem}")
        return value

    @validate("refresh_hz")
    def _check_refresh_hz(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:  # NaN too
            raise TraitError(f"refresh_hz must be > 0, not {value}")
        return min(value, MAX_REFRESH_HZ)
