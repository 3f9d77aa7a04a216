"""wicked_db's part of restore --live against a real PostgreSQL server: guard, staging
schema, the swap by renaming schemas, its undo, and the tidy-up; then the whole
``restore --live`` of a deployment without a volume, through the CLI.

The snapshot is a real backup into a local repository, read back with the real snapshot
reader. ``MemoryState`` stands in for the live restore's journal entry of the source (a
dict that records every ``put``: the journal itself is tested in test_restore_live.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures import wicked_pg
from tests.fixtures.repos import REPO_ROOT, cli
from tests.fixtures.s3 import free_port
from wicked_dr.actions.common import open_repository, snapshot_reader
from wicked_dr.config import Config, load_config
from wicked_dr.engine.catalog import resolve
from wicked_dr.errors import RefusedError
from wicked_dr.sources.base import LiveSettings
from wicked_dr.sources.wicked_db import WickedDbSource
from wicked_dr.sources.wicked_db_live import Schemas

pytestmark = pytest.mark.integration

RESTORE_ID = "20261130T171646Z-a1b2c3"
NAMES = Schemas.of("wicked", RESTORE_ID)


class MemoryState:
    """The source's journal entry, in memory: ``put`` merges, ``get`` returns a copy."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.puts = 0

    def get(self) -> dict[str, Any]:
        return dict(self.fields)

    def put(self, **fields: Any) -> None:
        self.fields.update(fields)
        self.puts += 1


@dataclass
class World:
    dsn: str
    config_path: Path
    config: Config
    rows_at_backup: dict[str, list[str]] = field(default_factory=dict)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def rows(self, schema: str = "wicked") -> dict[str, list[str]]:
        with self.connect() as conn:
            return wicked_pg.dump_rows(conn, schema)

    def schemas(self) -> set[str]:
        with self.connect() as conn:
            return {str(r[0]) for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'wicked%'").fetchall()}

    def source(self) -> WickedDbSource:
        return WickedDbSource(self.config.wicked_db)

    def snapshot(self) -> tuple[Any, Any]:
        repo = open_repository(self.config)
        snapshot = resolve(repo, "latest")
        return snapshot_reader(repo, self.config, snapshot), snapshot.source("wicked_db")


def _write_config(tmp_path: Path, dsn: str, **extra: Any) -> Path:
    closed = free_port()
    doc: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        "volume": {"path": None}, "wicked_db": {"dsn": dsn},
        "wicked": {"portal_api_url": f"http://127.0.0.1:{closed}",
                   "kong_adapter_url": f"http://127.0.0.1:{closed}"},
        "log": {"level": "warning", "format": "json"}}
    for section, values in extra.items():
        doc[section] = {**doc.get(section, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture()
def world(pg_database: str, tmp_path: Path) -> World:
    wicked_pg.create_schema(pg_database)
    wicked_pg.populate(pg_database, tmp_path)
    path = _write_config(tmp_path, pg_database)
    assert cli(path, "init").code == 0
    backup = cli(path, "backup", "--json")
    assert backup.code == 0, backup.err
    w = World(pg_database, path, load_config(path))
    w.rows_at_backup = w.rows()
    return w


def _damage_live(w: World) -> None:
    """What an incident did after the backup: users deleted (owners cascade), a new event."""
    with w.connect() as conn:
        conn.execute("DELETE FROM wicked.users WHERE id IN (SELECT id FROM wicked.users "
                     "ORDER BY id LIMIT 3)")
        conn.execute("INSERT INTO wicked.webhook_events VALUES ('after-backup', 'mailer', "
                     "'{}')")


def _settings(*, allow_newer: bool = False) -> LiveSettings:
    return LiveSettings(RESTORE_ID, None, ("mailer", "chatbot"), allow_newer=allow_newer)


def _without_queues(rows: dict[str, list[str]]) -> dict[str, list[str]]:
    kept = dict(rows)
    kept["webhook_events"] = [r for r in rows["webhook_events"]
                              if json.loads(r)["webhook_listeners_id"] not in
                              ("mailer", "chatbot")]
    return kept


def _listener(w: World) -> psycopg.Connection[Any]:
    """A session LISTENing on webhook_insert, as portal-api's is (opened after the test's
    own inserts, kept for the rest of the test)."""
    conn = psycopg.connect(w.dsn, autocommit=True)
    conn.execute("LISTEN webhook_insert")
    return conn


def _control_then_received(w: World, listener: psycopg.Connection[Any]) -> list[str]:
    """Insert a control event into the live schema; every notification received so far
    (notifications arrive in commit order: any the restore caused come before it)."""
    with w.connect() as conn:
        conn.execute("INSERT INTO wicked.webhook_events VALUES ('control', 'kong-adapter', "
                     "'{}')")
    return [json.loads(n.payload)["id"] for n in listener.notifies(timeout=30, stop_after=1)]


# --- the source's steps -----------------------------------------------------------------------


def test_stage_then_swap_puts_the_snapshot_live_and_keeps_the_old_schema(
        world: World) -> None:
    _damage_live(world)
    listener = _listener(world)
    damaged = world.rows()
    source, state = world.source(), MemoryState()
    reader, record = world.snapshot()
    guard = source.live_guard(reader, record, _settings(), state)
    assert guard["staging_schema"] == NAMES.staging and guard["warnings"] == []
    staged = source.stage_live(reader, record, _settings(), state)
    assert world.rows() == damaged, "staging must not touch the live schema"
    assert world.rows(NAMES.staging) == _without_queues(world.rows_at_backup)
    assert staged["emptied"]["mailer"] > 0
    swapped = source.swap_live(state)
    assert swapped["pre_restore_schema"] == NAMES.pre_restore
    assert world.rows() == _without_queues(world.rows_at_backup)
    assert world.rows(NAMES.pre_restore) == damaged
    finished = source.finish_live(state)
    assert finished["pre_restore_schema"] == NAMES.pre_restore
    assert world.schemas() == {"wicked", NAMES.pre_restore}
    assert _control_then_received(world, listener) == ["control"]


def test_undo_after_the_swap_brings_the_live_schema_back(world: World) -> None:
    _damage_live(world)
    damaged = world.rows()
    source, state = world.source(), MemoryState()
    reader, record = world.snapshot()
    source.live_guard(reader, record, _settings(), state)
    source.stage_live(reader, record, _settings(), state)
    source.swap_live(state)
    source.undo_live(state)
    assert world.rows() == damaged
    assert world.schemas() == {"wicked"}
    source.undo_live(state)  # repeated (a crash during the first): nothing left to do
    assert world.rows() == damaged and world.schemas() == {"wicked"}


def test_undo_before_the_swap_only_drops_the_staging_schema(world: World) -> None:
    source, state = world.source(), MemoryState()
    reader, record = world.snapshot()
    source.live_guard(reader, record, _settings(), state)
    source.stage_live(reader, record, _settings(), state)
    source.undo_live(state)
    assert world.schemas() == {"wicked"}
    assert world.rows() == world.rows_at_backup


def test_a_repeated_swap_finds_it_done(world: World) -> None:
    """A crash after the swap's COMMIT, before the journal said so: the swap runs again
    and must see that it is done, not swap the schemas back."""
    source, state = world.source(), MemoryState()
    reader, record = world.snapshot()
    source.live_guard(reader, record, _settings(), state)
    source.stage_live(reader, record, _settings(), state)
    source.swap_live(state)
    again = source.swap_live(state)
    assert again["pre_restore_schema"] == NAMES.pre_restore
    assert world.schemas() == {"wicked", NAMES.pre_restore}
    assert world.rows() == _without_queues(world.rows_at_backup)


def test_a_lost_live_schema_is_restored_without_a_pre_restore_copy(world: World) -> None:
    with world.connect() as conn:
        conn.execute("DROP SCHEMA wicked CASCADE")
    source, state = world.source(), MemoryState()
    reader, record = world.snapshot()
    guard = source.live_guard(reader, record, _settings(), state)
    assert guard["live_exists"] is False
    source.stage_live(reader, record, _settings(), state)
    assert source.swap_live(state)["pre_restore_schema"] is None
    assert world.rows() == _without_queues(world.rows_at_backup)
    assert source.finish_live(state)["pre_restore_schema"] is None


def test_guard_refuses_a_later_migration_unless_allowed(world: World) -> None:
    with world.connect() as conn:
        conn.execute("UPDATE wicked.meta SET data = jsonb_set(data, '{version}', '5') "
                     "WHERE id = 1")
    source, state = world.source(), MemoryState()
    reader, record = world.snapshot()
    with pytest.raises(RefusedError, match="migration 6, the live one at 5"):
        source.live_guard(reader, record, _settings(), state)
    assert state.puts == 0
    source.live_guard(reader, record, _settings(allow_newer=True), state)
    assert world.schemas() == {"wicked"}


def test_guard_warns_when_the_static_configuration_differs(world: World) -> None:
    with world.connect() as conn:
        conn.execute("UPDATE wicked.meta SET data = jsonb_set(data, '{config_hash,hash}', "
                     "'\"another-config\"') WHERE id = 1")
    reader, record = world.snapshot()
    guard = world.source().live_guard(reader, record, _settings(), MemoryState())
    assert len(guard["warnings"]) == 1 and "PORTAL_API_AESKEY" in guard["warnings"][0]


def test_guard_refuses_a_role_that_does_not_own_the_live_schema(world: World) -> None:
    with world.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS wicked_owner_test")
        conn.execute("CREATE ROLE wicked_owner_test")
        conn.execute("ALTER SCHEMA wicked OWNER TO wicked_owner_test")
    try:
        reader, record = world.snapshot()
        with pytest.raises(RefusedError, match="owned by wicked_owner_test"):
            world.source().live_guard(reader, record, _settings(), MemoryState())
    finally:
        with world.connect() as conn:
            conn.execute("ALTER SCHEMA wicked OWNER TO CURRENT_USER")
            conn.execute("DROP ROLE wicked_owner_test")


# --- restore --live of a deployment without a volume ---------------------------------------------


class _Peer:
    """Stand-in of portal-api's and the Kong Adapter's ``GET /ping`` (the contract
    restore --live waits on: portal-api ``{"message": "OK"}``, the adapter ``{"healthy":
    1}``; ``POST /resync`` answers 404, an adapter without ALLOW_RESYNC), started on
    127.0.0.1 only when the restore asks the operator to start it: no container control is
    configured, so the restore prints ACTION lines."""

    def __init__(self, port: int, answer: dict[str, Any]) -> None:
        body = json.dumps(answer).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_restore_live_without_a_volume_swaps_the_schema_and_reports(
        world: World, tmp_path: Path) -> None:
    portal_port, adapter_port = free_port(), free_port()
    config = _write_config(tmp_path, world.dsn, wicked={
        "portal_api_url": f"http://127.0.0.1:{portal_port}",
        "kong_adapter_url": f"http://127.0.0.1:{adapter_port}"},
        restore={"portal_api_timeout_s": 120, "kong_adapter_timeout_s": 120,
                 "operator_timeout_s": 120})
    _damage_live(world)
    damaged = world.rows()
    listener = _listener(world)
    process = subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.cli", "--config", str(config), "restore", "latest",
         "--live", "--yes", "--json"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO_ROOT),
                                                 "PATH": "/usr/bin:/bin"})
    peers: list[_Peer] = []
    seen: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            if "ACTION" in line and "start portal-api" in line and not peers:
                peers.append(_Peer(portal_port, {"message": "OK"}))
            if "ACTION" in line and "Kong Adapter" in line and len(peers) == 1:
                peers.append(_Peer(adapter_port, {"healthy": 1}))
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        for peer in peers:
            peer.close()
    assert process.returncode == 0, "".join(seen)
    report = json.loads(out)
    assert report["outcome"] == "restored"
    assert report["pre_restore_schema"] == report["steps"][4]["detail"]["wicked_db"][
        "pre_restore_schema"]
    assert world.rows() == _without_queues(world.rows_at_backup)
    assert world.rows(report["pre_restore_schema"]) == damaged
    assert any("DROP SCHEMA" in check for check in report["next_checks"])
    assert not (tmp_path / "state" / "live-restore" / "journal.json").exists()
    assert _control_then_received(world, listener) == ["control"]


def test_a_killed_restore_live_is_rolled_back_by_resume(world: World, tmp_path: Path) -> None:
    """kill -9 while the restore waits for portal-api on the swapped schema: the journal is
    in state_dir (there is no volume); other commands refuse; 'restore --resume' rolls the
    schema swap back (exit 7) and the live rows are the ones from before the restore."""
    portal_port = free_port()
    config = _write_config(tmp_path, world.dsn, wicked={
        "portal_api_url": f"http://127.0.0.1:{portal_port}"},
        restore={"operator_timeout_s": 600})
    _damage_live(world)
    damaged = world.rows()
    process = subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.cli", "--config", str(config), "restore", "latest",
         "--live", "--yes"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO_ROOT),
                                                 "PATH": "/usr/bin:/bin"})
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "ACTION" in line and "start portal-api" in line:
                process.kill()
                break
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert (tmp_path / "state" / "live-restore" / "journal.json").is_file()
    assert world.rows() == _without_queues(world.rows_at_backup)  # the swap had happened
    refused = cli(config, "backup")
    assert refused.code == 6 and "restore --resume" in refused.err
    resumed = cli(config, "restore", "--resume", "--yes", "--json")
    assert resumed.code == 7, resumed.err
    assert json.loads(resumed.out)["outcome"] == "rolled-back"
    assert world.rows() == damaged
    assert world.schemas() == {"wicked"}
    assert not (tmp_path / "state" / "live-restore" / "journal.json").exists()
