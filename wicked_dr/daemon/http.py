"""The daemon's health and metrics listener: ``/healthz``, ``/readyz``, ``/metrics``.

The standard library's ``ThreadingHTTPServer`` on a daemon thread: three read-only GETs
need no framework, and a slow scraper cannot hold up another (one thread per request).
What "alive" and "ready" mean is not decided here: the service hands in two probes
(liveness: the scheduler loop is turning; readiness: the repository answers and the newest
backup is young enough) and this module only turns their answers into status codes.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from wicked_dr.daemon.metrics import DaemonMetrics
from wicked_dr.errors import ConfigError, OperationError
from wicked_dr.log import get_logger

log = get_logger(__name__)

SETTING = "daemon.listen"
SHUTDOWN_POLL_S = 0.1  # how soon stop() is noticed by the serving loop
REQUEST_TIMEOUT_S = 30.0  # a client that connects and says nothing frees its thread then


class Probe(Protocol):
    """A health check: ``(ok, reason)``, the reason one line a person can act on."""

    def check(self) -> tuple[bool, str]: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a (host, port) pair; ``ConfigError``
    naming ``daemon.listen`` when it is not one. Port 0 picks a free port (tests)."""
    host, sep, port_text = listen.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or (":" in host and not bracketed):
        raise ConfigError([f"{SETTING}: {listen!r} is not host:port (e.g. 127.0.0.1:9464, "
                           "[::1]:9464)"])
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError([f"{SETTING}: {listen!r}: the port must be a number 0-65535"])
    return host, int(port_text)


class _Route(Protocol):
    def __call__(self) -> tuple[int, bytes, str]: ...


class _Server(ThreadingHTTPServer):
    """The HTTP server, carrying what the handler answers with."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 routes: dict[str, _Route]) -> None:
        self.address_family = family
        self.routes = routes
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse lookup of the host (``getfqdn``), which
        stalls for seconds where DNS is broken, as in many a container."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    """GET of a known path, 404 for anything else; no per-request log line above debug."""

    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "wicked-dr"
    sys_version = ""

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(404, b'{"ok": false, "reason": "not found"}', "application/json")
            return
        try:
            status, body, content_type = route()
        except Exception as exc:  # a broken probe is an unhealthy daemon, not a dead listener
            log.warning("health endpoint failed", path=self.path, error=str(exc))
            reason = f"{type(exc).__name__}: {exc}"
            status, body, content_type = 500, _json(False, reason), "application/json"
        self._send(status, body, content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", client=self.client_address[0], line=format % args)


def _json(ok: bool, reason: str) -> bytes:
    return json.dumps({"ok": ok, "reason": reason}).encode()


def _probe_route(probe: Probe) -> _Route:
    """200 with ``{"ok": true, ...}`` when the probe passes, 503 with its reason if not."""
    def answer() -> tuple[int, bytes, str]:
        ok, reason = probe.check()
        return (200 if ok else 503), _json(ok, reason), "application/json"
    return answer


def _metrics_route(metrics: DaemonMetrics) -> _Route:
    def answer() -> tuple[int, bytes, str]:
        body, content_type = metrics.render()
        return 200, body, content_type
    return answer


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``listen`` (validated at construction,
    bound by ``start``), served from a daemon thread until ``stop``."""

    def __init__(self, listen: str, metrics: DaemonMetrics, liveness: Probe,
                 readiness: Probe) -> None:
        self.listen = listen
        self._host, self._port = parse_listen(listen)
        self._routes: dict[str, _Route] = {
            "/healthz": _probe_route(liveness),
            "/readyz": _probe_route(readiness),
            "/metrics": _metrics_route(metrics),
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when ``listen`` asked for port 0."""
        if self._server is None:
            raise RuntimeError("HealthServer.address before start()")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve; ``OperationError`` naming ``daemon.listen`` when the address
        cannot be had (in use, not this machine's, a privileged port)."""
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            self._server = _Server((self._host, self._port), family, self._routes)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OperationError(f"{SETTING} {self.listen}: cannot listen: {reason}") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": SHUTDOWN_POLL_S},
                                        name="wicked-dr-health", daemon=True)
        self._thread.start()
        log.info("health listener started", listen=f"{self.address[0]}:{self.address[1]}")

    def stop(self) -> None:
        """Stop serving and free the port; requests in flight finish on their threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None
