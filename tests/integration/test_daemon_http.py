"""The health and metrics listener over real HTTP on 127.0.0.1 (port 0: the kernel picks)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wicked_dr.daemon.http import HealthServer, parse_listen
from wicked_dr.daemon.metrics import DaemonMetrics
from wicked_dr.errors import ConfigError, OperationError

pytestmark = pytest.mark.integration


@dataclass
class FixedProbe:
    """A probe that answers what the test set."""

    ok: bool
    reason: str

    def check(self) -> tuple[bool, str]:
        return self.ok, self.reason


class BrokenProbe:
    def check(self) -> tuple[bool, str]:
        raise RuntimeError("probe exploded")


def _get(server: HealthServer, path: str) -> tuple[int, str, bytes]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture()
def metrics() -> DaemonMetrics:
    metrics = DaemonMetrics(clock=lambda: 2000.0)
    metrics.set_repository(snapshots=3, size_bytes=12345, newest_snapshot=1000.0,
                           newest_verification_ok=True)
    return metrics


@pytest.fixture()
def server(metrics: DaemonMetrics) -> Iterator[HealthServer]:
    server = HealthServer("127.0.0.1:0", metrics, FixedProbe(True, "scheduler loop alive"),
                          FixedProbe(False, "newest snapshot is 2h old (max 1h)"))
    server.start()
    yield server
    server.stop()


def test_healthz_ok(server: HealthServer) -> None:
    status, content_type, body = _get(server, "/healthz")
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body) == {"ok": True, "reason": "scheduler loop alive"}


def test_readyz_not_ready_is_503_with_the_reason(server: HealthServer) -> None:
    status, _, body = _get(server, "/readyz")
    assert status == 503
    assert json.loads(body) == {"ok": False, "reason": "newest snapshot is 2h old (max 1h)"}


def test_metrics_parse_with_prometheus_client(server: HealthServer) -> None:
    status, content_type, body = _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    values = {s.name: s.value for f in text_string_to_metric_families(body.decode())
              for s in f.samples if not s.labels}
    assert values["wicked_dr_repository_snapshots"] == 3
    assert values["wicked_dr_repository_size_bytes"] == 12345
    assert values["wicked_dr_data_age_seconds"] == 1000.0
    status, _, _ = _get(server, "/metrics?name[]=wicked_dr_data_age_seconds")
    assert status == 200


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert _get(server, "/")[0] == 404
    assert _get(server, "/metrics/extra")[0] == 404


def test_a_probe_that_raises_answers_500_and_the_listener_lives_on(
        metrics: DaemonMetrics) -> None:
    server = HealthServer("127.0.0.1:0", metrics, BrokenProbe(), FixedProbe(True, "ready"))
    server.start()
    try:
        status, _, body = _get(server, "/healthz")
        assert status == 500
        assert json.loads(body)["ok"] is False
        assert "probe exploded" in json.loads(body)["reason"]
        assert _get(server, "/readyz")[0] == 200
    finally:
        server.stop()


def test_port_in_use_is_one_line_naming_the_setting(metrics: DaemonMetrics) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = HealthServer(f"127.0.0.1:{port}", metrics, FixedProbe(True, ""),
                              FixedProbe(True, ""))
        with pytest.raises(OperationError) as caught:
            server.start()
    message = caught.value.one_line()
    assert "daemon.listen" in message
    assert f"127.0.0.1:{port}" in message
    assert "\n" not in message


def test_stop_frees_the_port(metrics: DaemonMetrics) -> None:
    server = HealthServer("127.0.0.1:0", metrics, FixedProbe(True, ""), FixedProbe(True, ""))
    server.start()
    port = server.address[1]
    server.stop()
    again = HealthServer(f"127.0.0.1:{port}", metrics, FixedProbe(True, ""),
                         FixedProbe(True, ""))
    again.start()
    try:
        assert _get(again, "/healthz")[0] == 200
    finally:
        again.stop()


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1", "127.0.0.1:", ":9464",
                                    "127.0.0.1:http", "127.0.0.1:70000", "::1:9464", ""])
def test_bad_listen_values_name_the_setting(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_listen(listen)
    assert caught.value.one_line().startswith("daemon.listen: ")
    assert "\n" not in caught.value.one_line()


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:0", ("localhost", 0)),
])
def test_good_listen_values(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected
