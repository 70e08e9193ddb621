#!/usr/bin/env python3
"""The service under test of load_experiment.ipynb: a small HTTP server, stdlib only.

    PORT=8000 python load_service.py

``GET /`` answers ``ok``. ``GET /work?ms=N`` burns N ms of CPU (default ``$WORK_MS``,
2) and keeps ``$CACHE_KB`` KiB (default 2) in a cache that grows with every request up to
``$CACHE_MAX_MB`` MiB (default 64): its CPU and memory follow the load.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORK_MS = float(os.environ.get("WORK_MS", "2"))
CACHE_KB = int(os.environ.get("CACHE_KB", "2"))
CACHE_MAX = int(os.environ.get("CACHE_MAX_MB", "64")) << 20

_cache: list[bytes] = []
_cached = 0
_lock = threading.Lock()


def burn(ms: float) -> None:
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        global _cached
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            self._send(b"ok\n", "text/plain")
            return
        if url.path != "/work":
            self.send_error(404)
            return
        query = urllib.parse.parse_qs(url.query)
        ms = float(query.get("ms", [WORK_MS])[0])
        burn(ms)
        with _lock:
            if _cached < CACHE_MAX:
                _cache.append(os.urandom(CACHE_KB << 10))
                _cached += CACHE_KB << 10
            size = _cached
        self._send(json.dumps({"ms": ms, "cached_bytes": size}).encode(), "application/json")

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the interesting output


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a load generator that stops drops its connections: not news


def main() -> None:
    port = int(os.environ["PORT"])
    server = Server(("127.0.0.1", port), Handler)
    print(f"load_service: listening on http://127.0.0.1:{port}/ (work {WORK_MS:g} ms, "
          f"cache {CACHE_KB} KiB per request)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
