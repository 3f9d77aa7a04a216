"""Kong's OAuth2 tokens: stream them into a snapshot, and re-attach them after a rebuild.

Backup reads every unexpired token in one REPEATABLE READ, READ ONLY transaction with
``COPY (SELECT ...) TO STDOUT`` and hands the bytes to the sink as they arrive (no temporary
file, memory flat). Rows are counted from the newlines as they stream (no second pass over
the join) and the count goes into a trailer after COPY's end-of-data marker. Each row
carries what re-attaching needs: the ``client_id`` of its credential, the ``name`` of its
service (and, on 0.x, of its API) and, on 0.x, the expiry from the ``ttls`` table.

Restore runs after the Kong Adapter has rebuilt consumers, credentials and services with new
UUIDs: it stages the stream in a temporary table (COPY FROM STDIN), remaps ``credential_id``
by ``client_id`` and ``service_id`` by service name, and inserts what is missing with one
INSERT ... SELECT, all in one transaction. The stream format is described in
docs/format-kong-tokens.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import chain
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import DatabaseError, IntegrityError, SourceError
from wicked_dr.log import REDACTOR, get_logger
from wicked_dr.sources.base import SnapshotSink
from wicked_dr.sources.kong_schema import SAFE_TYPE, Column, KongSchema, detect_schema

log = get_logger(__name__)

STREAM_NAME = "kong_tokens"
FORMAT = "wicked-dr/kong-tokens"
VERSION = 2
# Version 1 carried the row count in the header (it cost a second pass over the join).
READABLE_VERSIONS = (1, 2)
# COPY text's end-of-data marker: no data line can equal it (a backslash is escaped as \\).
END_OF_DATA = b"\\.\n"
# Columns the export adds after the token's own columns.
CLIENT_ID = Column("x_client_id", "text")
SERVICE_NAME = Column("x_service_name", "text")
API_NAME = Column("x_api_name", "text")
TTLS_EXPIRE_AT = Column("x_ttls_expire_at", "timestamp without time zone")
# The sink gets chunks of about this size: COPY delivers one message per row, far too small.
CHUNK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 1 << 20
_MAX_TRAILER_BYTES = 1 << 16
# The export joins every token to its ttls row (0.x); with the default 4 MB work_mem that hash
# join spills to disk in 16 batches. This is per session, for one statement.
_EXPORT_WORK_MEM = "64MB"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_BACKUP_APP = "wicked-dr kong_tokens backup"
_RESTORE_APP = "wicked-dr kong_tokens restore"

Conn = psycopg.Connection[TupleRow]


# --- backup ------------------------------------------------------------------------------


class KongTokensSource:
    """The ``kong_tokens`` source: unexpired OAuth2 tokens plus what re-attaching needs."""

    name = STREAM_NAME

    def __init__(self, config: KongTokensConfig) -> None:
        if config.dsn is None or not config.dsn.get_secret_value():
            raise SourceError("kong_tokens.dsn is not set; token backup is off")
        self._config = config

    def backup(self, sink: SnapshotSink) -> dict[str, Any]:
        """Stream the tokens into ``sink``; return generation, columns, counts, server time."""
        counter = _RowCounter()
        conn = _connect(self._config, _BACKUP_APP, "export tokens from")
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                schema = detect_schema(conn)
                conn.execute("SELECT set_config('work_mem', %s, true)", (_EXPORT_WORK_MEM,))
                header = _export_header(conn, schema)
                query = _export_query(schema)
                record = sink.add_stream(STREAM_NAME, _export_chunks(conn, header, query,
                                                                     counter))
        except psycopg.Error as exc:
            raise SourceError(f"exporting Kong tokens failed: {_one_line(exc)}") from None
        finally:
            conn.close()
        if not counter.complete:
            raise SourceError("the token export stopped before its end; the snapshot must "
                              "not be used")
        log.info("kong_tokens.backup.done", generation=schema.generation,
                 exported=counter.rows, skipped_expired=header["skipped_expired"],
                 size=record.size)
        return {
            "format": FORMAT,
            "version": VERSION,
            "stream": record.name,
            "size": record.size,
            "sha256": record.sha256,
            "generation": schema.generation,
            "columns": [c["name"] for c in header["columns"]],
            "exported": counter.rows,
            "skipped_expired": header["skipped_expired"],
            "server_time": header["server_time"],
        }


@dataclass
class _RowCounter:
    rows: int = 0
    complete: bool = False


def _expired_condition(schema: KongSchema) -> sql.Composable:
    """SQL that is true for an expired token (never NULL)."""
    if schema.uses_ttls_table:
        # 0.x writes expire_at as UTC wall time into a column without time zone.
        return sql.SQL("(x.expire_at IS NOT NULL AND x.expire_at <= (now() AT TIME ZONE 'UTC'))")
    if schema.has("ttl"):
        return sql.SQL("(t.ttl IS NOT NULL AND t.ttl <= now())")
    return sql.SQL("false")


def _ttls_join(schema: KongSchema) -> sql.Composable:
    if not schema.uses_ttls_table:
        return sql.SQL("")
    return sql.SQL(" LEFT JOIN ttls x ON x.primary_key_value = t.id::text"
                   " AND x.table_name = 'oauth2_tokens'")


def _export_columns(schema: KongSchema) -> list[Column]:
    columns = [*schema.token_columns, CLIENT_ID]
    if schema.has("service_id"):
        columns.append(SERVICE_NAME)
    if schema.has("api_id"):
        columns.append(API_NAME)
    if schema.uses_ttls_table:
        columns.append(TTLS_EXPIRE_AT)
    return columns


def _export_query(schema: KongSchema) -> sql.Composed:
    """``COPY (SELECT tokens + client_id + service name ...) TO STDOUT`` for unexpired rows."""
    fields: list[sql.Composable] = [sql.SQL("t.{}").format(sql.Identifier(c))
                                    for c in schema.column_names]
    fields.append(sql.SQL("c.client_id"))
    joins: list[sql.Composable] = [
        sql.SQL(" LEFT JOIN oauth2_credentials c ON c.id = t.credential_id")]
    if schema.has("service_id"):
        fields.append(sql.SQL("s.name"))
        joins.append(sql.SQL(" LEFT JOIN services s ON s.id = t.service_id"))
    if schema.has("api_id"):
        fields.append(sql.SQL("a.name"))
        joins.append(sql.SQL(" LEFT JOIN apis a ON a.id = t.api_id"))
    if schema.uses_ttls_table:
        fields.append(sql.SQL("x.expire_at"))
        joins.append(_ttls_join(schema))
    return sql.SQL("COPY (SELECT {} FROM oauth2_tokens t{} WHERE NOT {}) TO STDOUT").format(
        sql.SQL(", ").join(fields), sql.Composed(joins), _expired_condition(schema))


def _expired_count_query(schema: KongSchema) -> sql.Composable:
    """Count the expired tokens without the full join: they are few (Kong deletes them every
    60 s), so only the expired side is joined; the exported rows are counted as they stream."""
    if schema.uses_ttls_table:
        return sql.SQL(
            "SELECT count(*) FROM ttls x WHERE x.table_name = 'oauth2_tokens' AND {} AND "
            "EXISTS (SELECT 1 FROM oauth2_tokens t WHERE t.id::text = x.primary_key_value)"
        ).format(_expired_condition(schema))
    return sql.SQL("SELECT count(*) FROM oauth2_tokens t WHERE {}").format(
        _expired_condition(schema))


def _export_header(conn: Conn, schema: KongSchema) -> dict[str, Any]:
    """Expired count and server time from the same snapshot the COPY will read."""
    row = conn.execute(sql.SQL("SELECT ({}), now()").format(
        _expired_count_query(schema))).fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    expired, server_time = row
    assert isinstance(server_time, datetime)
    return {
        "format": FORMAT,
        "version": VERSION,
        "encoding": "postgresql-copy-text",
        "generation": schema.generation,
        "columns": [{"name": c.name, "type": c.type} for c in _export_columns(schema)],
        "skipped_expired": int(str(expired)),
        "server_time": server_time.isoformat(),
    }


def _json_line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode()


def _export_chunks(conn: Conn, header: dict[str, Any], query: sql.Composed,
                   counter: _RowCounter) -> Iterator[bytes]:
    """The header line, COPY text rows in chunks of about CHUNK_BYTES, then the end-of-data
    marker and a trailer line with the row count (a cut stream lacks it)."""
    yield _json_line(header)
    pieces: list[bytes] = []
    size = 0
    with conn.cursor() as cur, cur.copy(query) as copy:
        # COPY delivers one message per row; gathering them keeps the sink's chunks large.
        while data := copy.read():
            pieces.append(bytes(data))
            size += len(data)
            if size >= CHUNK_BYTES:
                yield _counted(pieces, counter)
                pieces.clear()
                size = 0
    yield _counted(pieces, counter) + END_OF_DATA + _json_line({"rows": counter.rows})
    counter.complete = True


def _counted(pieces: list[bytes], counter: _RowCounter) -> bytes:
    chunk = b"".join(pieces)
    # COPY text escapes newlines inside values, so each b"\n" ends one row.
    counter.rows += chunk.count(b"\n")
    return chunk


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
    _check_header(header)
    stage = _stage_columns(header)
    body = _Body(data, header)
    conn = _connect(config, _RESTORE_APP, "restore tokens into")
    try:
        with conn.transaction():
            report = _restore_in_transaction(conn, config, metadata, stage, body, dry_run)
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
                            stage: list[Column], body: _Body,
                            dry_run: bool) -> TokenRestoreReport:
    schema = detect_schema(conn)
    if not dry_run:
        _require_write(conn, schema)
    ws_id = _workspace_id(conn, schema, config.workspace)
    staged = _stage(conn, stage, body)
    _check_row_count(staged, body.rows(), metadata)
    names = {c.name for c in stage}
    conn.execute(_plan_query(schema, names), {"ws": ws_id})
    counts, present_found = _status_counts(conn)
    restored = counts.get("ok", 0)
    if not dry_run:
        restored = _insert(conn, schema, stage, ws_id)
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


def _check_header(header: dict[str, Any]) -> None:
    if header.get("format") != FORMAT or header.get("version") not in READABLE_VERSIONS:
        raise IntegrityError(f"unsupported token stream {header.get('format')!r} version "
                             f"{header.get('version')!r}; expected {FORMAT} version "
                             f"{' or '.join(map(str, READABLE_VERSIONS))}")
    if header["version"] == 1 and not isinstance(header.get("rows"), int):
        raise IntegrityError("the token stream's header has no row count")


def _check_row_count(staged: int, rows: int, metadata: dict[str, Any]) -> None:
    exported = metadata.get("exported")
    if exported is not None and exported != rows:
        raise IntegrityError(f"the snapshot records {exported} tokens but the token stream "
                             f"says {rows}; the snapshot is inconsistent")
    if staged != rows:
        raise IntegrityError(f"the token stream holds {staged} rows but says {rows}: the "
                             "snapshot's token stream is truncated")


class _Body:
    """The COPY data after the header. Version 2 ends with the end-of-data marker and a
    trailer line; the marker and trailer are held back here, so the server only sees rows."""

    def __init__(self, data: Iterator[bytes], header: dict[str, Any]) -> None:
        self._data = data
        self._header_rows: int | None = header["rows"] if header["version"] == 1 else None
        self._trailer_rows: int | None = None

    def rows(self) -> int:
        """The row count the stream declares (call after iterating)."""
        if self._header_rows is not None:
            return self._header_rows
        if self._trailer_rows is None:
            raise IntegrityError("the token stream has no end-of-data trailer: the snapshot's "
                                 "token stream is truncated")
        return self._trailer_rows

    def __iter__(self) -> Iterator[bytes]:
        if self._header_rows is not None:
            yield from self._data
            return
        marker = b"\n" + END_OF_DATA
        # The header's newline goes first, so a marker right at the start is found too; the
        # last len(END_OF_DATA) bytes are held back in case a marker spans two chunks.
        held = bytearray(b"\n")
        skip = 1
        for chunk in self._data:
            held += chunk
            end = held.find(marker)
            if end >= 0:
                if end + 1 > skip:
                    yield bytes(held[skip:end + 1])
                self._read_trailer(bytes(held[end + len(marker):]))
                return
            cut = len(held) - len(END_OF_DATA)
            if cut > skip:
                yield bytes(held[skip:cut])
                del held[:cut]
                skip = 0
        # No marker: whatever came is handed on; rows() then reports the truncation.
        if len(held) > skip:
            yield bytes(held[skip:])

    def _read_trailer(self, rest: bytes) -> None:
        buffer = bytearray(rest)
        for chunk in self._data:
            buffer += chunk
            if len(buffer) > _MAX_TRAILER_BYTES:
                raise IntegrityError("the token stream's trailer is too long; this is not a "
                                     "wicked-dr kong_tokens stream")
        line, newline, extra = bytes(buffer).partition(b"\n")
        if not newline or extra:
            return
        try:
            trailer = json.loads(line)
        except ValueError:
            return
        if isinstance(trailer, dict) and isinstance(trailer.get("rows"), int):
            self._trailer_rows = trailer["rows"]


def _stage_columns(header: dict[str, Any]) -> list[Column]:
    columns: list[Column] = []
    for entry in header.get("columns") or []:
        name, typ = str(entry.get("name", "")), str(entry.get("type", ""))
        if not _IDENTIFIER.match(name) or not SAFE_TYPE.match(typ):
            raise IntegrityError(f"the token stream's header has a bad column {name!r} {typ!r}")
        columns.append(Column(name, typ))
    present = {c.name for c in columns}
    missing = sorted({"id", "access_token", CLIENT_ID.name} - present)
    if missing:
        raise IntegrityError(f"the token stream lacks column {', '.join(missing)}")
    return columns


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


def _stage(conn: Conn, stage: list[Column], data: Iterable[bytes]) -> int:
    """COPY the stream into a temporary table; return its row count."""
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in stage)
    conn.execute(sql.SQL("CREATE TEMP TABLE wdr_stage ({}) ON COMMIT DROP").format(definition))
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in stage)
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY wdr_stage ({}) FROM STDIN").format(columns)) as copy:
            for chunk in data:
                if chunk:
                    copy.write(chunk)
        staged = cur.rowcount
    # Temporary tables are never analysed automatically; the plan below joins on it.
    conn.execute("ANALYZE wdr_stage")
    return staged


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


def _plan_query(schema: KongSchema, names: set[str]) -> sql.Composed:
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
        "FROM wdr_stage s CROSS JOIN LATERAL (SELECT {expiry} AS expiry) e "
        "LEFT JOIN oauth2_credentials c ON c.client_id = s.x_client_id{ws_c}"
        "{service_join}{api_join} "
        "LEFT JOIN oauth2_tokens o1 ON o1.id = s.id "
        "LEFT JOIN oauth2_tokens o2 ON o2.access_token = s.access_token{ws_o2}{refresh}"
    ).format(service_id=service_id, api_id=api_id, no_service=no_service, no_api=no_api,
             refresh_hit=refresh_hit, expiry=_expiry(names), ws_c=_ws(schema, "c"),
             service_join=service_join, api_join=api_join, ws_o2=_ws(schema, "o2"),
             refresh=refresh)


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


def _insert(conn: Conn, schema: KongSchema, stage: list[Column], ws_id: str | None) -> int:
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
    return REDACTOR.scrub(" ".join(str(exc).split()))
