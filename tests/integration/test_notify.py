"""Alerts over real HTTP: a stdlib server on 127.0.0.1 records what the notifier sends."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog

from wicked_dr import log
from wicked_dr.actions.backup import BackupResult
from wicked_dr.actions.common import Result
from wicked_dr.config import NotifyConfig
from wicked_dr.daemon.notify import Notifier, endpoint
from wicked_dr.daemon.outcome import JobOutcome, JobStatus
from wicked_dr.errors import ExitCode

pytestmark = pytest.mark.integration

TOKEN = "T0AAA-B0BBB-Zq9SecretHookToken"
HC_UUID = "5b1c3f0e-9d2a-4c8e-a0f1-hcsecretuuid"
STARTED = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
FLUSH_S = 60.0  # a bound for a hung test, not a timing assertion


@dataclass(frozen=True)
class Received:
    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder(ThreadingHTTPServer):
    """Records every request; a path starting /status/<code> answers with that code."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.received]

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


class _RecordingHandler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.received.append(
                Received(self.path, self.headers.get("Content-Type", ""), body))
        parts = self.path.split("/")
        code = int(parts[2]) if len(parts) > 2 and parts[1] == "status" else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    """JSON log lines in a buffer; the secrets are NOT registered with the redactor, so
    only the notifier's own care keeps them out."""
    buffer = io.StringIO()
    log.configure("debug", "json", buffer)
    yield buffer
    structlog.reset_defaults()


@pytest.fixture()
def dead_url() -> str:
    """A URL on a port nobody listens on (bound, then closed): connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/{TOKEN}"


def _notifier(recorder: Recorder, **overrides: Any) -> Notifier:
    settings: dict[str, Any] = {"webhook_url": f"{recorder.base}/hook/{TOKEN}",
                                "timeout_s": 5.0}
    settings.update(overrides)
    return Notifier(NotifyConfig.model_validate(settings),
                    repository="s3://dr-bucket/wicked", host="portal-dr-0")


def _backup(damage: tuple[str, ...] = ()) -> BackupResult:
    return BackupResult(snapshot="20261130T030000.000000Z-3fa2c1d0", files=120,
                        bytes_read=4_000_000, bytes_new=250_000, duration_s=42.5,
                        lock_window_s=1.25, files_unchanged=100, objects_written=7, errors=0,
                        sources=("volume",), damage=damage)


def _outcome(status: JobStatus, result: Result | None = None, *, error: str | None = None,
             exit_code: int = 0) -> JobOutcome:
    return JobOutcome(job="backup", run_id="run-7", started=STARTED, duration_s=42.5,
                      status=status, result=result, error=error, exit_code=exit_code)


def _failed() -> JobOutcome:
    return _outcome(JobStatus.FAILED, error="S3 PutObject failed: 503 SlowDown",
                    exit_code=int(ExitCode.FAILED))


def _events(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_the_failure_payload_arrives_with_every_field(recorder: Recorder) -> None:
    notifier = _notifier(recorder)
    notifier.job_finished(_failed())
    assert notifier.close(FLUSH_S)
    [received] = recorder.at(f"/hook/{TOKEN}")
    assert received.content_type == "application/json"
    payload = received.json()
    assert payload["event"] == "failure"
    assert payload["job"] == "backup"
    assert payload["run_id"] == "run-7"
    assert payload["host"] == "portal-dr-0"
    assert payload["repository"] == "s3://dr-bucket/wicked"
    assert payload["status"] == "failed"
    assert payload["error"] == "S3 PutObject failed: 503 SlowDown"
    assert payload["exit_code"] == 1
    assert payload["damage"] == []
    assert payload["duration_s"] == 42.5
    assert payload["started"] == "2026-11-30T03:00:00+00:00"
    assert payload["result"] is None
    text = payload["text"]
    assert "\n" not in text
    assert "backup FAILED" in text
    assert "portal-dr-0" in text
    assert "S3 PutObject failed: 503 SlowDown" in text


def test_every_webhook_url_gets_the_event(recorder: Recorder) -> None:
    notifier = _notifier(recorder, webhook_urls=[f"{recorder.base}/second",
                                                 f"{recorder.base}/third"])
    notifier.job_finished(_failed())
    assert notifier.flush(FLUSH_S)
    assert sorted(recorder.paths()) == sorted([f"/hook/{TOKEN}", "/second", "/third"])
    notifier.close(FLUSH_S)


def test_damage_is_an_event_of_its_own(recorder: Recorder) -> None:
    notifier = _notifier(recorder)
    damage = ("snapshot 20261129T030000Z-aa: 2 tree object(s) missing",)
    notifier.job_finished(_outcome(JobStatus.OK, _backup(damage)))
    assert notifier.close(FLUSH_S)
    [received] = recorder.at(f"/hook/{TOKEN}")
    payload = received.json()
    assert payload["event"] == "damage"
    assert payload["status"] == "ok"
    assert payload["damage"] == list(damage)
    assert payload["result"]["snapshot"] == "20261130T030000.000000Z-3fa2c1d0"
    assert payload["result"]["damage"] == list(damage)
    assert "damage" in payload["text"]
    assert "2 tree object(s) missing" in payload["text"]


def test_success_is_sent_only_with_on_success(recorder: Recorder) -> None:
    quiet = _notifier(recorder)
    quiet.job_finished(_outcome(JobStatus.OK, _backup()))
    quiet.job_finished(_outcome(JobStatus.SKIPPED))
    assert quiet.close(FLUSH_S)
    assert recorder.paths() == []

    chatty = _notifier(recorder, on_success=True)
    chatty.job_finished(_outcome(JobStatus.OK, _backup()))
    chatty.job_finished(_outcome(JobStatus.SKIPPED))
    assert chatty.close(FLUSH_S)
    [received] = recorder.at(f"/hook/{TOKEN}")
    payload = received.json()
    assert payload["event"] == "success"
    assert payload["result"]["files"] == 120
    assert "backup ok" in payload["text"]
    assert "120 files" in payload["text"]


def test_healthchecks_start_success_and_fail(recorder: Recorder) -> None:
    notifier = _notifier(recorder, webhook_url=None,
                         healthchecks={"backup": f"{recorder.base}/ping/{HC_UUID}",
                                       "verify": f"{recorder.base}/verify/{HC_UUID}/"})
    notifier.job_started("backup", "run-7")
    notifier.job_finished(_outcome(JobStatus.OK, _backup()))
    notifier.job_started("backup", "run-8")
    notifier.job_finished(_failed())
    notifier.job_finished(_outcome(JobStatus.SKIPPED))
    notifier.job_started("prune", "run-9")  # no URL for prune: nothing
    notifier.job_started("verify", "run-10")
    assert notifier.close(FLUSH_S)
    ping = f"/ping/{HC_UUID}"
    assert recorder.paths() == [f"{ping}/start", ping, f"{ping}/start", f"{ping}/fail",
                                f"/verify/{HC_UUID}/start"]
    failed = recorder.at(f"{ping}/fail")[0]
    assert b"S3 PutObject failed" in failed.body


def test_dead_and_failing_endpoints_are_logged_never_raised_and_later_urls_still_get_theirs(
        recorder: Recorder, captured: io.StringIO, dead_url: str) -> None:
    refusing = f"{recorder.base}/status/500/{TOKEN}?token={TOKEN}"
    notifier = _notifier(recorder, webhook_url=dead_url,
                         webhook_urls=[refusing, f"{recorder.base}/good"])
    notifier.job_finished(_failed())  # must not raise
    assert notifier.close(FLUSH_S)
    assert recorder.at("/good")[0].json()["event"] == "failure"
    warnings = [e for e in _events(captured) if e["level"] == "warning"]
    assert {e["event"] for e in warnings} == {"notification failed", "notification refused"}
    refused = next(e for e in warnings if e["event"] == "notification refused")
    assert refused["status"] == 500
    assert refused["endpoint"] == recorder.base
    failed = next(e for e in warnings if e["event"] == "notification failed")
    assert failed["endpoint"] == endpoint(dead_url)
    assert "refused" in failed["error"].lower()
    assert TOKEN.lower() not in captured.getvalue().lower()


def test_a_hung_endpoint_times_out_and_the_next_one_is_still_served(
        recorder: Recorder, captured: io.StringIO) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        hung = f"http://127.0.0.1:{silent.getsockname()[1]}/hook/{TOKEN}"
        notifier = _notifier(recorder, webhook_url=hung, timeout_s=1.0,
                             webhook_urls=[f"{recorder.base}/after"])
        notifier.job_finished(_failed())
        assert notifier.close(FLUSH_S)
    assert len(recorder.at("/after")) == 1
    [warning] = [e for e in _events(captured) if e["level"] == "warning"]
    assert "timed out" in warning["error"]
    assert TOKEN.lower() not in captured.getvalue().lower()


def test_secrets_in_urls_never_reach_the_log(recorder: Recorder, captured: io.StringIO,
                                             dead_url: str) -> None:
    notifier = _notifier(
        recorder, webhook_url=f"http://user:{TOKEN}@127.0.0.1:1/x",
        webhook_urls=[dead_url, f"ftp-nope://{TOKEN}/hook", f"http://[{TOKEN}/x",
                      f"{recorder.base}/status/503"],
        healthchecks={"backup": dead_url.replace("/services/", "/hc/")})
    notifier.job_started("backup", "run-7")
    notifier.job_finished(_failed())
    assert notifier.close(FLUSH_S)
    assert recorder.paths() == ["/status/503"]
    text = captured.getvalue()
    assert text.count('"level": "warning"') == 7  # 2 pings, 5 webhooks
    assert TOKEN.lower() not in text.lower()
    assert "user" not in text


def test_after_close_notifications_are_dropped_with_a_warning(
        recorder: Recorder, captured: io.StringIO) -> None:
    notifier = _notifier(recorder)
    assert notifier.close(FLUSH_S)
    notifier.job_finished(_failed())
    assert notifier.flush(FLUSH_S)
    assert recorder.paths() == []
    assert any(e["event"] == "notifier closed: notification dropped"
               for e in _events(captured))


def test_events_to_one_url_keep_their_order(recorder: Recorder) -> None:
    notifier = _notifier(recorder, on_success=True)
    for n in range(5):
        notifier.job_finished(JobOutcome(job="prune", run_id=f"run-{n}", started=STARTED,
                                         duration_s=1.0, status=JobStatus.OK))
    assert notifier.close(FLUSH_S)
    assert [r.json()["run_id"] for r in recorder.at(f"/hook/{TOKEN}")] == [
        f"run-{n}" for n in range(5)]
