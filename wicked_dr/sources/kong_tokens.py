"""Kong's OAuth2 tokens: stream them into a snapshot, and re-attach them after a rebuild.

Backup reads, in one REPEATABLE READ, READ ONLY transaction, the unexpired tokens with a plain
``COPY (SELECT ... FROM oauth2_tokens) TO STDOUT`` (no join), then the small tables that
re-attaching needs as further COPY sections: credentials (id -> client_id), services and APIs
(id -> name) and, on 0.x, the unexpired ``ttls`` rows of the tokens (id -> expiry). The bytes go
to the sink as they arrive (no temporary file, memory flat); rows are counted from the
newlines as they stream and the counts go into a trailer. Joining on the server cost more than
the whole ``pg_dump`` of the table (a hash join of every token with ``ttls`` on ``id::text``);
restore joins instead, where it is a small part of the work.

Restore runs after the Kong Adapter has rebuilt consumers, credentials and services with new
UUIDs: it stages each section in a temporary table (COPY FROM STDIN), joins them back into
one row per token, remaps ``credential_id`` by ``client_id`` and ``service_id`` by service
name, and inserts what is missing with one INSERT ... SELECT, all in one transaction. The
stream format is described in docs/format-kong-tokens.md.
"""

from __future__ import annotations

import json
import re
import selectors
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.rows import TupleRow

from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import DatabaseError, IntegrityError, SourceError
from wicked_dr.log import REDACTOR, get_logger
from wicked_dr.repository.snapshot import SourceRecord, StreamRef
from wicked_dr.sources.base import (
    BackupContext,
    DirRestore,
    SnapshotReader,
    SnapshotSink,
    SourceBackup,
    SourceKind,
    TreeReader,
)
from wicked_dr.sources.kong_schema import (
    SAFE_TYPE,
    Column,
    KongSchema,
    detect_schema,
    table_columns,
)

log = get_logger(__name__)

STREAM_NAME = "kong_tokens"
FORMAT = "wicked-dr/kong-tokens"
VERSION = 3
# Version 1 carried the row count in the header (it cost a second pass over the join);
# version 2 held one joined COPY section; version 3 holds the tables unjoined.
READABLE_VERSIONS = (1, 2, 3)
# COPY text's end-of-data marker: no data line can equal it (a backslash is escaped as \\).
END_OF_DATA = b"\\.\n"
# The sections of a version 3 stream, and the columns restore joins on in each.
TOKENS = "oauth2_tokens"
CREDENTIALS = "oauth2_credentials"
SERVICES = "services"
APIS = "apis"
TTLS = "ttls"
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    TOKENS: ("id", "access_token", "credential_id"),
    CREDENTIALS: ("id", "client_id"),
    SERVICES: ("id", "name"),
    APIS: ("id", "name"),
    TTLS: ("primary_key_value", "expire_at"),
}
# Columns a token has once restore joined the sections (version 2 streamed them joined).
CLIENT_ID = Column("x_client_id", "text")
SERVICE_NAME = Column("x_service_name", "text")
API_NAME = Column("x_api_name", "text")
TTLS_EXPIRE_AT = Column("x_ttls_expire_at", "timestamp without time zone")
# The sink gets chunks of about this size: COPY delivers one message per row, far too small.
CHUNK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 1 << 20
_MAX_TRAILER_BYTES = 1 << 16
# ttls.primary_key_value is text; only the canonical form of a uuid can equal a token's
# id::text, and only such a value is cast (a cast of anything else would fail the export).
_UUID_TEXT = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Up to this many expired tokens (0.x) the export carries their ids into the token COPY
# (about 37 bytes each, 3.7 MB at most); above it the COPY anti-joins on the server.
EXPIRED_IDS_MAX = 100_000
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_BACKUP_APP = "wicked-dr kong_tokens backup"
_RESTORE_APP = "wicked-dr kong_tokens restore"

Conn = psycopg.Connection[TupleRow]


@dataclass(frozen=True)
class Section:
    """One COPY section of a version 3 stream: some columns of one table."""

    name: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in stream order."""
        return tuple(c.name for c in self.columns)


# --- backup ------------------------------------------------------------------------------


class KongTokensSource:
    """The ``kong_tokens`` source: unexpired OAuth2 tokens plus what re-attaching needs.

    Backed up as one stream; restored live into a Kong database the Kong Adapter rebuilt
    (``restore_live``), or as the raw stream file into a directory."""

    name = STREAM_NAME
    kind: SourceKind = "stream"

    def __init__(self, config: KongTokensConfig) -> None:
        self._config = config

    @property
    def configured(self) -> bool:
        """Token backup is on when Kong's database is configured."""
        return self._config.dsn is not None and bool(self._config.dsn.get_secret_value())

    def check_ready(self, *, force: bool) -> None:
        """Nothing to check before the repository is opened: the export says what failed."""

    def backup(self, sink: SnapshotSink, context: BackupContext) -> SourceBackup:
        """Stream the tokens into ``sink``."""
        if not self.configured:
            raise SourceError("kong_tokens.dsn is not set; token backup is off")
        metadata, stream = self._export(sink)
        return SourceBackup(metadata, stream=stream)

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        """The token stream as ``target/kong_tokens.stream`` (docs/format-kong-tokens.md
        says how to load it by hand)."""
        if record.stream is None:
            raise IntegrityError(f"the {self.name} record holds no stream")
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{self.name}.stream"
        with open(path, "xb") as out:
            for chunk in reader.stream(record.stream):
                out.write(chunk)
        return DirRestore(self.name, {"bytes": record.stream.size}, str(path))

    def restore_live(self, reader: SnapshotReader, record: SourceRecord, *,
                     dry_run: bool) -> TokenRestoreReport:
        """Re-attach the tokens to the credentials the Kong Adapter rebuilt."""
        if record.stream is None:
            raise IntegrityError(f"the {self.name} record holds no stream")
        return restore_tokens(self._config, reader.stream(record.stream),
                              metadata=dict(record.metadata), dry_run=dry_run)

    def _export(self, sink: SnapshotSink) -> tuple[dict[str, Any], StreamRef]:
        """Stream the tokens into ``sink``; return generation, columns, counts, server time."""
        counter = _RowCounter()
        conn = _connect(self._config, _BACKUP_APP, "export tokens from")
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                schema = detect_schema(conn)
                found = expired_tokens(conn, schema)
                expired, server_time = found.count, found.server_time
                plan = export_plan(conn, schema, expired=found)
                header = _export_header(schema, plan, expired, server_time)
                record = sink.add_stream(STREAM_NAME, _export_chunks(conn, header, plan,
                                                                     counter))
        except psycopg.Error as exc:
            raise SourceError(f"exporting Kong tokens failed: {_one_line(exc)}") from None
        finally:
            conn.close()
        if not counter.complete:
            raise SourceError("the token export stopped before its end; the snapshot must "
                              "not be used")
        exported = counter.rows[TOKENS]
        log.info("kong_tokens.backup.done", generation=schema.generation, exported=exported,
                 skipped_expired=expired, size=record.size)
        return {
            "format": FORMAT,
            "version": VERSION,
            "stream": STREAM_NAME,
            "size": record.size,
            "sha256": record.sha256,
            "generation": schema.generation,
            "columns": [c.name for c in _joined_columns([s for s, _ in plan])],
            "sections": dict(counter.rows),
            "exported": exported,
            "skipped_expired": expired,
            "server_time": server_time.isoformat(),
        }, record


@dataclass
class _RowCounter:
    rows: dict[str, int] = field(default_factory=dict)
    complete: bool = False


def _expired_condition(schema: KongSchema) -> sql.Composable:
    """SQL that is true for an expired token (never NULL); ``x`` is its ttls row on 0.x."""
    if schema.uses_ttls_table:
        # 0.x writes expire_at as UTC wall time into a column without time zone.
        return sql.SQL("(x.expire_at IS NOT NULL AND x.expire_at <= (now() AT TIME ZONE 'UTC'))")
    if schema.has("ttl"):
        return sql.SQL("(t.ttl IS NOT NULL AND t.ttl <= now())")
    return sql.SQL("false")


def _expired_ttls_of_token(schema: KongSchema) -> sql.Composable:
    """``x`` ranges over the expired ttls rows of token ``t``. The key is compared as a uuid
    (the tokens' primary key index, or a hash on uuids) instead of as ``t.id::text``, which
    made PostgreSQL hash every token's id as text."""
    return sql.SQL(
        "SELECT 1 FROM ttls x WHERE x.table_name = 'oauth2_tokens' AND {expired} AND "
        "t.id = CASE WHEN x.primary_key_value ~ {pattern} THEN x.primary_key_value::uuid END"
    ).format(expired=_expired_condition(schema), pattern=sql.Literal(_UUID_TEXT))


@dataclass(frozen=True)
class ExpiredTokens:
    """The tokens expired at ``server_time`` (the snapshot's ``now()``), as the export found
    them in its own snapshot."""

    count: int
    server_time: datetime
    # Their ids as the text of a uuid[] ('{...}') when there are at most EXPIRED_IDS_MAX of
    # them (0.x); None when the token COPY filters on the server instead.
    ids: str | None = None


def _ids_query(schema: KongSchema) -> sql.Composable:
    """The ids of expired tokens (``LIMIT %s``). On 0.x only the expired ttls rows are read
    (Kong deletes them every 60 s, so they are few), each probing the tokens' primary key."""
    if schema.uses_ttls_table:
        return sql.SQL(
            "SELECT t.id FROM ttls x JOIN oauth2_tokens t ON t.id = CASE WHEN "
            "x.primary_key_value ~ {} THEN x.primary_key_value::uuid END "
            "WHERE x.table_name = 'oauth2_tokens' AND {} LIMIT %s"
        ).format(sql.Literal(_UUID_TEXT), _expired_condition(schema))
    return sql.SQL("SELECT t.id FROM oauth2_tokens t WHERE {} LIMIT %s").format(
        _expired_condition(schema))


def expired_tokens(conn: Conn, schema: KongSchema) -> ExpiredTokens:
    """Count the expired tokens, in the snapshot the COPY sections will read; on 0.x also
    return their ids when they are few, so that the token COPY can leave them out with a
    hash anti-join against that list instead of scanning ``ttls`` a second time.

    One query reads at most EXPIRED_IDS_MAX + 1 ids (the memory bound: 37 bytes of text per
    id); only when there are more is the full count run (a second pass, rare: Kong's
    cleanup runs every 60 s). On 1.x+ the filter is a ``ttl`` comparison per row, cheaper
    than a hash probe, so only the count is read."""
    if not schema.uses_ttls_table:
        row = conn.execute(sql.SQL("SELECT now(), (SELECT count(*) FROM ({}) e)").format(
            _ids_query(schema)), (None,)).fetchone()
        assert row is not None  # a SELECT without FROM always returns one row
        return ExpiredTokens(int(str(row[1])), _timestamp(row[0]))
    limit = EXPIRED_IDS_MAX + 1
    row = conn.execute(sql.SQL(
        "SELECT now(), count(*), array_agg(e.id)::text FROM ({}) e"
    ).format(_ids_query(schema)), (limit,)).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    server_time, count, ids = _timestamp(row[0]), int(str(row[1])), row[2]
    if count < limit:
        return ExpiredTokens(count, server_time, str(ids) if count else None)
    # Too many to carry in the statement: count them all; the COPY anti-joins on the server.
    row = conn.execute(sql.SQL("SELECT count(*) FROM ({}) e").format(_ids_query(schema)),
                       (None,)).fetchone()
    assert row is not None
    return ExpiredTokens(int(str(row[0])), server_time)


def _timestamp(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value


def _token_filter(schema: KongSchema, expired: ExpiredTokens) -> sql.Composable:
    """What leaves out expired tokens; nothing at all when there are none (the count ran on
    the same snapshot at the same ``now()``).

    With the ids at hand, a LEFT JOIN against them as an array: PostgreSQL hashes the few
    ids once and probes per token (``id <> ALL(array)`` would be a linear search per token
    before PostgreSQL 15). Otherwise (0.x, many expired) a server-side anti-join against the
    expired ttls rows, or (1.x+) the ``ttl`` comparison."""
    if expired.count == 0:
        return sql.SQL("")
    if expired.ids is not None:
        return sql.SQL(" LEFT JOIN unnest({}::uuid[]) AS e(id) ON e.id = t.id "
                       "WHERE e.id IS NULL").format(sql.Literal(expired.ids))
    if schema.uses_ttls_table:
        return sql.SQL(" WHERE NOT EXISTS ({})").format(_expired_ttls_of_token(schema))
    return sql.SQL(" WHERE NOT {}").format(_expired_condition(schema))


def _select(columns: Iterable[Column], table: str, alias: str,
            rest: sql.Composable | None = None) -> sql.Composed:
    fields = sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias),
                                                       sql.Identifier(c.name))
                                for c in columns)
    return sql.SQL("COPY (SELECT {} FROM {} {}{}) TO STDOUT").format(
        fields, sql.Identifier(table), sql.Identifier(alias), rest or sql.SQL(""))


def _lookup_section(conn: Conn, table: str) -> Section:
    """The key columns of a lookup table, typed as the catalog has them."""
    by_name = {c.name: c for c in table_columns(conn, table)}
    missing = [n for n in SECTION_KEYS[table] if n not in by_name]
    if missing:
        raise SourceError(f"Kong's table {table} has no column {', '.join(missing)}; its "
                          "migrations are incomplete (kong migrations up)")
    return Section(table, tuple(by_name[n] for n in SECTION_KEYS[table]))


def export_plan(conn: Conn, schema: KongSchema, *,
                expired: ExpiredTokens) -> list[tuple[Section, sql.Composed]]:
    """The stream's sections and the COPY statement of each, tokens first."""
    tokens = Section(TOKENS, schema.token_columns)
    plan = [(tokens, _select(tokens.columns, TOKENS, "t", _token_filter(schema, expired)))]
    lookups = [CREDENTIALS]
    if schema.has("service_id"):
        lookups.append(SERVICES)
    if schema.has("api_id"):
        lookups.append(APIS)
    for table in lookups:
        section = _lookup_section(conn, table)
        plan.append((section, _select(section.columns, table, "l")))
    if schema.uses_ttls_table:
        # Only the unexpired rows: a token without one here had no ttls row (never expires),
        # since the tokens with an expired one are not in the stream.
        section = _lookup_section(conn, TTLS)
        plan.append((section, _select(section.columns, TTLS, "x", sql.SQL(
            " WHERE x.table_name = 'oauth2_tokens' AND NOT {}").format(
                _expired_condition(schema)))))
    return plan


def _export_header(schema: KongSchema, plan: list[tuple[Section, sql.Composed]],
                   expired: int, server_time: datetime) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "encoding": "postgresql-copy-text",
        "generation": schema.generation,
        "sections": [{"name": s.name, "columns": [{"name": c.name, "type": c.type}
                                                  for c in s.columns]} for s, _ in plan],
        "skipped_expired": expired,
        "server_time": server_time.isoformat(),
    }


def _json_line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode()


def _export_chunks(conn: Conn, header: dict[str, Any],
                   plan: list[tuple[Section, sql.Composed]],
                   counter: _RowCounter) -> Iterator[bytes]:
    """The header line; per section its COPY text rows in chunks of about CHUNK_BYTES and
    the end-of-data marker; then a trailer line with the row counts (a cut stream lacks it)."""
    yield _json_line(header)
    for section, query in plan:
        counter.rows[section.name] = 0
        for chunk, rows in _copy_out(conn, query.as_bytes(conn), END_OF_DATA):
            counter.rows[section.name] += rows
            yield chunk
    yield _json_line({"rows": counter.rows})
    counter.complete = True


def _copy_out(conn: Conn, query: bytes, end: bytes) -> Iterator[tuple[bytes, int]]:
    """Run ``COPY ... TO STDOUT`` through libpq directly; yield (chunk, rows in it) of about
    CHUNK_BYTES each, ``end`` appended to the last one.

    psycopg's ``Copy.read()`` runs a generator and a wait per CopyData message, i.e. per row:
    with 1 M tokens that made the client, not the server, the bottleneck (0.14: 2.9 s instead
    of 2.0 s). Here a row costs one non-blocking ``get_copy_data`` call while libpq's buffer
    holds rows, and the socket is waited on only when the buffer is empty (the wait stays
    interruptible). On any failure the connection is closed, so that no COPY is left open
    on it.
    """
    pgconn = conn.pgconn
    done = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(pgconn.socket, selectors.EVENT_READ)
            _send(pgconn, selector, query)
            _expect(_next_result(pgconn, selector), pq.ExecStatus.COPY_OUT, pgconn)
            get_copy_data = pgconn.get_copy_data
            pieces: list[bytes] = []
            size = 0
            while True:
                nbytes, data = get_copy_data(1)
                if nbytes > 0:
                    pieces.append(bytes(data))
                    size += nbytes
                    if size >= CHUNK_BYTES:
                        chunk = b"".join(pieces)
                        pieces.clear()
                        size = 0
                        # COPY text escapes newlines inside values: each b"\n" ends a row.
                        yield chunk, chunk.count(b"\n")
                elif nbytes == 0:
                    _wait(selector, selectors.EVENT_READ)
                    pgconn.consume_input()
                else:
                    break
            if nbytes == -2:
                raise SourceError(f"exporting Kong tokens failed: {_pq_error(pgconn)}")
            _expect(_next_result(pgconn, selector), pq.ExecStatus.COMMAND_OK, pgconn)
            while _next_result(pgconn, selector) is not None:
                pass
        done = True
    finally:
        if not done:
            conn.close()
    chunk = b"".join(pieces)
    yield chunk + end, chunk.count(b"\n")


def _wait(selector: selectors.BaseSelector, events: int) -> int:
    """Block until the socket is ready for ``events``; return the ready events."""
    key = next(iter(selector.get_map().values()))
    if key.events != events:
        selector.modify(key.fileobj, events)
    ready = 0
    while not ready:
        ready = sum(mask for _, mask in selector.select())
    return ready


def _send(pgconn: pq.abc.PGconn, selector: selectors.BaseSelector, query: bytes) -> None:
    """Send a query on psycopg's non-blocking connection, as libpq's manual says to."""
    pgconn.send_query(query)
    while pgconn.flush():
        if _wait(selector, selectors.EVENT_READ | selectors.EVENT_WRITE) & \
                selectors.EVENT_READ:
            pgconn.consume_input()


def _next_result(pgconn: pq.abc.PGconn,
                 selector: selectors.BaseSelector) -> pq.abc.PGresult | None:
    """The next result, waiting on the socket (not inside libpq) while it is incomplete."""
    pgconn.consume_input()
    while pgconn.is_busy():
        _wait(selector, selectors.EVENT_READ)
        pgconn.consume_input()
    return pgconn.get_result()


def _expect(result: pq.abc.PGresult | None, status: pq.ExecStatus,
            pgconn: pq.abc.PGconn) -> None:
    if result is None or result.status != status:
        message = (result.error_message if result is not None else b"") or b""
        detail = message.decode("utf-8", "replace") or _pq_error(pgconn)
        raise SourceError(f"exporting Kong tokens failed: {_one_line_text(detail)}")


def _pq_error(pgconn: pq.abc.PGconn) -> str:
    return _one_line_text(pgconn.error_message.decode("utf-8", "replace")
                          or "the connection failed")


def _joined_columns(sections: list[Section]) -> list[Column]:
    """The columns of one token once restore joined the sections (version 2's layout)."""
    by_name = {s.name: s for s in sections}
    columns = [*by_name[TOKENS].columns, CLIENT_ID]
    token_names = set(by_name[TOKENS].column_names)
    if SERVICES in by_name and "service_id" in token_names:
        columns.append(SERVICE_NAME)
    if APIS in by_name and "api_id" in token_names:
        columns.append(API_NAME)
    if TTLS in by_name:
        columns.append(TTLS_EXPIRE_AT)
    return columns


# --- restore -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRestoreReport:
    """What a token restore did (or, with ``dry_run``, would do)."""

    generation: str
    total: int
    restored: int
    already_present: int
    skipped_expired: int
    skipped_no_client: int
    skipped_no_service: int
    # Tokens to restore that a unique key refused (a row written meanwhile, or a duplicate
    # in the stream): they are not in place.
    conflicts: int
    in_place: int
    dry_run: bool

    @property
    def ok(self) -> bool:
        """True only when every token that was not skipped is in Kong's table."""
        return (self.conflicts == 0
                and self.in_place == self.restored + self.already_present)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counts for ``--json``."""
        data = asdict(self)
        data["ok"] = self.ok
        return data


def restore_tokens(config: KongTokensConfig, chunks: Iterable[bytes], *,
                   metadata: dict[str, Any], dry_run: bool) -> TokenRestoreReport:
    """Re-attach the snapshot's tokens to the rebuilt credentials and services."""
    if config.dsn is None or not config.dsn.get_secret_value():
        raise SourceError("kong_tokens.dsn is not set; configure Kong's database to restore "
                          "tokens")
    header, data = _split_header(chunks)
    layout = _layout(header)
    conn = _connect(config, _RESTORE_APP, "restore tokens into")
    try:
        with conn.transaction():
            report = _restore_in_transaction(conn, config, metadata, layout, data, dry_run)
            if dry_run:
                raise psycopg.Rollback()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(f"restoring Kong tokens was refused: {_one_line(exc)}; use Kong's "
                            "own database role; nothing was written") from None
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"lost Kong's database while restoring tokens: {_one_line(exc)}; "
                            "the transaction was rolled back, nothing was written") from None
    except psycopg.Error as exc:
        raise DatabaseError(f"restoring Kong tokens failed: {_one_line(exc)}; the "
                            "transaction was rolled back, nothing was written") from None
    finally:
        conn.close()
    log.info("kong_tokens.restore.done", **report.to_dict())
    return report


def _restore_in_transaction(conn: Conn, config: KongTokensConfig, metadata: dict[str, Any],
                            layout: _Layout, data: Iterator[bytes],
                            dry_run: bool) -> TokenRestoreReport:
    schema = detect_schema(conn)
    if not dry_run:
        _require_write(conn, schema)
    ws_id = _workspace_id(conn, schema, config.workspace)
    staged = _stage(conn, layout, data, metadata)
    names = {c.name for c in layout.token_columns}
    conn.execute(_plan_query(schema, names, layout.token_source()), {"ws": ws_id})
    counts, present_found = _status_counts(conn)
    restored = counts.get("ok", 0)
    if not dry_run:
        restored = _insert(conn, schema, layout.token_columns, ws_id)
        if schema.uses_ttls_table:
            _write_ttls(conn, every_ok_row_inserted=restored == counts.get("ok", 0))
    # A present token counts as in place when its id or access token is in the table (a
    # refresh token alone is not enough); restored rows were just inserted.
    in_place = restored + present_found
    return TokenRestoreReport(
        generation=schema.generation, total=staged, restored=restored,
        already_present=counts.get("present", 0), skipped_expired=counts.get("expired", 0),
        skipped_no_client=counts.get("no_client", 0),
        skipped_no_service=counts.get("no_service", 0),
        conflicts=counts.get("ok", 0) - restored, in_place=in_place, dry_run=dry_run)


def _split_header(chunks: Iterable[bytes]) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The parsed first line, and the COPY text data after it."""
    it = iter(chunks)
    buffer = bytearray()
    for chunk in it:
        buffer += chunk
        end = buffer.find(b"\n")
        if end >= 0:
            try:
                header = json.loads(bytes(buffer[:end]))
            except ValueError:
                raise IntegrityError("the token stream's first line is not a JSON header; "
                                     "this is not a wicked-dr kong_tokens stream") from None
            if not isinstance(header, dict):
                raise IntegrityError("the token stream's header is not a JSON object")
            return header, chain([bytes(buffer[end + 1:])], it)
        if len(buffer) > _MAX_HEADER_BYTES:
            break
    raise IntegrityError("the token stream has no header line; it is empty or not a "
                         "wicked-dr kong_tokens stream")


# Versions 1 and 2 held one section, the tokens already joined, staged under this name.
_JOINED = "joined"


@dataclass(frozen=True)
class _Layout:
    """How a stream's data is laid out, from its header."""

    version: int
    sections: tuple[Section, ...]
    # The columns of one token as the plan reads it (version 2's joined layout).
    token_columns: tuple[Column, ...]
    header_rows: int | None = None  # version 1 only

    def table(self, section: Section) -> sql.Identifier:
        """The temporary table a section is staged in."""
        if section.name == _JOINED:
            return sql.Identifier("wdr_stage")
        return sql.Identifier(f"wdr_s_{section.name}")

    def token_source(self) -> sql.Composable:
        """A FROM item with one row per staged token in the joined layout."""
        if self.version < 3:
            return sql.SQL("wdr_stage")
        return _joined_sections(self)


def _layout(header: dict[str, Any]) -> _Layout:
    version = header.get("version")
    if header.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise IntegrityError(f"unsupported token stream {header.get('format')!r} version "
                             f"{version!r}; expected {FORMAT} version "
                             f"{' or '.join(map(str, READABLE_VERSIONS))}")
    if version == 3:
        sections = _v3_sections(header)
        return _Layout(3, sections, tuple(_joined_columns(list(sections))))
    columns = _columns(header.get("columns"), "the token stream's header")
    _require_columns(columns, ("id", "access_token", CLIENT_ID.name), "the token stream")
    rows = header.get("rows")
    if version == 1 and not isinstance(rows, int):
        raise IntegrityError("the token stream's header has no row count")
    return _Layout(int(version), (Section(_JOINED, columns),), columns,
                   rows if version == 1 else None)


def _v3_sections(header: dict[str, Any]) -> tuple[Section, ...]:
    entries = header.get("sections")
    if not isinstance(entries, list):
        raise IntegrityError("the token stream's header lists no sections")
    sections: list[Section] = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in SECTION_KEYS or name in {s.name for s in sections}:
            raise IntegrityError(f"the token stream's header has an unknown or repeated "
                                 f"section {name!r}")
        columns = _columns(entry.get("columns"), f"the token stream's section {name}")
        _require_columns(columns, SECTION_KEYS[name], f"the token stream's section {name}")
        sections.append(Section(name, columns))
    names = {s.name for s in sections}
    tokens = next((s for s in sections if s.name == TOKENS), None)
    needed = {TOKENS, CREDENTIALS}
    if tokens is not None:
        # Without these a token would be attached to no service, or never expire.
        token_names = set(tokens.column_names)
        needed |= {SERVICES} if "service_id" in token_names else set()
        needed |= {APIS} if "api_id" in token_names else set()
        needed |= {TTLS} if "ttl" not in token_names else set()
    missing = sorted(needed - names)
    if missing:
        raise IntegrityError(f"the token stream lacks section {', '.join(missing)}")
    return tuple(sections)


def _columns(entries: Any, where: str) -> tuple[Column, ...]:
    columns: list[Column] = []
    for entry in entries if isinstance(entries, list) else []:
        name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
        typ = str(entry.get("type", "")) if isinstance(entry, dict) else ""
        if not _IDENTIFIER.match(name) or not SAFE_TYPE.match(typ):
            raise IntegrityError(f"{where} has a bad column {name!r} {typ!r}")
        columns.append(Column(name, typ))
    return tuple(columns)


def _require_columns(columns: tuple[Column, ...], needed: tuple[str, ...], where: str) -> None:
    missing = sorted(set(needed) - {c.name for c in columns})
    if missing:
        raise IntegrityError(f"{where} lacks column {', '.join(missing)}")


class _SectionReader:
    """The data after the header: sections each ended by COPY's end-of-data marker (versions
    2 and 3), then a trailer line; version 1 is one section that ends with the stream."""

    def __init__(self, data: Iterator[bytes], *, marked: bool) -> None:
        self._data = data
        self._marked = marked
        self._rest = b""

    def section(self) -> Iterator[bytes]:
        """The next section's rows, without its marker; the server only sees rows.
        IntegrityError when the stream ends first (it was cut)."""
        if not self._marked:
            yield from self._data
            return
        marker = b"\n" + END_OF_DATA
        # A newline goes first, so a marker right at the start (an empty section) is found
        # too; the last len(END_OF_DATA) bytes are held back in case a marker spans chunks.
        held = bytearray(b"\n" + self._rest)
        skip = 1
        while (end := held.find(marker)) < 0:
            cut = len(held) - len(END_OF_DATA)
            if cut > skip:
                yield bytes(held[skip:cut])
                del held[:cut]
                skip = 0
            chunk = next(self._data, None)
            if chunk is None:
                raise IntegrityError("the token stream ends inside a section: the snapshot's "
                                     "token stream is truncated")
            held += chunk
        if end + 1 > skip:
            yield bytes(held[skip:end + 1])
        self._rest = bytes(held[end + len(marker):])

    def trailer(self) -> dict[str, Any]:
        """The trailer line after the last section."""
        buffer = bytearray(self._rest)
        for chunk in self._data:
            buffer += chunk
            if len(buffer) > _MAX_TRAILER_BYTES:
                raise IntegrityError("the token stream's trailer is too long; this is not a "
                                     "wicked-dr kong_tokens stream")
        line, newline, extra = bytes(buffer).partition(b"\n")
        try:
            trailer = json.loads(line) if newline and not extra else None
        except ValueError:
            trailer = None
        if not isinstance(trailer, dict) or "rows" not in trailer:
            raise IntegrityError("the token stream has no end-of-data trailer: the snapshot's "
                                 "token stream is truncated")
        return trailer


def _declared_rows(layout: _Layout, reader: _SectionReader) -> dict[str, int]:
    """Rows per section as the stream declares them (read after the last section)."""
    if layout.header_rows is not None:
        return {_JOINED: layout.header_rows}
    rows = reader.trailer()["rows"]
    if layout.version == 2:
        rows = {_JOINED: rows}
    if not isinstance(rows, dict) or not all(
            isinstance(rows.get(s.name), int) for s in layout.sections):
        raise IntegrityError("the token stream's trailer lacks a row count per section")
    return {s.name: int(rows[s.name]) for s in layout.sections}


def _stage(conn: Conn, layout: _Layout, data: Iterator[bytes],
           metadata: dict[str, Any]) -> int:
    """COPY every section into its temporary table; check the counts; return the tokens."""
    reader = _SectionReader(data, marked=layout.version >= 2)
    staged = {s.name: _copy_in(conn, layout.table(s), s.columns, reader.section())
              for s in layout.sections}
    declared = _declared_rows(layout, reader)
    token_section = _JOINED if layout.version < 3 else TOKENS
    exported = metadata.get("exported")
    if exported is not None and exported != declared[token_section]:
        raise IntegrityError(f"the snapshot records {exported} tokens but the token stream "
                             f"says {declared[token_section]}; the snapshot is inconsistent")
    for name, rows in staged.items():
        if rows != declared[name]:
            raise IntegrityError(f"the token stream's section {name} holds {rows} rows but "
                                 f"says {declared[name]}: the snapshot's token stream is "
                                 "truncated")
    for section in layout.sections:
        # Temporary tables are never analysed automatically; the plan joins on them.
        conn.execute(sql.SQL("ANALYZE {}").format(layout.table(section)))
    return staged[token_section]


def _copy_in(conn: Conn, table: sql.Identifier, columns: tuple[Column, ...],
             data: Iterable[bytes]) -> int:
    """Create a temporary table and COPY ``data`` into it; return its row count."""
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in columns)
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(table, definition))
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, names)) as copy:
            for chunk in data:
                if chunk:
                    copy.write(chunk)
        return cur.rowcount


def _joined_sections(layout: _Layout) -> sql.Composed:
    """The version 3 sections joined back into one row per token, with the columns version 2
    streamed: ``x_client_id``, ``x_service_name``, ``x_api_name``, ``x_ttls_expire_at``.
    Every lookup comes from a table's primary key, so no join adds rows."""
    names = {c.name for c in layout.token_columns}
    by_name = {s.name: s for s in layout.sections}

    def table(name: str) -> sql.Identifier:
        return layout.table(by_name[name])

    fields: list[sql.Composable] = [sql.SQL("t.*, c.client_id AS {}").format(
        sql.Identifier(CLIENT_ID.name))]
    joins: list[sql.Composable] = [sql.SQL(" LEFT JOIN {} c ON c.id = t.credential_id").format(
        table(CREDENTIALS))]
    if SERVICE_NAME.name in names:
        fields.append(sql.SQL("sv.name AS {}").format(sql.Identifier(SERVICE_NAME.name)))
        joins.append(sql.SQL(" LEFT JOIN {} sv ON sv.id = t.service_id").format(
            table(SERVICES)))
    if API_NAME.name in names:
        fields.append(sql.SQL("ap.name AS {}").format(sql.Identifier(API_NAME.name)))
        joins.append(sql.SQL(" LEFT JOIN {} ap ON ap.id = t.api_id").format(table(APIS)))
    if TTLS_EXPIRE_AT.name in names:
        fields.append(sql.SQL("x.expire_at AS {}").format(sql.Identifier(TTLS_EXPIRE_AT.name)))
        joins.append(sql.SQL(" LEFT JOIN {} x ON x.primary_key_value = t.id::text").format(
            table(TTLS)))
    return sql.SQL("(SELECT {} FROM {} t{})").format(
        sql.SQL(", ").join(fields), table(TOKENS), sql.Composed(joins))


def _require_write(conn: Conn, schema: KongSchema) -> None:
    tables = ["oauth2_tokens"] + (["ttls"] if schema.uses_ttls_table else [])
    for table in tables:
        row = conn.execute("SELECT has_table_privilege(%s, 'INSERT'), current_user, "
                           "current_database()", (table,)).fetchone()
        if row is None or not row[0]:
            user, database = (row[1], row[2]) if row else ("?", "?")
            raise DatabaseError(f"role {user!r} may not insert into {table} in database "
                                f"{database!r}; restore tokens with Kong's own database role")


def _workspace_id(conn: Conn, schema: KongSchema, workspace: str) -> str | None:
    if not schema.uses_workspaces:
        return None
    row = conn.execute("SELECT id::text FROM workspaces WHERE name = %s",
                       (workspace,)).fetchone()
    if row is None:
        raise SourceError(f"Kong has no workspace {workspace!r}; set kong_tokens.workspace to "
                          "an existing one")
    return str(row[0])


def _expiry(names: set[str]) -> sql.Composable:
    parts: list[sql.Composable] = []
    if "ttl" in names:
        parts.append(sql.SQL("s.ttl"))
    if TTLS_EXPIRE_AT.name in names:
        parts.append(sql.SQL("(s.{} AT TIME ZONE 'UTC')").format(
            sql.Identifier(TTLS_EXPIRE_AT.name)))
    if not parts:
        return sql.SQL("NULL::timestamptz")
    return sql.SQL("COALESCE({})").format(sql.SQL(", ").join(parts))


def _ws(schema: KongSchema, alias: str) -> sql.Composable:
    if not schema.uses_workspaces:
        return sql.SQL("")
    return sql.SQL(" AND {}.ws_id = %(ws)s::uuid").format(sql.Identifier(alias))


def _reference(schema: KongSchema, names: set[str], stage_col: Column, target_col: str,
               table: str, alias: str) -> tuple[sql.Composable, sql.Composable, sql.Composable]:
    """(new id expression, join, "cannot attach" condition) for a service/API reference."""
    if stage_col.name not in names:
        return sql.SQL("NULL::uuid"), sql.SQL(""), sql.SQL("false")
    named = sql.SQL("s.{} IS NOT NULL").format(sql.Identifier(stage_col.name))
    if not schema.has(target_col):
        # The target generation has nowhere to put it: such a token cannot be attached.
        return sql.SQL("NULL::uuid"), sql.SQL(""), named
    join = sql.SQL(" LEFT JOIN {t} {a} ON {a}.name = s.{c}{ws}").format(
        t=sql.Identifier(table), a=sql.Identifier(alias), c=sql.Identifier(stage_col.name),
        ws=_ws(schema, alias))
    missing = sql.SQL("({} AND {}.id IS NULL)").format(named, sql.Identifier(alias))
    return sql.SQL("{}.id").format(sql.Identifier(alias)), join, missing


def _plan_query(schema: KongSchema, names: set[str],
                source: sql.Composable) -> sql.Composed:
    """One pass over the stage: the remapped ids and a status per token."""
    service_id, service_join, no_service = _reference(schema, names, SERVICE_NAME,
                                                      "service_id", "services", "sv")
    api_id, api_join, no_api = _reference(schema, names, API_NAME, "api_id", "apis", "ap")
    refresh = (sql.SQL(" LEFT JOIN oauth2_tokens o3 ON o3.refresh_token = s.refresh_token{}")
               .format(_ws(schema, "o3")) if "refresh_token" in names else sql.SQL(""))
    refresh_hit = sql.SQL(" OR o3.id IS NOT NULL") if "refresh_token" in names else sql.SQL("")
    return sql.SQL(
        "CREATE TEMP TABLE wdr_plan ON COMMIT DROP AS "
        "SELECT s.*, e.expiry AS wdr_expiry, c.id AS wdr_credential_id, "
        "{service_id} AS wdr_service_id, {api_id} AS wdr_api_id, "
        "CASE WHEN e.expiry IS NOT NULL AND e.expiry <= now() THEN 'expired' "
        "WHEN c.id IS NULL THEN 'no_client' "
        "WHEN {no_service} OR {no_api} THEN 'no_service' "
        "WHEN o1.id IS NOT NULL OR o2.id IS NOT NULL{refresh_hit} THEN 'present' "
        "ELSE 'ok' END AS wdr_status, "
        "(o1.id IS NOT NULL OR o2.id IS NOT NULL) AS wdr_found "
        "FROM {source} s CROSS JOIN LATERAL (SELECT {expiry} AS expiry) e "
        "LEFT JOIN oauth2_credentials c ON c.client_id = s.x_client_id{ws_c}"
        "{service_join}{api_join} "
        "LEFT JOIN oauth2_tokens o1 ON o1.id = s.id "
        "LEFT JOIN oauth2_tokens o2 ON o2.access_token = s.access_token{ws_o2}{refresh}"
    ).format(service_id=service_id, api_id=api_id, no_service=no_service, no_api=no_api,
             refresh_hit=refresh_hit, expiry=_expiry(names), ws_c=_ws(schema, "c"),
             service_join=service_join, api_join=api_join, ws_o2=_ws(schema, "o2"),
             refresh=refresh, source=source)


def _status_counts(conn: Conn) -> tuple[dict[str, int], int]:
    """Tokens per status, and how many 'present' ones match by id or access token."""
    rows = conn.execute("SELECT wdr_status, count(*), count(*) FILTER (WHERE wdr_found) "
                        "FROM wdr_plan GROUP BY 1").fetchall()
    found = sum(int(str(n)) for status, _, n in rows if status == "present")
    return {str(status): int(str(n)) for status, n, _ in rows}, found


def _is_timestamp(typ: str) -> bool:
    return typ.startswith("timestamp")


def _target_value(column: Column, stage: dict[str, Column]) -> sql.Composable | None:
    """The SELECT expression for one target column, or None to leave it to its default."""
    fixed = {"credential_id": sql.SQL("p.wdr_credential_id"),
             "service_id": sql.SQL("p.wdr_service_id"), "api_id": sql.SQL("p.wdr_api_id"),
             "ws_id": sql.SQL("%(ws)s::uuid"), "ttl": sql.SQL("p.wdr_expiry")}
    if column.name in fixed:
        return fixed[column.name]
    source = stage.get(column.name)
    if source is None:
        return None
    value = sql.SQL("p.{}").format(sql.Identifier(column.name))
    if source.type == column.type:
        return value
    if _is_timestamp(source.type) and _is_timestamp(column.type):
        # Kong stores UTC wall time in its columns without time zone; this converts both ways.
        return sql.SQL("({} AT TIME ZONE 'UTC')").format(value)
    return sql.SQL("{}::{}").format(value, sql.SQL(column.type))


def _insert(conn: Conn, schema: KongSchema, stage: tuple[Column, ...],
            ws_id: str | None) -> int:
    by_name = {c.name: c for c in stage}
    targets: list[sql.Composable] = []
    values: list[sql.Composable] = []
    for column in schema.token_columns:
        value = _target_value(column, by_name)
        if value is not None:
            targets.append(sql.Identifier(column.name))
            values.append(value)
    # Sorted by access token, its two indexes (unique key and lookup index) grow at their
    # right edge instead of at random pages: a third less time at 1 M tokens.
    query = sql.SQL("INSERT INTO oauth2_tokens ({}) SELECT {} FROM wdr_plan p "
                    "WHERE p.wdr_status = 'ok' ORDER BY p.access_token").format(
        sql.SQL(", ").join(targets), sql.SQL(", ").join(values))
    with conn.cursor() as cur:
        try:
            # The plan already left out every token that is there, so a conflict is rare
            # (Kong wrote the same token meanwhile). Without ON CONFLICT, PostgreSQL skips a
            # speculative insertion per row; on a conflict, retry with it.
            with conn.transaction():
                cur.execute(query, {"ws": ws_id})
                return cur.rowcount
        except psycopg.errors.UniqueViolation:
            log.warning("kong_tokens.restore.conflict_retry")
        cur.execute(query + sql.SQL(" ON CONFLICT DO NOTHING"), {"ws": ws_id})
        return cur.rowcount


def _write_ttls(conn: Conn, *, every_ok_row_inserted: bool) -> None:
    """Kong 0.x expires a token through its ``ttls`` row: write one per restored token."""
    # Only when some 'ok' row was not inserted must each be checked against the table.
    inserted = sql.SQL("") if every_ok_row_inserted else sql.SQL(
        " AND EXISTS (SELECT 1 FROM oauth2_tokens o WHERE o.id = p.id)")
    conn.execute(sql.SQL(
        "INSERT INTO ttls (primary_key_value, primary_uuid_value, table_name, "
        "primary_key_name, expire_at) "
        "SELECT p.id::text, p.id, 'oauth2_tokens', 'id', p.wdr_expiry AT TIME ZONE 'UTC' "
        "FROM wdr_plan p WHERE p.wdr_status = 'ok' AND p.wdr_expiry IS NOT NULL{} "
        # In id order both ttls indexes grow at their right edge.
        "ORDER BY p.id "
        "ON CONFLICT (primary_key_value, table_name) DO UPDATE "
        "SET expire_at = EXCLUDED.expire_at, primary_uuid_value = EXCLUDED.primary_uuid_value"
    ).format(inserted))


# --- shared ------------------------------------------------------------------------------


def _connect(config: KongTokensConfig, application: str, doing: str) -> Conn:
    """Autocommit connection (transactions are explicit) with both timeouts, UTC session."""
    assert config.dsn is not None
    try:
        conn = psycopg.connect(config.dsn.get_secret_value(), autocommit=True,
                               connect_timeout=config.connect_timeout_s,
                               application_name=application)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to Kong's database to {doing} it: "
                          f"{_one_line(exc)}; check kong_tokens.dsn") from None
    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('TimeZone', 'UTC', false)",
                     (f"{config.statement_timeout_s * 1000}",))
    except psycopg.Error as exc:
        conn.close()
        raise SourceError(f"Kong's database refused the session settings: "
                          f"{_one_line(exc)}") from None
    return conn


def _one_line(exc: BaseException) -> str:
    """The error as one line, without any password the driver might have echoed."""
    return _one_line_text(str(exc))


def _one_line_text(text: str) -> str:
    return REDACTOR.scrub(" ".join(text.split()))
