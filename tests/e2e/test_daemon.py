"""``wicked-dr daemon`` as a real process: its start-up, its HTTP endpoints, signals, alerts,
and two replicas against one S3 bucket (moto's server).

The jobs are the real actions on a real volume and repository. A backup is held inside
wicked's ``global.lock`` the way portal-api would hold it: a ``<file>.lock`` of a write in
flight makes the backup wait (volume.quiesce_timeout_s), which is where a SIGTERM or a
kill -9 is sent. Nothing here waits on wall time to synchronise: the tests wait for what
the daemon writes (its JSON log lines, files, repository objects), bounded only so that a
broken daemon fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.repos import REPO_ROOT, RepoTarget, local_target, s3_target
from tests.fixtures.s3 import free_port
from tests.fixtures.services import require_root
from wicked_dr.backends import open_backend
from wicked_dr.config import RepositoryConfig
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.repository.repo import Repository
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.e2e

WAIT_S = 120.0  # the longest a step may take before the test calls the daemon broken
IN_FLIGHT = "applications/in-flight.json.lock"
NEVER = "0 0 1 1 *"  # once a year: only the start-up rule (overdue backup) runs a job


@dataclass
class Daemon:
    """One ``wicked-dr daemon`` process and its JSON log."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    seen: int = 0

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """The first log line with this event (and fields) the process wrote."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == event and all(line.get(k) == v
                                                      for k, v in fields.items()):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line {event!r} {fields}; exit {self.process.poll()}; "
                             f"log:\n{self.log_path.read_text()[-4000:]}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=WAIT_S)


@dataclass
class World:
    tmp: Path
    target: RepoTarget
    volume: Path
    daemons: list[Daemon] = field(default_factory=list)

    def config(self, name: str, **sections: dict[str, Any]) -> tuple[Path, int]:
        port = free_port()
        doc: dict[str, Any] = {
            "state_dir": str(self.tmp / f"state-{name}"),
            "repository": {**self.target.repository, "lock_expiry_s": 10},
            "volume": {"path": str(self.volume), "quiesce_timeout_s": 600},
            "schedule": {"backup": NEVER, "verify": None, "prune": None, "drill": None,
                         "jitter_s": 0},
            "daemon": {"listen": f"127.0.0.1:{port}", "lease_expiry_s": 6,
                       "lock_wait_s": 600, "stop_grace_s": 0},
            "log": {"level": "info", "format": "json"},
        }
        for section, values in sections.items():
            doc[section] = {**doc.get(section, {}), **values}
        path = self.tmp / f"config-{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path, port

    def start(self, name: str, *, hostname: str | None = None,
              **sections: dict[str, Any]) -> Daemon:
        config, port = self.config(name, **sections)
        argv = [sys.executable, "-m", "wicked_dr.cli", "--config", str(config), "daemon"]
        if hostname is not None:
            # A UTS namespace of its own: another host name, so a takeover of this
            # daemon's lease and locks must go through expiry (never "dead on this host").
            argv = ["unshare", "-u", "sh", "-c", f'hostname {hostname} && exec "$@"', "-",
                    *argv]
        log_path = self.tmp / f"daemon-{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=REPO_ROOT,
                                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        daemon = Daemon(process, log_path, port)
        self.daemons.append(daemon)
        return daemon

    def repo(self) -> Repository:
        return Repository.open(open_backend(RepositoryConfig(**self.target.repository)), None)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    volume = tmp_path / "dynamic"
    generate(volume, users=30, seed=5)
    w = World(tmp_path, local_target(tmp_path), volume)
    yield w
    for daemon in w.daemons:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)


def _wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.05)


def _our_global_lock(volume: Path) -> bool:
    try:
        return json.loads((volume / "global.lock").read_text()).get("created_by") == "wicked-dr"
    except (OSError, ValueError):
        return False


def _metrics(daemon: Daemon) -> dict[str, float]:
    status, body = daemon.get("/metrics")
    assert status == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


# --- one daemon --------------------------------------------------------------------------------


def test_overdue_backup_runs_at_start_health_metrics_and_clean_stop(world: World) -> None:
    """An empty repository makes the backup overdue: it runs at start-up. /healthz and
    /readyz answer 200 afterwards, /metrics (parsed with prometheus-client's parser) shows
    the backup and its lock window, every job log line carries the run id, and SIGTERM
    ends with exit 0 and the lease released."""
    daemon = world.start("one")
    ended = daemon.wait_for("job ended", job="backup")
    assert ended["status"] == "ok", ended
    started = daemon.wait_for("job started", job="backup")
    assert started["run_id"] == ended["run_id"]
    assert len(snapshot_ids(world.repo())) == 1
    _wait_until("/readyz 200", lambda: daemon.get("/readyz")[0] == 200)
    assert daemon.get("/healthz")[0] == 200
    metrics = _metrics(daemon)
    success = [v for k, v in metrics.items()
               if "last_success" in k and "job=backup" in k]
    assert success and success[0] > time.time() - 3600, metrics
    # The backup's time under wicked's lock, seen by the watch: an idle volume, nothing
    # re-read (the figures of bench/README.md are the benchmark's, not this test's).
    assert metrics["wicked_dr_backup_lock_window_seconds_count{}"] == 1, metrics
    assert metrics["wicked_dr_backup_last_files_reread_under_lock{}"] == 0, metrics
    assert daemon.stop() == 0
    assert not list(world.repo().backend.list("leases/daemon"))
    assert not (world.volume / "global.lock").exists()


def test_sigterm_during_a_backup_cancels_it_cleanly(world: World) -> None:
    """SIGTERM while the backup holds global.lock (stop_grace_s 0): exit 0, global.lock
    removed, no snapshot visible, no repository lock and no lease left."""
    (world.volume / IN_FLIGHT).write_text("")
    daemon = world.start("term")
    _wait_until("the backup holding global.lock", lambda: _our_global_lock(world.volume))
    assert daemon.stop() == 0
    assert not (world.volume / "global.lock").exists()
    repo = world.repo()
    assert snapshot_ids(repo) == []
    assert not list(repo.backend.list("locks/"))
    assert not list(repo.backend.list("leases/daemon"))
    assert daemon.wait_for("job ended", job="backup")["status"] == "failed"


def test_sigterm_lets_a_running_backup_finish_within_the_grace(world: World) -> None:
    """With stop_grace_s long enough, the backup running at SIGTERM finishes (the write in
    flight ends after the signal) and its snapshot is sealed; then exit 0."""
    (world.volume / IN_FLIGHT).write_text("")
    daemon = world.start("grace", daemon={"stop_grace_s": 600})
    _wait_until("the backup holding global.lock", lambda: _our_global_lock(world.volume))
    daemon.process.send_signal(signal.SIGTERM)
    daemon.wait_for("daemon stopping")
    (world.volume / IN_FLIGHT).unlink()
    assert daemon.process.wait(timeout=WAIT_S) == 0
    assert daemon.wait_for("job ended", job="backup")["status"] == "ok"
    assert len(snapshot_ids(world.repo())) == 1
    assert not (world.volume / "global.lock").exists()


def test_start_up_removes_the_global_lock_a_dead_sidecar_left(world: World) -> None:
    """A global.lock created by wicked-dr on another host minutes ago (a sidecar pod that
    was killed) and no repository lock of its creator: the daemon removes it before its
    first backup, which then succeeds."""
    holder = {"host": "old-pod-7d9f", "boot_id": "x", "pid": 1, "start_time": 1,
              "instance": "0123456789abcdef"}
    (world.volume / "global.lock").write_text(json.dumps(
        {"created_by": "wicked-dr", "holder": holder, "created": time.time() - 120}))
    daemon = world.start("stale")
    daemon.wait_for("removed global.lock left by a crashed wicked-dr run")
    assert daemon.wait_for("job ended", job="backup")["status"] == "ok"
    assert daemon.stop() == 0


def test_a_foreign_global_lock_is_never_removed(world: World) -> None:
    """portal-api's own global.lock (not ours) stays; the backup fails after its wait and
    the failure is POSTed to the webhook (a real local HTTP server)."""
    (world.volume / "global.lock").write_text("")
    with _webhook() as received:
        daemon = world.start("foreign", daemon={"lock_wait_s": 0},
                             notify={"webhook_url": received.url})
        ended = daemon.wait_for("job ended", job="backup")
        assert ended["status"] == "failed"
        _wait_until("the webhook call", lambda: bool(received.bodies))
        assert daemon.stop() == 0
    assert (world.volume / "global.lock").read_text() == ""
    event = received.bodies[0]
    assert event["event"] == "failure" and event["job"] == "backup"
    assert "global.lock" in event["error"] and event["text"]


# --- two replicas on one S3 bucket ---------------------------------------------------------------


def test_two_replicas_one_runs_jobs_and_the_other_takes_over_after_a_kill(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Replica A (this host) takes the lease and starts the overdue backup, which waits
    inside global.lock for a write in flight. Replica B (another host name) stands by: it
    runs nothing. A is killed -9 there. B takes the lease only after it expired, removes the
    global.lock A left (A's repository lock expired too) and runs the backup itself: the
    one snapshot is B's."""
    require_root("a UTS namespace of its own for replica B (unshare -u)")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    volume = tmp_path / "dynamic"
    generate(volume, users=30, seed=6)
    w = World(tmp_path, s3_target(server.endpoint_url, bucket), volume)
    (volume / IN_FLIGHT).write_text("")
    try:
        a = w.start("a")
        a.wait_for("daemon lease taken: this replica runs the jobs")
        _wait_until("A's backup holding global.lock", lambda: _our_global_lock(volume))
        b = w.start("b", hostname="replica-b")
        b.wait_for("standby: another replica holds the daemon lease")
        a.process.kill()
        a.process.wait(timeout=WAIT_S)
        (volume / IN_FLIGHT).unlink()  # the writer finished; A's global.lock stays behind
        assert _our_global_lock(volume)
        b.wait_for("daemon lease taken: this replica runs the jobs")
        b.wait_for("removed global.lock left by a crashed wicked-dr run")
        ended = [line for line in _wait_lines(b, "job ended") if line["status"] == "ok"]
        assert ended and ended[0]["job"] == "backup"
        repo = w.repo()
        ids = snapshot_ids(repo)
        assert len(ids) == 1
        assert load_snapshot(repo, ids[0]).host == "replica-b"
        assert b.stop() == 0
    finally:
        for daemon in w.daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(timeout=30)


def _wait_lines(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    """Every line of ``event`` once one with status ok is there."""
    daemon.wait_for(event, status="ok")
    return [line for line in daemon.lines() if line.get("event") == event]


# --- a webhook receiver ----------------------------------------------------------------------


@dataclass
class Received:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


class _webhook:
    """A real HTTP server on 127.0.0.1 recording every JSON body POSTed to it."""

    def __enter__(self) -> Received:
        bodies: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.received = Received(f"http://127.0.0.1:{port}/hook/T0KEN", bodies)
        return self.received

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
