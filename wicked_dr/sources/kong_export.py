"""The token export: what is read from Kong's database, in which transaction, in what order.

One REPEATABLE READ, READ ONLY transaction reads the unexpired tokens with a plain
``COPY (SELECT ... FROM oauth2_tokens) TO STDOUT`` (no join), then the small tables that
re-attaching needs as further COPY sections: credentials (id -> client_id), services and APIs
(id -> name) and, on 0.x, the unexpired ``ttls`` rows of the tokens (id -> expiry). The bytes go
to the sink as they arrive (no temporary file, memory flat); rows are counted from the
newlines as they stream and the counts go into a trailer. Joining on the server cost more than
the whole ``pg_dump`` of the table (a hash join of every token with ``ttls`` on ``id::text``);
restore joins instead, where it is a small part of the work (kong_restore.py).

COPY is read with psycopg's own ``cursor.copy()`` (``pg_copy.copy_out``, shared with
wicked_db), which on 1 M tokens took 1.3x the time of
the hand-written libpq loop it replaced on Kong 0.14 (median 4.07 s against 3.10 s) and 1.2x
on 3.x (2.17 s against 1.86 s), within the 2x that plain code may cost
(bench/README_kong_tokens.md, 2026-11-30).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import SourceError
from wicked_dr.log import get_logger
from wicked_dr.repository.snapshot import StreamRef
from wicked_dr.sources.base import SnapshotSink
from wicked_dr.sources.kong_db import Conn, connect
from wicked_dr.sources.kong_schema import Column, KongSchema, detect_schema, table_columns
from wicked_dr.sources.kong_stream import (
    APIS,
    CREDENTIALS,
    END_OF_DATA,
    FORMAT,
    SECTION_KEYS,
    SERVICES,
    TOKENS,
    TTLS,
    VERSION,
    Section,
    joined_columns,
    json_line,
)
from wicked_dr.sources.kong_tokens import STREAM_NAME
from wicked_dr.sources.pg_copy import consistent_read, copy_out

# The source's events keep the source's module name, wherever in it they are emitted.
log = get_logger("wicked_dr.sources.kong_tokens")

# ttls.primary_key_value is text; only the canonical form of a uuid can equal a token's
# id::text, and only such a value is cast (a cast of anything else would fail the export).
_UUID_TEXT = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Up to this many expired tokens (0.x) the export carries their ids into the token COPY
# (about 37 bytes each, 3.7 MB at most); above it the COPY anti-joins on the server.
EXPIRED_IDS_MAX = 100_000
_BACKUP_APP = "wicked-dr kong_tokens backup"


def export_tokens(config: KongTokensConfig, sink: SnapshotSink,
                  cancel: CancelToken = NOT_CANCELLED) -> tuple[dict[str, Any], StreamRef]:
    """Stream the tokens into ``sink``; return the metadata (generation, columns, counts,
    server time) and the stream. ``cancel`` is checked between chunks: the COPY is then
    cancelled and the transaction rolled back."""
    counter = _RowCounter()
    with consistent_read(connect(config, _BACKUP_APP, "export tokens from"),
                         "exporting Kong tokens failed") as conn:
        schema = detect_schema(conn)
        found = expired_tokens(conn, schema)
        expired, server_time = found.count, found.server_time
        plan = export_plan(conn, schema, expired=found)
        header = _export_header(schema, plan, expired, server_time)
        # A COPY holds the connection's lock until it ends: if the sink stops reading
        # (an error, an interrupt), closing the chunks cancels it before the rollback.
        with closing(_export_chunks(conn, header, plan, counter, cancel)) as chunks:
            record = sink.add_stream(STREAM_NAME, chunks)
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
        "columns": [c.name for c in joined_columns([s for s, _ in plan])],
        "sections": dict(counter.rows),
        "exported": exported,
        "skipped_expired": expired,
        "server_time": server_time.isoformat(),
    }, record


@dataclass
class _RowCounter:
    rows: dict[str, int] = field(default_factory=dict)
    complete: bool = False


# --- expired tokens ----------------------------------------------------------------------


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


# --- the sections ------------------------------------------------------------------------


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


def _export_chunks(conn: Conn, header: dict[str, Any],
                   plan: list[tuple[Section, sql.Composed]],
                   counter: _RowCounter, cancel: CancelToken) -> Generator[bytes, None, None]:
    """The header line; per section its COPY text rows in chunks of about CHUNK_BYTES and
    the end-of-data marker; then a trailer line with the row counts (a cut stream lacks it)."""
    yield json_line(header)
    for section, query in plan:
        counter.rows[section.name] = 0
        for chunk, rows in copy_out(conn, query, END_OF_DATA):
            cancel.check()
            counter.rows[section.name] += rows
            yield chunk
    yield json_line({"rows": counter.rows})
    counter.complete = True
