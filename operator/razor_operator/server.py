"""The operator's HTTP endpoints: ``GET /metrics`` (Prometheus, metrics.py) and ``POST
/progress`` (the pods' progress reports, progress.py).

Each listens where its flag says (--metrics-port, --progress-port); two on the same address and
port share one server. A server is a standard-library ThreadingHTTPServer on a daemon thread:
a report waits on the API server (a TokenReview, a patch), and a slow one must hold up neither
the other reports nor a Prometheus scrape. kopf's liveness endpoint stays kopf's own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .progress import MAX_BODY, Receiver

log = logging.getLogger("razor.operator.server")

#: An endpoint: (method, path) -> handler(request) -> (status, content type, body).
Route = Callable[["Request"], tuple[int, str, bytes]]
JSON = "application/json"


def metrics_route(_request: Request) -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


def progress_route(receiver: Receiver) -> Route:
    def route(request: Request) -> tuple[int, str, bytes]:
        length = request.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return 411, JSON, b'{"error": "a Content-Length is needed"}\n'
        if int(length) > MAX_BODY:  # not read at all
            return 413, JSON, json.dumps({"error": f"a progress report has at most {MAX_BODY} bytes"}).encode()
        status, answer = receiver.receive(request.headers.get("Authorization"), request.rfile.read(int(length)))
        return status, JSON, json.dumps(answer).encode() + b"\n"
    return route


class Request(BaseHTTPRequestHandler):
    """One request, dispatched to the server's routes; 404 or 405 for the rest."""

    server: Server
    timeout = 10  # seconds for a client to send its request: a stalled one holds no thread for long
    protocol_version = "HTTP/1.1"

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get((method, path))
        if route is None:
            allowed = sorted(m for m, p in self.server.routes if p == path)
            status, kind, body = (405, JSON, b'{"error": "method not allowed"}\n') if allowed \
                else (404, JSON, b'{"error": "not found"}\n')
        else:
            try:
                status, kind, body = route(self)
            except Exception:  # a bug: the answer says so, the operator goes on
                log.exception("%s %s failed", method, path)
                status, kind, body = 500, JSON, b'{"error": "internal error"}\n'
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, routes: dict[tuple[str, str], Route]):
        self.routes = dict(routes)
        super().__init__((address, port), Request)

    def start(self) -> Server:
        threading.Thread(target=self.serve_forever, name=f"razor-http-{self.server_port}", daemon=True).start()
        return self


def serve(endpoints: list[tuple[str, int, dict[tuple[str, str], Route]]]) -> list[Server]:
    """Start one server per (address, port), with the routes of every endpoint there."""
    merged: dict[tuple[str, int], dict[tuple[str, str], Route]] = {}
    for address, port, routes in endpoints:
        merged.setdefault((address, port), {}).update(routes)
    return [Server(address, port, routes).start() for (address, port), routes in merged.items()]
