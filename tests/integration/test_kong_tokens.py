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
from wicked_dr.sources import kong_export, kong_restore, kong_stream
from wicked_dr.sources.base import BackupContext
from wicked_dr.sources.kong_restore import restore_tokens
from wicked_dr.sources.kong_tokens import KongTokensSource
from wicked_dr.testing.memory_sink import MemorySink
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration

# The "short-lived" token stays valid for every test but one, however loaded the machine;
# that one shortens it right before its backup (expire_token_in).
SHORT_LIVED_S = 3600


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
    metadata = KongTokensSource(config).backup(sink, BackupContext()).metadata
    return sink, metadata


@pytest.fixture(params=GENERATIONS)
def scenario(request: pytest.FixtureRequest, pg_database: str,
             wicked_subs: list[Subscription]) -> Scenario:
    """A populated Kong database of each generation."""
    return _build(pg_database, str(request.param), wicked_subs)


def _backup_before_short_lived_expires(
        scenario: Scenario) -> tuple[MemorySink, dict[str, Any], float]:
    """A backup that still holds the short-lived token, which then expires soon after;
    ``(sink, metadata, monotonic time of its expiry)``. The lifetime grows until a backup
    lands inside it: a slow machine costs time, never the test's meaning."""
    for lifetime_s in (4.0, 15.0, 60.0):
        with kong_data.connect(scenario.dsn) as conn:
            kong_data.expire_token_in(conn, scenario.generation, scenario.short_lived.id,
                                      lifetime_s)
        expires_at = time.monotonic() + lifetime_s
        sink, metadata = _backup(scenario.config)
        if metadata["exported"] == len(scenario.live) + 1:
            return sink, metadata, expires_at
    raise AssertionError("no backup finished within 60 s of setting the token's expiry")


def test_restore_after_adapter_rebuild_reattaches_unexpired_tokens(scenario: Scenario) -> None:
    """Every valid token comes back on its client and service; the rest are counted skipped."""
    sink, metadata, expires_at = _backup_before_short_lived_expires(scenario)
    assert metadata["generation"] == scenario.generation
    with kong_data.connect(scenario.dsn) as conn:
        expired_present = sum(
            1 for t in scenario.expired
            if conn.execute("SELECT 1 FROM oauth2_tokens WHERE id = %s", (t.id,)).fetchone())
    assert metadata["exported"] == len(scenario.live) + 1
    assert metadata["skipped_expired"] == expired_present
    assert "x_client_id" in metadata["columns"]
    _rebuild_after_loss(scenario)
    time.sleep(max(0.0, expires_at + 0.5 - time.monotonic()))

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


Stream = tuple[dict[str, Any], dict[str, list[bytes]], dict[str, Any]]


def _split_stream(data: bytes) -> Stream:
    """(header, data lines with their newline per section, trailer) of a version 3 stream."""
    head, _, rest = data.partition(b"\n")
    header = json.loads(head)
    assert header["version"] == 3
    sections: dict[str, list[bytes]] = {}
    for section in header["sections"]:
        lines: list[bytes] = []
        while not rest.startswith(kong_stream.END_OF_DATA):
            line, _, rest = rest.partition(b"\n")
            lines.append(line + b"\n")
        rest = rest[len(kong_stream.END_OF_DATA):]
        sections[section["name"]] = lines
    return header, sections, json.loads(rest)


def _join_stream(header: dict[str, Any], sections: dict[str, list[bytes]],
                 trailer: dict[str, Any]) -> bytes:
    body = b"".join(b"".join(sections[s["name"]]) + kong_stream.END_OF_DATA
                    for s in header["sections"])
    return json.dumps(header).encode() + b"\n" + body + json.dumps(trailer).encode() + b"\n"


def _fields(lines: list[bytes]) -> list[list[bytes]]:
    return [line.rstrip(b"\n").split(b"\t") for line in lines]


def _as_version_2(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """What the version 2 export wrote for the same tokens: one section, each token joined
    with its client_id, service and API name and (0.x) ttls expiry, as COPY text lines."""
    header, sections, _ = _split_stream(data)
    columns = {s["name"]: s["columns"] for s in header["sections"]}
    names = [c["name"] for c in columns["oauth2_tokens"]]

    def lookup(section: str) -> dict[bytes, bytes]:
        return {f[0]: f[1] for f in _fields(sections.get(section, []))}

    extra: list[tuple[str, str, str, dict[bytes, bytes]]] = [
        ("x_client_id", "text", "credential_id", lookup("oauth2_credentials"))]
    if "service_id" in names:
        extra.append(("x_service_name", "text", "service_id", lookup("services")))
    if "api_id" in names:
        extra.append(("x_api_name", "text", "api_id", lookup("apis")))
    if "ttls" in columns:
        extra.append(("x_ttls_expire_at", "timestamp without time zone", "id", lookup("ttls")))
    lines = []
    for row in _fields(sections["oauth2_tokens"]):
        joined = [*row, *(table.get(row[names.index(key)], b"\\N")
                          for _, _, key, table in extra)]
        lines.append(b"\t".join(joined) + b"\n")
    v2 = {k: v for k, v in header.items() if k != "sections"} | {
        "version": 2, "columns": [*columns["oauth2_tokens"],
                                  *({"name": n, "type": t} for n, t, _, _ in extra)]}
    return v2, lines


def _v2_stream(header: dict[str, Any], lines: list[bytes], rows: int | None = None) -> bytes:
    return (json.dumps(header).encode() + b"\n" + b"".join(lines) + kong_stream.END_OF_DATA
            + json.dumps({"rows": len(lines) if rows is None else rows}).encode() + b"\n")


@pytest.mark.parametrize("generation", GENERATIONS)
def test_backup_stream_has_unjoined_sections_each_ending_with_marker_then_counts(
        generation: str, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """Version 3: header, the tokens and each lookup table as a COPY section ending with the
    end-of-data marker, then the row count of every section; no expired token or ttls row."""
    scenario = _build(pg_database, generation, wicked_subs)
    sink, metadata = _backup(scenario.config)
    header, sections, trailer = _split_stream(sink.read("kong_tokens"))
    expected = {"0.11": ["oauth2_tokens", "oauth2_credentials", "apis", "ttls"],
                "0.14": ["oauth2_tokens", "oauth2_credentials", "services", "apis", "ttls"]}
    assert [s["name"] for s in header["sections"]] == expected.get(
        generation, ["oauth2_tokens", "oauth2_credentials", "services"])
    assert header["version"] == kong_stream.VERSION == 3
    assert "rows" not in header
    assert trailer == {"rows": {name: len(lines) for name, lines in sections.items()}}
    assert metadata["sections"] == trailer["rows"]
    live_ids = {t.id for t in [*scenario.live, scenario.short_lived]}
    assert metadata["exported"] == len(sections["oauth2_tokens"]) == len(live_ids)
    assert {f[0].decode() for f in _fields(sections["oauth2_tokens"])} == live_ids
    client_ids = {f[1].decode() for f in _fields(sections["oauth2_credentials"])}
    assert client_ids == {s.client_id for s in scenario.subs}
    if "ttls" in sections:
        # Only unexpired rows; the expired tokens' rows are left out with the tokens.
        assert {f[0].decode() for f in _fields(sections["ttls"])} == live_ids
    assert metadata["columns"] == [c["name"] for c in _as_version_2(
        sink.read("kong_tokens"))[0]["columns"]]


@pytest.mark.parametrize("generation", ["0.11", "0.14", "3.x"])
def test_restore_version_2_stream_joined_rows_restores_the_same(
        generation: str, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """A version 2 stream (one section of joined rows) restores exactly as version 3 does."""
    scenario = _build(pg_database, generation, wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    v2_header, lines = _as_version_2(sink.read("kong_tokens"))
    v2_metadata = {k: v for k, v in metadata.items() if k != "sections"} | {"version": 2}
    report = restore_tokens(scenario.config, [_v2_stream(v2_header, lines)],
                            metadata=v2_metadata, dry_run=False)
    assert report.ok and report.restored == len(scenario.expected_back()) + 1
    with kong_data.connect(pg_database) as conn:
        assert _attached(conn, generation) == {
            t.id: (t.client_id, t.api_id)
            for t in [*scenario.expected_back(), scenario.short_lived]}
    with pytest.raises(IntegrityError, match="truncated"):
        restore_tokens(scenario.config, [_v2_stream(v2_header, lines[:-1], len(lines))],
                       metadata={}, dry_run=True)


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
    header, lines = _as_version_2(sink.read("kong_tokens"))
    v1 = json.dumps(header | {"version": 1, "rows": len(lines)}).encode() + b"\n"
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
    header, sections, trailer = _split_stream(sink.read("kong_tokens"))
    names = [c["name"] for c in header["sections"][0]["columns"]]
    keep = next(t for t in scenario.expected_back() if t.refresh_token)
    lines = sections["oauth2_tokens"]
    fields = next(line for line in lines if line.startswith(keep.id.encode())).split(b"\t")
    dup_id = str(uuid.uuid4())
    fields[names.index("id")] = dup_id.encode()
    # Sorts after the original's access token, so the original is inserted first and wins.
    fields[names.index("access_token")] = keep.access_token.encode() + b"-dup"
    lines.append(b"\t".join(fields))
    ttl = next(line for line in sections["ttls"] if line.startswith(keep.id.encode()))
    sections["ttls"].append(dup_id.encode() + ttl[len(keep.id):])
    counts = {name: len(lines) for name, lines in sections.items()}
    stream = _join_stream(header, sections, {"rows": counts})

    report = restore_tokens(scenario.config, [stream],
                            metadata=metadata | {"exported": trailer["rows"]["oauth2_tokens"]
                                                 + 1}, dry_run=False)

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


@pytest.mark.parametrize("generation", ["0.14", "3.x"])
def test_backup_without_expired_tokens_exports_all_and_restores(
        generation: str, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """With no expired token the export reads the table without a filter; on 0.14 a token
    that has no ttls row at all is kept and restored without one (it never expires)."""
    scenario = _build(pg_database, generation, wicked_subs)
    never = scenario.expected_back()[0]
    with kong_data.connect(pg_database) as conn:
        conn.execute("DELETE FROM oauth2_tokens WHERE id = ANY(%s)",
                     ([t.id for t in scenario.expired],))
        if generation == "0.14":
            conn.execute("DELETE FROM ttls WHERE primary_key_value = %s", (never.id,))
    sink, metadata = _backup(scenario.config)
    assert (metadata["exported"], metadata["skipped_expired"]) == (len(scenario.live) + 1, 0)
    _rebuild_after_loss(scenario)
    report = restore_tokens(scenario.config, sink.chunks("kong_tokens"), metadata=metadata,
                            dry_run=False)
    assert report.ok and report.restored == len(scenario.expected_back()) + 1
    if generation == "0.14":
        with kong_data.connect(pg_database) as conn:
            assert conn.execute("SELECT count(*) FROM oauth2_tokens WHERE id = %s",
                                (never.id,)).fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM ttls WHERE primary_key_value = %s",
                                (never.id,)).fetchone() == (0,)


def test_restore_stream_cut_inside_a_later_section_refused_nothing_written(
        pg_database: str, wicked_subs: list[Subscription]) -> None:
    """A stream that ends inside the ttls section (after the tokens) is an IntegrityError
    and nothing is written."""
    scenario = _build(pg_database, "0.14", wicked_subs)
    sink, metadata = _backup(scenario.config)
    _rebuild_after_loss(scenario)
    data = sink.read("kong_tokens")
    last_marker = data.rindex(kong_stream.END_OF_DATA)
    cut = data[: data.rindex(b"\n", 0, last_marker - 1) + 1]  # inside the ttls rows
    with pytest.raises(IntegrityError, match="truncated"):
        restore_tokens(scenario.config, [cut], metadata=metadata, dry_run=False)
    with kong_data.connect(pg_database) as conn:
        assert (_count(conn, "oauth2_tokens"), _count(conn, "ttls")) == (0, len(
            scenario.live) + 3)  # only the old, orphaned ttls rows


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
            killed.append(pg_server.terminate_backends(kong_export._BACKUP_APP))

    sink = MemorySink(on_chunk=kill_after_first_chunk)
    config = KongTokensConfig(dsn=SecretStr(pg_database))
    with pytest.raises(SourceError, match="exporting Kong tokens failed"):
        KongTokensSource(config).backup(sink, BackupContext())
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
                assert pg_server.terminate_backends(kong_restore._RESTORE_APP) == 1
            yield chunk

    with pytest.raises(DatabaseError, match="nothing was written"):
        restore_tokens(config, killing_chunks(), metadata=metadata, dry_run=False)
    with kong_data.connect(pg_database) as conn:
        assert _count(conn, "oauth2_tokens") == 0


def _section_ends(data: bytes) -> list[int]:
    """Offsets just past each section's end-of-data marker line."""
    ends: list[int] = []
    offset = data.index(b"\n") + 1
    sections = len(json.loads(data[:offset])["sections"])
    while len(ends) < sections:
        line_end = data.index(b"\n", offset) + 1
        if data[offset:line_end] == kong_stream.END_OF_DATA:
            ends.append(line_end)
        offset = line_end
    return ends


def _first_chunk_of_section(chunks: list[bytes], section: int) -> int:
    """The index of the chunk where section ``section`` (0 = tokens) begins."""
    start = _section_ends(b"".join(chunks))[section - 1]
    offset = 0
    for index, chunk in enumerate(chunks):
        if offset >= start:
            return index
        offset += len(chunk)
    raise AssertionError("no such section start")


def test_backup_connection_dropped_before_ttls_section_raises_source_error(
        pg_server: PgServer, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """Terminating the backend after the tokens and lookups were read, before the ttls
    section, fails the backup: a stream without its last section and trailer is never
    reported as done. (Killed during a section, the backend may already have written the
    rest of it into the socket buffers: then the export is complete and rightly succeeds.)"""
    _big_kong(pg_database, wicked_subs)
    config = KongTokensConfig(dsn=SecretStr(pg_database))
    complete, _ = _backup(config)
    chunks = list(complete.chunks("kong_tokens"))
    # The chunk that ends the apis section: the sink holds it while the export waits.
    before_ttls = _first_chunk_of_section(chunks, 4) - 1
    killed: list[int] = []

    def kill_before_ttls(_name: str, index: int) -> None:
        if index == before_ttls:
            killed.append(pg_server.terminate_backends(kong_export._BACKUP_APP))

    with pytest.raises(SourceError, match="exporting Kong tokens failed"):
        KongTokensSource(config).backup(MemorySink(on_chunk=kill_before_ttls), BackupContext())
    assert killed == [1]


def test_backup_sink_failure_mid_copy_propagates_and_closes_connection(
        pg_server: PgServer, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """When the sink fails while COPY streams, its error comes out unchanged and the export
    leaves no session behind (no COPY left open on a pooled connection)."""
    _big_kong(pg_database, wicked_subs)

    def fail(_name: str, index: int) -> None:
        if index == 2:
            raise OSError("disk full")

    config = KongTokensConfig(dsn=SecretStr(pg_database))
    with pytest.raises(OSError, match="disk full"):
        KongTokensSource(config).backup(MemorySink(on_chunk=fail), BackupContext())
    deadline = time.monotonic() + 10
    while pg_server.terminate_backends(kong_export._BACKUP_APP) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pg_server.terminate_backends(kong_export._BACKUP_APP) == 0


def test_restore_connection_dropped_in_ttls_section_rolls_back(
        pg_server: PgServer, pg_database: str, wicked_subs: list[Subscription]) -> None:
    """Terminating the backend while a later section (ttls) is staged leaves nothing written."""
    _big_kong(pg_database, wicked_subs)
    config = KongTokensConfig(dsn=SecretStr(pg_database))
    sink, metadata = _backup(config)
    with kong_data.connect(pg_database) as conn:
        kong_data.lose_kong(conn, "0.14")
        kong_data.sync_like_adapter(conn, "0.14", wicked_subs)
        ttls_before = _count(conn, "ttls")
    chunks = list(sink.chunks("kong_tokens"))
    # Killed before the ttls section's second chunk: its COPY FROM STDIN is under way.
    in_ttls = _first_chunk_of_section(chunks, 4) + 1
    assert _first_chunk_of_section(chunks, 5) > in_ttls + 1

    def killing_chunks() -> Iterator[bytes]:
        for index, chunk in enumerate(chunks):
            if index == in_ttls:
                assert pg_server.terminate_backends(kong_restore._RESTORE_APP) == 1
            yield chunk

    with pytest.raises(DatabaseError, match="nothing was written"):
        restore_tokens(config, killing_chunks(), metadata=metadata, dry_run=False)
    with kong_data.connect(pg_database) as conn:
        assert (_count(conn, "oauth2_tokens"), _count(conn, "ttls")) == (0, ttls_before)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_backup_expired_ids_in_statement_and_server_side_anti_join_export_the_same(
        generation: str, pg_database: str, wicked_subs: list[Subscription],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With expired tokens present, carrying their ids into the token COPY (few expired) and
    the server-side anti-join (more than EXPIRED_IDS_MAX) export the same rows and count;
    expired ttls rows of gone tokens or with a non-uuid key are not counted."""
    scenario = _build(pg_database, generation, wicked_subs)
    more = [_token(s, s.api_id, expires_in_s=-60) for s in scenario.subs[3:8]]
    with kong_data.connect(pg_database) as conn:
        kong_data.add_tokens(conn, generation, more)
        # The short-lived token could expire between two backups: not part of this test.
        conn.execute("DELETE FROM oauth2_tokens WHERE id = %s", (scenario.short_lived.id,))
        if generation in ("0.11", "0.14"):
            conn.execute("DELETE FROM ttls WHERE primary_key_value = %s",
                         (scenario.short_lived.id,))
            conn.execute("INSERT INTO ttls (primary_key_value, table_name, primary_key_name, "
                         "expire_at) SELECT k, 'oauth2_tokens', 'id', (now() - interval "
                         "'1 hour') AT TIME ZONE 'UTC' FROM unnest(%s::text[]) AS k",
                         ([str(uuid.uuid4()), "not-a-uuid"],))
    statements: list[str] = []
    export_plan = kong_export.export_plan

    def spy(*args: Any, **kwargs: Any) -> Any:
        plan = export_plan(*args, **kwargs)
        statements.append(plan[0][1].as_string(None))
        return plan

    monkeypatch.setattr(kong_export, "export_plan", spy)
    results = {}
    for ids_max in (kong_export.EXPIRED_IDS_MAX, len(more) + 1, 1, 0):
        monkeypatch.setattr(kong_export, "EXPIRED_IDS_MAX", ids_max)
        sink, metadata = _backup(scenario.config)
        _, sections, trailer = _split_stream(sink.read("kong_tokens"))
        results[ids_max] = ({k: v for k, v in metadata.items()
                             if k not in ("size", "sha256", "server_time")},
                            {name: sorted(lines) for name, lines in sections.items()}, trailer)
    with kong_data.connect(pg_database) as conn:
        # Kong 3.x's insert trigger already deleted the expired tokens.
        expired_count = _count(conn, "oauth2_tokens") - len(scenario.live)
    if generation != "3.x":
        assert expired_count == len(scenario.expired) + len(more)
    carried = [ids_max for ids_max in results if ids_max >= expired_count]
    if generation in ("0.11", "0.14"):
        # The ids went into the statement exactly when there were at most EXPIRED_IDS_MAX.
        assert ["unnest" in s for s in statements] == [m in carried for m in results]
    else:
        assert not any("unnest" in s for s in statements)  # 1.x+: the ttl comparison
    first = next(iter(results.values()))
    assert all(result == first for result in results.values())
    metadata, sections, _ = first
    assert metadata["skipped_expired"] == expired_count
    live_ids = {t.id for t in scenario.live}
    assert {f[0].decode() for f in _fields(sections["oauth2_tokens"])} == live_ids
    if "ttls" in sections:
        assert {f[0].decode() for f in _fields(sections["ttls"])} == live_ids
