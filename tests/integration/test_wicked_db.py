"""wicked 1.0's Postgres schema: backed up as one consistent stream, loaded without side
effects, against a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from tests.fixtures import wicked_pg
from tests.fixtures.postgres import PgServer
from tests.fixtures.repos import REPO_ROOT, cli
from wicked_dr.config import WickedDbConfig
from wicked_dr.errors import DatabaseError, IntegrityError, RefusedError, SourceError
from wicked_dr.sources.base import BackupContext
from wicked_dr.sources.pg_copy import END_OF_DATA
from wicked_dr.sources.wicked_db import WickedDbSource, load_into_schema, write_dir
from wicked_dr.testing.memory_sink import MemorySink

pytestmark = pytest.mark.integration


@dataclass
class Wicked:
    """A database holding wicked's schema, filled from a generated portal."""

    dsn: str
    config: WickedDbConfig
    portal: wicked_pg.Portal
    rows: dict[str, list[str]] = field(default_factory=dict)
    catalog: dict[str, list[str]] = field(default_factory=dict)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)


@pytest.fixture()
def wicked(pg_database: str, tmp_path: Path) -> Wicked:
    wicked_pg.create_schema(pg_database)
    portal = wicked_pg.populate(pg_database, tmp_path)
    found = Wicked(pg_database, WickedDbConfig(dsn=SecretStr(pg_database)), portal)
    with found.connect() as conn:
        found.rows = wicked_pg.dump_rows(conn)
        found.catalog = wicked_pg.catalog(conn)
    return found


def _backup(config: WickedDbConfig, sink: MemorySink | None = None) -> tuple[bytes, dict[str, Any]]:
    sink = sink or MemorySink()
    metadata = WickedDbSource(config).backup(sink, BackupContext()).metadata
    return sink.read("wicked_db"), metadata


def _header(stream: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stream.split(b"\n", 1)[0])
    return doc


def _drop(w: Wicked, schema: str = "wicked") -> None:
    with w.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# --- the stream --------------------------------------------------------------------------


def test_backup_header_holds_ddl_meta_and_sections_schema_neutral(wicked: Wicked) -> None:
    stream, metadata = _backup(wicked.config)
    header = _header(stream)
    assert header["format"] == "wicked-dr/wicked-db" and header["version"] == 1
    assert header["encoding"] == "postgresql-copy-text" and header["schema"] == "wicked"
    assert re.fullmatch(r"\d+(\.\d+)*", header["server_version"])
    # The static configuration's identity and migration state, as wicked's meta row has it.
    assert header["meta"]["config_hash"] == wicked_pg.CONFIG_HASH
    assert header["meta"]["version"] == 6
    assert wicked_pg.AESKEY not in stream.decode()
    statements = header["pre_data"] + header["post_data"]
    assert not [s for s in statements if "wicked." in s]
    assert any("CREATE OR REPLACE FUNCTION webhook_notify()" in s for s in header["pre_data"])
    assert any(s.startswith("CREATE TRIGGER webhookinsertionevent AFTER INSERT ON "
                            "webhook_events") for s in header["post_data"])
    assert not [s for s in header["pre_data"] if "TRIGGER" in s and "CREATE TRIGGER" in s]
    sections = {s["name"]: s for s in header["sections"]}
    assert set(sections) == set(wicked.rows)
    assert sections["users"]["order_by"] == ["id"]
    assert sections["access_tokens"]["order_by"] == ["access_token"]
    # audit_log has no primary key (only a UNIQUE column): ordered by every column.
    assert sections["audit_log"]["order_by"] == ["id", "created_at", "data"]
    trailer = json.loads(stream.rstrip(b"\n").rsplit(b"\n", 1)[1])
    assert trailer["rows"] == {name: len(rows) for name, rows in wicked.rows.items()}
    assert metadata["rows"] == trailer["rows"] and metadata["meta"] == header["meta"]
    assert stream.count(END_OF_DATA) >= len(sections)


def test_backup_twice_gives_the_same_section_bytes(wicked: Wicked) -> None:
    first, _ = _backup(wicked.config)
    second, _ = _backup(wicked.config)
    sha = [json.loads(s.rstrip(b"\n").rsplit(b"\n", 1)[1])["sha256"] for s in (first, second)]
    assert sha[0] == sha[1]


# --- one consistent point while portal-api writes ----------------------------------------


class Writer(threading.Thread):
    """portal-api at work: each transaction adds an application with its owner and counts it
    in the owner's user row, so the three tables must agree in any consistent snapshot."""

    def __init__(self, dsn: str, user_id: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.user_id = dsn, user_id
        self.commits = 0
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    n = self.commits + 1
                    with conn.transaction():
                        conn.execute("INSERT INTO wicked.applications (id, data) VALUES "
                                     "(%s, %s)", (f"w-app-{n}", Jsonb({"n": n})))
                        conn.execute("INSERT INTO wicked.owners VALUES (%s, %s, %s, %s)",
                                     (f"w-own-{n}", self.user_id, f"w-app-{n}",
                                      Jsonb({"role": "owner"})))
                        conn.execute("UPDATE wicked.users SET data = jsonb_set(data, "
                                     "'{writer_apps}', to_jsonb(%s::int)) WHERE id = %s",
                                     (n, self.user_id))
                    with self.changed:
                        self.commits = n
                        self.changed.notify_all()
        except BaseException as exc:  # reported by the test
            self.error = exc
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, commits: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.commits >= commits or self.error,
                                         timeout=60), "the writer made no progress"
        assert self.error is None, self.error


def test_backup_while_writing_restores_one_consistent_point(wicked: Wicked) -> None:
    user_id = json.loads(wicked.rows["users"][0])["id"]
    writer = Writer(wicked.dsn, user_id)
    writer.start()
    writer.wait_for(3)
    seen: list[int] = []

    def between_chunks(_name: str, index: int) -> None:
        # The export's transaction is open: let portal-api commit twice more at every chunk,
        # so every table is copied after writes the earlier ones did not see.
        seen.append(writer.commits)
        writer.wait_for(writer.commits + 2)

    try:
        stream, _ = _backup(wicked.config, MemorySink(on_chunk=between_chunks))
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None
    _drop(wicked)
    load_into_schema(wicked.config, [stream], "wicked")
    with wicked.connect() as conn:
        counted = conn.execute("SELECT (data->>'writer_apps')::int FROM wicked.users "
                               "WHERE id = %s", (user_id,)).fetchone()
        apps = conn.execute("SELECT count(*) FROM wicked.applications "
                            "WHERE id LIKE 'w-app-%'").fetchone()
        owners = conn.execute("SELECT count(*) FROM wicked.owners "
                              "WHERE id LIKE 'w-own-%'").fetchone()
    assert counted is not None and apps is not None and owners is not None
    # The invariant holds, and the snapshot is the point before the first chunk: none of
    # the writes made while the stream was being read are in it.
    assert counted[0] == apps[0] == owners[0]
    assert 3 <= counted[0] <= seen[0] < writer.commits


# --- restore without side effects -------------------------------------------------------


def test_drop_and_restore_gives_every_row_trigger_function_back_without_notifying(
        wicked: Wicked) -> None:
    stream, _ = _backup(wicked.config)
    _drop(wicked)
    with psycopg.connect(wicked.dsn, autocommit=True) as listener:
        listener.execute("LISTEN webhook_insert")
        report = load_into_schema(wicked.config, [stream], "wicked")
        with wicked.connect() as conn:
            assert wicked_pg.dump_rows(conn) == wicked.rows
            assert wicked_pg.catalog(conn) == wicked.catalog
            # The control: wicked's trigger is back and notifies a new event.
            conn.execute("INSERT INTO wicked.webhook_events VALUES ('control', 'mailer', "
                         "'{}')")
        # Notifications arrive in commit order: any the restore caused came first.
        received = [json.loads(n.payload)["id"]
                    for n in listener.notifies(timeout=30, stop_after=1)]
    assert received == ["control"]
    assert report.rows == {name: len(rows) for name, rows in wicked.rows.items()}
    assert report.schema == "wicked" and not report.replaced


def test_load_empties_pending_events_of_given_listeners_only(wicked: Wicked) -> None:
    stream, _ = _backup(wicked.config)
    report = load_into_schema(wicked.config, [stream], "wicked_restore_x",
                              empty_queues=("mailer", "chatbot"))
    with wicked.connect() as conn:
        left = conn.execute("SELECT webhook_listeners_id, count(*) FROM "
                            "wicked_restore_x.webhook_events GROUP BY 1").fetchall()
        listeners = conn.execute("SELECT count(*) FROM wicked_restore_x.webhook_listeners"
                                 ).fetchone()
    before = [json.loads(r)["webhook_listeners_id"] for r in wicked.rows["webhook_events"]]
    assert dict(left) == {"kong-adapter": before.count("kong-adapter")}
    assert report.emptied == {"mailer": before.count("mailer"),
                              "chatbot": before.count("chatbot")}
    assert listeners == (3,)


def test_load_refuses_an_existing_schema_unless_replace(wicked: Wicked) -> None:
    stream, _ = _backup(wicked.config)
    with pytest.raises(RefusedError, match="schema wicked exists"):
        load_into_schema(wicked.config, [stream], "wicked")
    with wicked.connect() as conn:
        conn.execute("DELETE FROM wicked.users")  # cascades to owners, grants...
    report = load_into_schema(wicked.config, [stream], "wicked", replace=True)
    assert report.replaced
    with wicked.connect() as conn:
        assert wicked_pg.dump_rows(conn) == wicked.rows


def test_load_damaged_section_refused_nothing_written(wicked: Wicked) -> None:
    stream, _ = _backup(wicked.config)
    at = stream.index(b"w-app" if b"w-app" in stream else b"example.com")
    damaged = stream[:at] + b"X" + stream[at + 1:]
    with pytest.raises(IntegrityError, match="does not match its trailer"):
        load_into_schema(wicked.config, [damaged], "wicked_damaged")
    cut = stream[:stream.rindex(END_OF_DATA)]
    with pytest.raises(IntegrityError, match="truncated"):
        load_into_schema(wicked.config, [cut], "wicked_damaged")
    with wicked.connect() as conn:
        assert conn.execute("SELECT to_regnamespace('wicked_damaged')").fetchone() == (None,)


_KILLED_LOADER = """
import sys
from pydantic import SecretStr
from wicked_dr.config import WickedDbConfig
from wicked_dr.sources.wicked_db import load_into_schema

dsn, path, target, replace = sys.argv[1:5]
data = open(path, "rb").read()

def chunks():
    half = len(data) // 2
    yield data[:half]
    # The failpoint: half the rows are in the server's transaction.
    print("FAILPOINT", flush=True)
    sys.stdin.read()
    yield data[half:]

load_into_schema(WickedDbConfig(dsn=SecretStr(dsn)), chunks(), target,
                 replace=replace == "replace")
print("LOADED", flush=True)
"""


def _kill_mid_load(w: Wicked, stream_file: Path, target: str, replace: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen([sys.executable, "-c", _KILLED_LOADER, w.dsn, str(stream_file),
                           target, "replace" if replace else "new"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == b"FAILPOINT":
                break
        else:
            pytest.fail("the loader ended before its failpoint")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL


def test_load_killed_midway_leaves_the_target_untouched(wicked: Wicked,
                                                        tmp_path: Path) -> None:
    stream, _ = _backup(wicked.config)
    stream_file = tmp_path / "wicked_db.stream"
    stream_file.write_bytes(stream)
    _kill_mid_load(wicked, stream_file, "wicked_new", replace=False)
    with wicked.connect() as conn:
        assert conn.execute("SELECT to_regnamespace('wicked_new')").fetchone() == (None,)
    # Over an existing schema (replace: dropped in the same transaction): the old one stays.
    with wicked.connect() as conn:
        conn.execute("DELETE FROM wicked.webhook_events")
        before = wicked_pg.dump_rows(conn)
    _kill_mid_load(wicked, stream_file, "wicked", replace=True)
    with wicked.connect() as conn:
        # Blocks until the killed session's transaction is gone, then reads the old schema.
        assert wicked_pg.dump_rows(conn) == before
        assert wicked_pg.catalog(conn) == wicked.catalog
    # Nothing was left behind: the same load now goes through.
    load_into_schema(wicked.config, [stream], "wicked_new")


# --- the guard, errors ---------------------------------------------------------------------


def test_check_ready_refuses_empty_or_missing_schema_unless_forced(pg_database: str) -> None:
    config = WickedDbConfig(dsn=SecretStr(pg_database))
    with pytest.raises(RefusedError, match="no tables in schema wicked") as missing:
        WickedDbSource(config).check_ready(force=False)
    assert "\n" not in str(missing.value)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA wicked")
    with pytest.raises(RefusedError, match="no tables in schema wicked"):
        WickedDbSource(config).check_ready(force=False)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA wicked")
    wicked_pg.create_schema(pg_database)
    with pytest.raises(RefusedError, match="empty meta table"):
        WickedDbSource(config).check_ready(force=False)
    WickedDbSource(config).check_ready(force=True)


def test_unreachable_database_error_hides_password(pg_server: PgServer) -> None:
    dsn = pg_server.dsn("postgres", password="s3cret-word")
    config = WickedDbConfig(dsn=SecretStr(dsn), connect_timeout_s=5)
    with pytest.raises(SourceError) as raised:
        WickedDbSource(config).check_ready(force=False)
    assert "s3cret-word" not in str(raised.value)
    assert "wicked_db.dsn" in str(raised.value)


def test_load_without_create_privilege_refused_nothing_written(wicked: Wicked,
                                                               pg_server: PgServer) -> None:
    stream, _ = _backup(wicked.config)
    dbname = wicked.dsn.rsplit("/", 1)[1].split("?")[0]
    dsn = pg_server.create_role(f"wdb_{uuid.uuid4().hex[:8]}", "pw-reader", readonly_on=dbname)
    with pytest.raises(DatabaseError, match="nothing was written"):
        load_into_schema(WickedDbConfig(dsn=SecretStr(dsn)), [stream], "wicked_x")


# --- a later migration is captured from the catalog ------------------------------------------


def test_later_migration_sequences_identity_generated_checks_round_trip(
        wicked: Wicked) -> None:
    with wicked.connect() as conn:
        conn.execute(
            "CREATE SEQUENCE wicked.ticket_seq START 100 INCREMENT 5;"
            "CREATE TABLE wicked.tickets (n serial PRIMARY KEY, "
            "  t bigint NOT NULL DEFAULT nextval('wicked.ticket_seq'), "
            "  k integer GENERATED BY DEFAULT AS IDENTITY, "
            "  label text CHECK (label <> 'forbidden'), "
            "  upper_label text GENERATED ALWAYS AS (upper(label)) STORED, "
            "  user_id varchar(64) REFERENCES wicked.users(id) ON DELETE SET NULL);"
            "INSERT INTO wicked.tickets (label) VALUES ('a'), ('b'), (NULL);"
            "CREATE FUNCTION wicked.percent(x int, y text DEFAULT '%%') RETURNS text "
            "LANGUAGE sql AS $$ SELECT x || y $$;"
            # A SQL function naming a table: its body is checked when created.
            "CREATE FUNCTION wicked.ticket_count() RETURNS bigint LANGUAGE sql "
            "AS $$ SELECT count(*) FROM tickets $$ SET search_path = wicked;")
        rows = wicked_pg.dump_rows(conn)
        catalog = wicked_pg.catalog(conn)
    stream, _ = _backup(wicked.config)
    header = _header(stream)
    assert {s["name"] for s in header["sequences"]} >= {"ticket_seq", "tickets_n_seq"}
    tickets = next(s for s in header["sections"] if s["name"] == "tickets")
    assert "upper_label" not in [c["name"] for c in tickets["columns"]]
    _drop(wicked)
    load_into_schema(wicked.config, [stream], "wicked")
    with wicked.connect() as conn:
        assert wicked_pg.dump_rows(conn) == rows
        assert wicked_pg.catalog(conn) == catalog
        conn.execute("INSERT INTO wicked.tickets (label) VALUES ('d')")
        after = conn.execute("SELECT n, t, k, upper_label FROM wicked.tickets "
                             "WHERE label = 'd'").fetchone()
    # Each sequence goes on where it stood.
    assert after == (4, 115, 4, "D")


def test_schema_with_a_view_refused_not_backed_up_short(wicked: Wicked) -> None:
    with wicked.connect() as conn:
        conn.execute("CREATE VIEW wicked.user_emails AS SELECT email FROM wicked.users")
    with pytest.raises(SourceError, match="holds view user_emails"):
        _backup(wicked.config)


# --- restore --target: files, loadable by hand ------------------------------------------------


def test_restore_to_dir_files_load_back_with_psql(wicked: Wicked, pg_server: PgServer,
                                                  tmp_path: Path) -> None:
    stream, _ = _backup(wicked.config)
    done = write_dir([stream], tmp_path / "out" / "wicked_db")
    directory = Path(done.path)
    names = {p.name for p in directory.iterdir()}
    assert {"schema.sql", "load.psql", "sequences.json", "meta.json"} <= names
    assert {f"{t}.csv" for t in wicked.rows} <= names
    assert json.loads((directory / "meta.json").read_text())["meta"]["config_hash"] == \
        wicked_pg.CONFIG_HASH
    assert done.written["rows"] == sum(len(r) for r in wicked.rows.values())
    psql = pg_server.bin_dir / "psql"
    run = subprocess.run([str(psql), "-X", "-q", wicked.dsn, "-v", "schema=by_hand", "-f",
                          "load.psql"], cwd=directory, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    with wicked.connect() as conn:
        assert wicked_pg.dump_rows(conn, "by_hand") == wicked.rows
        assert wicked_pg.catalog(conn, "by_hand") == wicked.catalog


# --- through the CLI: a deployment with no volume ---------------------------------------------


def test_cli_backup_without_volume_and_restore_target_source_wicked_db(
        wicked: Wicked, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        "volume": {"path": None}, "wicked_db": {"dsn": wicked.dsn},
        "log": {"level": "warning", "format": "json"}}))
    assert cli(config, "init").code == 0
    backup = cli(config, "backup", "--json")
    assert backup.code == 0, backup.err
    assert wicked.dsn.split("@")[0].split(":")[-1] not in backup.out + backup.err
    restored = cli(config, "restore", "latest", "--target", str(tmp_path / "r"),
                   "--source", "wicked_db", "--json")
    assert restored.code == 0, restored.err
    assert (tmp_path / "r" / "wicked_db" / "users.csv").is_file()
    no_source = cli(config, "restore", "latest", "--target", str(tmp_path / "r2"))
    assert no_source.code != 0 and "--source" in no_source.err
    # restore --live of a deployment without a volume: tests/integration/test_wicked_db_live.py


def test_cli_volume_and_wicked_db_together_are_one_snapshot(wicked: Wicked,
                                                          tmp_path: Path) -> None:
    from wicked_dr.testing.sample_volume import generate

    generate(tmp_path / "dynamic", 3)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        "volume": {"path": str(tmp_path / "dynamic")}, "wicked_db": {"dsn": wicked.dsn},
        "log": {"level": "warning", "format": "json"}}))
    assert cli(config, "init").code == 0
    backup = cli(config, "backup", "--json")
    assert backup.code == 0, backup.err
    assert json.loads(backup.out)["sources"] == ["volume", "wicked_db"]
    restored = cli(config, "restore", "latest", "--target", str(tmp_path / "r"),
                   "--source", "volume", "--source", "wicked_db", "--json")
    assert restored.code == 0, restored.err
    assert (tmp_path / "r" / "meta.json").is_file()
    assert (tmp_path / "r" / "wicked_db" / "load.psql").is_file()


def test_an_unchanged_table_is_the_same_blobs_as_last_time(wicked: Wicked,
                                                           tmp_path: Path) -> None:
    """Each table's section starts a blob of its own (the export's boundaries): a second
    backup of an unchanged database stores only its header again (server_time changes),
    and a changed row makes new blobs of its table and the trailer (its checksum) only."""
    from wicked_dr.actions.common import open_repository
    from wicked_dr.config import load_config
    from wicked_dr.engine.catalog import load_snapshot, snapshot_ids

    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        "volume": {"path": None}, "wicked_db": {"dsn": wicked.dsn},
        "log": {"level": "warning", "format": "json"}}))
    for _ in range(2):
        assert cli(config, "backup").code == 0
    with wicked.connect() as conn:
        conn.execute("UPDATE wicked.users SET data = data || '{\"changed\": true}' WHERE id = "
                     "(SELECT min(id) FROM wicked.users)")
    assert cli(config, "backup").code == 0
    repo = open_repository(load_config(config))
    first, second, third = (load_snapshot(repo, i).sources["wicked_db"].stream
                            for i in snapshot_ids(repo))
    assert first is not None and second is not None and third is not None
    tables = len(wicked.rows)
    assert len(first.blobs) >= tables + 2  # header, one or more per table, trailer
    assert len(set(second.blobs) - set(first.blobs)) == 1  # the header
    assert len(set(third.blobs) - set(second.blobs)) == 3  # header, users, trailer
