"""Kong OAuth2 token backup and re-attaching restore against a real PostgreSQL server."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.fixtures import kong_data
from tests.fixtures.kong_data import GENERATIONS, Subscription, TokenSpec
from tests.fixtures.postgres import PgServer
from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import DatabaseError, IntegrityError, SourceError
from wicked_dr.sources import kong_tokens
from wicked_dr.sources.kong_tokens import KongTokensSource, restore_tokens
from wicked_dr.testing.memory_sink import MemorySink
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration

SHORT_LIVED_S = 3


@dataclass
class Scenario:
    """A Kong database filled from a wicked volume, and which tokens should come back."""

    generation: str
    dsn: str
    config: KongTokensConfig
    subs: list[Subscription]
    gone_client: Subscription
    gone_api: str
    live: list[TokenSpec]
    expired: list[TokenSpec]
    short_lived: TokenSpec

    def expected_back(self) -> list[TokenSpec]:
        """Tokens whose client and service come back and that are still valid."""
        return [t for t in self.live
                if t.client_id != self.gone_client.client_id and t.api_id != self.gone_api]


def _token(sub: Subscription, api_id: str | None, *, expires_in_s: int,
           refresh: bool = True) -> TokenSpec:
    now = datetime.now(UTC)
    token_id = str(uuid.uuid4())
    return TokenSpec(id=token_id, access_token=f"at-{token_id}",
                     refresh_token=f"rt-{token_id}" if refresh else None,
                     client_id=sub.client_id, api_id=api_id,
                     created_at=now - timedelta(seconds=60),
                     expires_at=now + timedelta(seconds=expires_in_s),
                     scope="read\twrite\\admin")


@pytest.fixture(scope="session")
def wicked_subs(tmp_path_factory: pytest.TempPathFactory) -> list[Subscription]:
    """The approved OAuth2 subscriptions of a generated wicked volume."""
    root: Path = tmp_path_factory.mktemp("volume")
    generate(root, 30, seed=7, untidy=False)
    subs = kong_data.subscriptions_from_volume(root)
    assert len({s.api_id for s in subs}) >= 3, "the sample volume needs several OAuth2 APIs"
    return subs


def _build(dsn: str, generation: str, subs: list[Subscription]) -> Scenario:
    conn = kong_data.connect(dsn)
    with conn:
        kong_data.load_ddl(conn, generation)
        kong_data.sync_like_adapter(conn, generation, subs)
        apis = sorted({s.api_id for s in subs})
        gone_api = apis[-1]
        gone_client = next(s for s in subs if s.api_id != gone_api)
        live = [_token(s, s.api_id, expires_in_s=kong_data.REFRESH_TTL_S) for s in subs[:12]]
        live.append(_token(gone_client, gone_client.api_id, expires_in_s=7200))
        live.append(_token(subs[1], None, expires_in_s=7200, refresh=False))  # bundled API
        live.append(next(_token(s, s.api_id, expires_in_s=7200)
                         for s in subs if s.api_id == gone_api and s != gone_client))
        expired = [_token(s, s.api_id, expires_in_s=-30) for s in subs[:2]]
        short = _token(subs[2], subs[2].api_id, expires_in_s=SHORT_LIVED_S)
        kong_data.add_tokens(conn, generation, [*live, *expired, short])
        conn.execute("INSERT INTO oauth2_authorization_codes (id, code, credential_id) "
                     "SELECT gen_random_uuid(), 'code-' || client_id, id "
                     "FROM oauth2_credentials LIMIT 3")
    config = KongTokensConfig(dsn=SecretStr(dsn))
    return Scenario(generation, dsn, config, list(subs), gone_client, gone_api, live, expired,
                    short)


def _rebuild_after_loss(scenario: Scenario) -> None:
    """What the Kong Adapter leaves after a database loss: new UUIDs, one client, one API gone."""
    with kong_data.connect(scenario.dsn) as conn:
        kong_data.lose_kong(conn, scenario.generation)
        assert _count(conn, "oauth2_tokens") == 0
        back = [s for s in scenario.subs if s != scenario.gone_client]
        kong_data.sync_like_adapter(conn, scenario.generation, back)
        table = "apis" if scenario.generation == "0.11" else "services"
        conn.execute(f"DELETE FROM {table} WHERE name = %s",
                     (scenario.gone_api,))


def _count(conn: Any, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0])


def _attached(conn: Any, generation: str) -> dict[str, tuple[str | None, str | None]]:
    """token id -> (client_id of its credential, name of its service or API)."""
    ref = "apis a ON a.id = t.api_id" if generation == "0.11" else \
        "services a ON a.id = t.service_id"
    rows = conn.execute(
        "SELECT t.id::text, c.client_id, a.name FROM oauth2_tokens t "
        f"JOIN oauth2_credentials c ON c.id = t.credential_id LEFT JOIN {ref}").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _backup(config: KongTokensConfig) -> tuple[MemorySink, dict[str, Any]]:
    sink = MemorySink()
    metadata = KongTokensSource(config).backup(sink)
    return sink, metadata


@pytest.fixture(params=GENERATIONS)
def scenario(request: pytest.FixtureRequest, pg_database: str,
             wicked_subs: list[Subscription]) -> Scenario:
    """A populated Kong database of each generation."""
    return _build(pg_database, str(request.param), wicked_subs)


def test_restore_after_adapter_rebuild_reattaches_unexpired_tokens(scenario: Scenario) -> None:
    """Every valid token comes back on its client and service; the rest are counted skipped."""
    started = time.monotonic()
    sink, metadata = _backup(scenario.config)
    assert metadata["generation"] == scenario.generation
    with kong_data.connect(scenario.dsn) as conn:
        expired_present = sum(
            1 for t in scenario.expired
            if conn.execute("SELECT 1 FROM oauth2_tokens WHERE id = %s", (t.id,)).fetchone())
    assert metadata["exported"] == len(scenario.live) + 1
    assert metadata["skipped_expired"] == expired_present
    assert "x_client_id" in metadata["columns"]
    _rebuild_after_loss(scenario)
    time.sleep(max(0.0, SHORT_LIVED_S + 0.5 - (time.monotonic() - started)))

    report = restore_tokens(scenario.config, sink.chunks("kong_tokens"), metadata=metadata,
                            dry_run=False)

    expected = scenario.expected_back()
    gone_client_tokens = [t for t in scenario.live
                          if t.client_id == scenario.gone_client.client_id]
    assert report.ok
    assert (report.restored, report.already_present) == (len(expected), 0)
    assert report.skipped_no_client == len(gone_client_tokens)
    assert report.skipped_no_service == sum(
        1 for t in scenario.live
        if t.api_id == scenario.gone_api and t.client_id != scenario.gone_client.client_id)
    assert report.skipped_expired == 1  # the short-lived token expired after the backup
    with kong_data.connect(scenario.dsn) as conn:
        attached = _attached(conn, scenario.generation)
        assert attached == {t.id: (t.client_id, t.api_id) for t in expected}
        if scenario.generation in ("0.11", "0.14"):
            rows = conn.execute("SELECT primary_key_value, expire_at FROM ttls "
                                "WHERE table_name = 'oauth2_tokens'").fetchall()
            ttls = {r[0]: r[1] for r in rows}
            for t in expected:
                want = t.expires_at.astimezone(UTC).replace(tzinfo=None)
                assert abs(ttls[t.id] - want) < timedelta(seconds=1)
        if scenario.generation in ("2.x", "3.x"):
            assert conn.execute("SELECT count(DISTINCT ws_id) FROM oauth2_tokens "
                                "WHERE ws_id = (SELECT id FROM workspaces WHERE name = "
                                "'default')").fetchone() == (1,)


def test_restore_run_twice_second_run_adds_nothing(scenario: Scenario) -> None:
    """A second restore finds every token already present and inserts none."""
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    first = restore_tokens(scenario.config, sink.chunks("kong_tokens"), metadata=metadata,
                           dry_run=False)
    with kong_data.connect(scenario.dsn) as conn:
        before = _count(conn, "oauth2_tokens")
    second = restore_tokens(scenario.config, sink.chunks("kong_tokens"), metadata=metadata,
                            dry_run=False)
    assert first.restored > 0
    assert (second.restored, second.already_present) == (0, first.restored)
    assert second.ok
    with kong_data.connect(scenario.dsn) as conn:
        assert _count(conn, "oauth2_tokens") == before


@pytest.mark.parametrize("generation", ["0.14", "3.x"])
def test_restore_dry_run_writes_nothing(generation: str, pg_database: str,
                                        wicked_subs: list[Subscription]) -> None:
    """A dry run reports what it would restore and leaves the tables untouched."""
    scenario = _build(pg_database, generation, wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    report = restore_tokens(scenario.config, sink.chunks("kong_tokens"), metadata=metadata,
                            dry_run=True)
    assert report.dry_run
    assert report.restored == len(scenario.expected_back()) + 1  # short-lived still valid
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == 0
        if generation == "0.14":
            assert _count(conn, "ttls") == len(scenario.live) + 3  # only the old, orphaned rows


def test_backup_database_not_kong_raises_clear_error(pg_database: str) -> None:
    """A database without Kong's tables is refused with a message naming what is missing."""
    config = KongTokensConfig(dsn=SecretStr(pg_database))
    with pytest.raises(SourceError, match="is not a Kong database"):
        _backup(config)


def test_backup_missing_tokens_table_raises_clear_error(pg_database: str) -> None:
    """Kong without the oauth2 plugin's tables is refused and names oauth2_tokens."""
    with kong_data.connect(pg_database) as conn:
        kong_data.load_ddl(conn, "1.x")
        conn.execute("DROP TABLE oauth2_tokens")
    with pytest.raises(SourceError, match="no table oauth2_tokens"):
        _backup(KongTokensConfig(dsn=SecretStr(pg_database)))


def test_backup_unreachable_database_error_hides_password() -> None:
    """A connection failure becomes a SourceError whose message has no password."""
    config = KongTokensConfig(dsn=SecretStr("postgresql://kong:s3cret-pw@127.0.0.1:9/kong"),
                              connect_timeout_s=2)
    with pytest.raises(SourceError) as caught:
        _backup(config)
    assert "s3cret-pw" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_restore_read_only_role_refused_nothing_written(
        pg_server: PgServer, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """A role that may only read gets a DatabaseError and the tables stay as they were."""
    scenario = _build(pg_database, "2.x", wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    dbname = pg_database.rsplit("/", 1)[1].split("?")[0]
    role = f"ro_{uuid.uuid4().hex[:8]}"
    ro_dsn = pg_server.create_role(role, "ro-password", readonly_on=dbname)
    config = KongTokensConfig(dsn=SecretStr(ro_dsn))
    with pytest.raises(DatabaseError, match="may not insert into oauth2_tokens"):
        restore_tokens(config, sink.chunks("kong_tokens"), metadata=metadata, dry_run=False)
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == 0


def test_restore_truncated_stream_refused_nothing_written(
        pg_database: str, wicked_subs: list[Subscription]) -> None:
    """A stream shorter than its header says is an IntegrityError and nothing is inserted."""
    scenario = _build(pg_database, "1.x", wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    data = sink.read("kong_tokens")
    cut = data[: data.rindex(b"\n", 0, len(data) - 1) + 1]  # drop the last row
    with pytest.raises(IntegrityError, match="truncated"):
        restore_tokens(scenario.config, [cut], metadata=metadata, dry_run=False)
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == 0


def _split_stream(data: bytes) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
    """(header, data lines with their newline, trailer) of a version 2 token stream."""
    head, _, rest = data.partition(b"\n")
    body, marker, trailer = rest.rpartition(kong_tokens.END_OF_DATA)
    assert marker, "a version 2 stream ends with COPY's end-of-data marker"
    return json.loads(head), body.splitlines(keepends=True), json.loads(trailer)


def _join_stream(header: dict[str, Any], lines: list[bytes], trailer: dict[str, Any]) -> bytes:
    return (json.dumps(header).encode() + b"\n" + b"".join(lines) + kong_tokens.END_OF_DATA
            + json.dumps(trailer).encode() + b"\n")


def test_backup_stream_ends_with_marker_and_row_count_trailer(
        pg_database: str, wicked_subs: list[Subscription]) -> None:
    """The stream is header, one COPY line per token, end-of-data marker, then the count."""
    scenario = _build(pg_database, "3.x", wicked_subs)
    sink, metadata = _backup(scenario.config)
    header, lines, trailer = _split_stream(sink.read("kong_tokens"))
    assert header["version"] == kong_tokens.VERSION == 2
    assert "rows" not in header
    assert trailer == {"rows": len(lines)} and metadata["exported"] == len(lines)
    assert {line.split(b"\t", 1)[0].decode() for line in lines} == {
        t.id for t in [*scenario.live, scenario.short_lived]}


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5, 4096])
def test_restore_stream_in_small_chunks_marker_split_restores_all(
        chunk_size: int, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """The end-of-data marker is found wherever chunk boundaries cut it."""
    scenario = _build(pg_database, "1.x", wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    data = sink.read("kong_tokens")
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    report = restore_tokens(scenario.config, chunks, metadata=metadata, dry_run=False)
    assert report.ok and report.total == metadata["exported"]
    assert report.restored == len(scenario.expected_back()) + 1  # short-lived still valid
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == report.restored


def test_restore_version_1_stream_row_count_in_header_restores(
        pg_database: str, wicked_subs: list[Subscription]) -> None:
    """A version 1 stream (count in the header, no marker or trailer) still restores."""
    scenario = _build(pg_database, "0.14", wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    header, lines, trailer = _split_stream(sink.read("kong_tokens"))
    v1 = json.dumps(header | {"version": 1, "rows": trailer["rows"]}).encode() + b"\n"
    report = restore_tokens(scenario.config, [v1, b"".join(lines)], metadata=metadata,
                            dry_run=False)
    assert report.ok and report.restored == len(scenario.expected_back()) + 1
    with pytest.raises(IntegrityError, match="truncated"):
        restore_tokens(scenario.config, [v1, b"".join(lines[:-1])], metadata={},
                       dry_run=True)


def test_restore_duplicate_refresh_token_in_stream_counts_conflict_not_ok(
        pg_database: str, wicked_subs: list[Subscription]) -> None:
    """A token refused by a unique key is counted as a conflict, gets no ttls row, and the
    report is not ok; every other token is restored."""
    scenario = _build(pg_database, "0.14", wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    header, lines, trailer = _split_stream(sink.read("kong_tokens"))
    names = [c["name"] for c in header["columns"]]
    keep = next(t for t in scenario.expected_back() if t.refresh_token)
    fields = next(line for line in lines if line.startswith(keep.id.encode())).split(b"\t")
    dup_id = str(uuid.uuid4())
    fields[names.index("id")] = dup_id.encode()
    # Sorts after the original's access token, so the original is inserted first and wins.
    fields[names.index("access_token")] = keep.access_token.encode() + b"-dup"
    stream = _join_stream(header, [*lines, b"\t".join(fields)], {"rows": trailer["rows"] + 1})

    report = restore_tokens(scenario.config, [stream],
                            metadata=metadata | {"exported": trailer["rows"] + 1}, dry_run=False)

    assert (report.conflicts, report.ok) == (1, False)
    assert report.restored == len(scenario.expected_back()) + 1  # short-lived still valid
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == report.restored
        ids = {r[0] for r in conn.execute("SELECT id::text FROM oauth2_tokens").fetchall()}
        with_ttl = {r[0] for r in conn.execute(
            "SELECT primary_key_value FROM ttls WHERE primary_key_value = ANY(%s)",
            ([keep.id, dup_id],)).fetchall()}
    assert keep.id in ids and dup_id not in ids
    assert with_ttl == {keep.id}


BIG = 120_000


def _big_kong(dsn: str, subs: list[Subscription], generation: str = "0.14") -> None:
    with kong_data.connect(dsn) as conn:
        kong_data.load_ddl(conn, generation)
        kong_data.sync_like_adapter(conn, generation, subs)
        kong_data.bulk_tokens(conn, generation, BIG)


def test_backup_connection_dropped_mid_copy_raises_source_error(
        pg_server: PgServer, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """Terminating the backend while it streams the export fails the backup clearly."""
    _big_kong(pg_database, wicked_subs)
    killed: list[int] = []

    def kill_after_first_chunk(_name: str, index: int) -> None:
        if index == 1:
            killed.append(pg_server.terminate_backends(kong_tokens._BACKUP_APP))

    sink = MemorySink(on_chunk=kill_after_first_chunk)
    config = KongTokensConfig(dsn=SecretStr(pg_database))
    with pytest.raises(SourceError, match="exporting Kong tokens failed"):
        KongTokensSource(config).backup(sink)
    assert killed == [1]


def test_restore_connection_dropped_mid_copy_rolls_back(
        pg_server: PgServer, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """Terminating the backend during the import leaves no token written."""
    _big_kong(pg_database, wicked_subs)
    config = KongTokensConfig(dsn=SecretStr(pg_database))
    sink, metadata = _backup(config)
    assert metadata["exported"] == BIG
    with kong_data.connect(pg_database) as conn:
        kong_data.lose_kong(conn, "0.14")
        kong_data.sync_like_adapter(conn, "0.14", wicked_subs)

    def killing_chunks() -> Iterator[bytes]:
        for index, chunk in enumerate(sink.chunks("kong_tokens")):
            if index == 3:
                assert pg_server.terminate_backends(kong_tokens._RESTORE_APP) == 1
            yield chunk

    with pytest.raises(DatabaseError, match="nothing was written"):
        restore_tokens(config, killing_chunks(), metadata=metadata, dry_run=False)
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == 0
