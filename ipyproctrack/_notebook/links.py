"""Links to a tracked server's listening ports, from wherever the browser is.

Locally the browser reaches ``http://127.0.0.1:PORT/``. Under JupyterHub it cannot: only
the hub's proxy can, so the link goes through jupyter-server-proxy, ``{prefix}proxy/PORT/``
(the prefix is ``JUPYTERHUB_SERVICE_PREFIX``, e.g. ``/user/alice/``, in the kernel's
environment). ``ProcTrackConfig.proxy_url`` overrides both (Binder, a custom base URL).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable, Mapping

__all__ = ["PROXY_URL_FIELDS", "port_url", "ports_html", "proxy_url_problem"]

HUB_PREFIX = "JUPYTERHUB_SERVICE_PREFIX"
LOCAL_HOST = "127.0.0.1"
#: The placeholders ``proxy_url`` may use: ``{port}``; ``{base_url}``, the hub's prefix
#: (``JUPYTERHUB_SERVICE_PREFIX``) or ``/`` without a hub, always ending in ``/``;
#: ``{host}``, ``127.0.0.1``.
PROXY_URL_FIELDS = ("port", "base_url", "host")


def _base_url(env: Mapping[str, str]) -> str:
    prefix = env.get(HUB_PREFIX, "").strip()
    if not prefix:
        return "/"
    return prefix if prefix.endswith("/") else prefix + "/"


def port_url(port: int, *, proxy_url: str = "", env: Mapping[str, str] | None = None) -> str:
    """The URL the browser opens for ``port``: ``proxy_url`` filled in when given, else
    ``{JUPYTERHUB_SERVICE_PREFIX}proxy/PORT/`` under a hub, else ``http://127.0.0.1:PORT/``.
    ``env`` defaults to this process's (the kernel's) environment."""
    env = os.environ if env is None else env
    if proxy_url:
        return proxy_url.format(port=port, base_url=_base_url(env), host=LOCAL_HOST)
    if env.get(HUB_PREFIX, "").strip():
        return f"{_base_url(env)}proxy/{port}/"
    return f"http://{LOCAL_HOST}:{port}/"


def proxy_url_problem(template: str) -> str | None:
    """Why ``template`` cannot be a ``proxy_url`` (None when it can)."""
    if not template:
        return None
    try:
        template.format(port=8000, base_url="/", host=LOCAL_HOST)
    except (KeyError, IndexError, ValueError) as exc:
        fields = ", ".join("{" + f + "}" for f in PROXY_URL_FIELDS)
        return f"bad placeholder {exc} in {template!r}: use {fields}"
    if "{port}" not in template:
        return f"{template!r} has no {{port}}"
    return None


def ports_html(ports: Iterable[int] | None, link: Callable[[int], str]) -> str:
    """Ports as links (``-`` for none, ``?`` when unknown), each opening in a new tab."""
    if ports is None:
        return "?"
    items = [
        f'<a href="{html.escape(link(p), quote=True)}" target="_blank" '
        f'rel="noopener noreferrer">{p}</a>'
        for p in ports
    ]
    return ", ".join(items) or "-"
