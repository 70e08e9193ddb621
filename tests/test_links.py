"""Port links: locally, through JupyterHub's proxy, or by ProcTrackConfig.proxy_url."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from _kernels import Kernel, free_port
from traitlets import TraitError

from ipyproctrack._notebook.config import ProcTrackConfig
from ipyproctrack._notebook.links import port_url, ports_html

HUB = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}


# ----------------------------------------------------------------------------- the rule


def test_a_local_port_links_to_the_loopback_address() -> None:
    assert port_url(8000, env={}) == "http://127.0.0.1:8000/"
    assert port_url(8000, env={"JUPYTERHUB_SERVICE_PREFIX": ""}) == "http://127.0.0.1:8000/"


def test_under_jupyterhub_a_port_goes_through_the_server_proxy() -> None:
    assert port_url(8000, env=HUB) == "/user/alice/proxy/8000/"
    # a prefix without its trailing slash still makes one path
    bob = {"JUPYTERHUB_SERVICE_PREFIX": "/user/bob"}
    assert port_url(5000, env=bob) == "/user/bob/proxy/5000/"


def test_proxy_url_overrides_both() -> None:
    template = "https://hub.example.org{base_url}proxy/absolute/{host}:{port}/"
    assert port_url(8000, proxy_url=template, env=HUB) == (
        "https://hub.example.org/user/alice/proxy/absolute/127.0.0.1:8000/")
    assert port_url(8000, proxy_url="{base_url}proxy/{port}/", env={}) == "/proxy/8000/"


def test_a_bad_proxy_url_is_refused_with_the_placeholders_named() -> None:
    config = ProcTrackConfig()
    with pytest.raises(TraitError, match=r"\{port\}, \{base_url\}, \{host\}"):
        config.proxy_url = "{prefix}proxy/{port}/"
    with pytest.raises(TraitError, match=r"no \{port\}"):
        config.proxy_url = "{base_url}proxy/"
    config.proxy_url = "{base_url}proxy/{port}/"
    assert config.proxy_url == "{base_url}proxy/{port}/"


def test_ports_render_as_escaped_links() -> None:
    out = ports_html((8000, 8001), lambda p: f"/a&b/{p}/")
    assert out == ('<a href="/a&amp;b/8000/" target="_blank" rel="noopener noreferrer">8000</a>, '
                   '<a href="/a&amp;b/8001/" target="_blank" rel="noopener noreferrer">8001</a>')
    assert ports_html((), str) == "-" and ports_html(None, str) == "?"


# ----------------------------------------------------------------------------- real kernels

SERVER = ("%%tracked web --wait-port {port} --timeout 20\n"
          "python -m http.server {port} --bind 127.0.0.1\n")


@pytest.fixture
def hub_kernel() -> Iterator[Kernel]:
    k = Kernel(env=HUB)
    try:
        yield k
    finally:
        k.close()


def _widget_header_href(kernel: Kernel, port: int, timeout: float = 20.0) -> str:
    """The href of ``port``'s link in the widget header: polls the iopub comm messages
    (the refresher samples the tree's ports on its own) until the port shows."""
    found = re.compile(rf'<a href="([^"]*)"[^>]*>{port}</a>')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in kernel.ok("import time; time.sleep(0.5)").of("comm_msg"):
            value = m["content"].get("data", {}).get("state", {}).get("value")
            if isinstance(value, str) and (match := found.search(value)):
                return match.group(1)
    raise AssertionError(f"no link to port {port} in the widget within {timeout} s")


def _table_html(kernel: Kernel) -> str:
    return json.dumps([m["content"]["data"].get("text/html", "")
                       for m in kernel.ok("%proctrack").of("execute_result")])


def _check_links(kernel: Kernel, expected: str, port: int) -> None:
    kernel.ok(SERVER.format(port=port))
    assert _widget_header_href(kernel, port) == expected
    assert f'href=\\"{expected}\\"' in _table_html(kernel)


def test_the_widget_links_a_local_port_to_the_loopback_address(shared: Kernel) -> None:
    port = free_port()
    _check_links(shared, f"http://127.0.0.1:{port}/", port)


def test_under_a_hub_the_widget_links_through_the_proxy(hub_kernel: Kernel) -> None:
    port = free_port()
    _check_links(hub_kernel, f"/user/alice/proxy/{port}/", port)
    hub_kernel.ok("%config ProcTrackConfig.proxy_url = 'https://binder.example{base_url}x/{port}/'")
    assert f'href=\\"https://binder.example/user/alice/x/{port}/\\"' in _table_html(hub_kernel)
