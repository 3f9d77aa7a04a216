"""The wicked_db export: the whole schema in one REPEATABLE READ, READ ONLY transaction.

Everything the stream holds is read in that one transaction: the catalog (the DDL,
wicked_db_schema.py), every sequence's value, ``meta`` and every table's rows, so that a
snapshot is one recovery point even while portal-api writes (its transactions either all
show or none). Rows are read with ``COPY (SELECT ... ORDER BY <primary key>) TO STDOUT``
(``pg_copy.copy_out``, shared with kong_tokens): the order makes a section's bytes the same
whenever the same rows are read again, which the probe relies on. The bytes go to the sink
as they arrive; each section is counted and hashed on the way, into the trailer.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.config import WickedDbConfig
from wicked_dr.errors import RefusedError, SourceError
from wicked_dr.log import get_logger
from wicked_dr.repository.snapshot import StreamRef
from wicked_dr.sources import pg_copy
from wicked_dr.sources.base import SnapshotSink
from wicked_dr.sources.pg_copy import END_OF_DATA, consistent_read, copy_out, json_line, one_line
from wicked_dr.sources.wicked_db_schema import (
    read_schema,
    schema_oid,
    server_version_num,
    set_search_path,
    table_count,
)
from wicked_dr.sources.wicked_db_stream import (
    FORMAT,
    STREAM_NAME,
    VERSION,
    Header,
    SectionDigest,
    Sequence,
    TableSection,
    trailer_doc,
)

if TYPE_CHECKING:
    from wicked_dr.sources.pg_copy import Conn

# The source's events keep the source's module name, wherever in it they are emitted.
log = get_logger("wicked_dr.sources.wicked_db")

BACKUP_APP = "wicked-dr wicked_db backup"
CHECK_APP = "wicked-dr wicked_db check"
# Keys of wicked's meta row that are never copied into the header, whatever a later wicked
# stores there: the header is readable without the repository key's help in logs and the
# probe's reports (the rows themselves are in the encrypted stream anyway).
_SECRET_WORDS = ("aeskey", "secret", "password", "private")


def connect(config: WickedDbConfig, application: str, doing: str) -> Conn:
    """A session on wicked's database (timeouts, UTC, named), its errors one line."""
    assert config.dsn is not None
    return pg_copy.connect(config.dsn.get_secret_value(),
                           connect_timeout_s=config.connect_timeout_s,
                           statement_timeout_s=config.statement_timeout_s,
                           application=application,
                           failure=f"cannot connect to wicked's database to {doing} it",
                           dsn_key="wicked_db.dsn")


def check_not_empty(config: WickedDbConfig) -> None:
    """RefusedError when the schema is missing, holds no table, or its ``meta`` table has
    no row (portal-api writes one at its first start): such a backup would succeed with
    nothing to restore, like one of an empty volume."""
    schema = config.schema
    conn = connect(config, CHECK_APP, "check")
    try:
        with conn.transaction():  # the search_path is set for the transaction
            _check_not_empty(conn, schema)
    except psycopg.Error as exc:
        raise SourceError(f"checking wicked's database failed: {one_line(exc)}") from None
    finally:
        conn.close()


def _check_not_empty(conn: Conn, schema: str) -> None:
    namespace = schema_oid(conn, schema)
    if namespace is None or table_count(conn, namespace) == 0:
        raise RefusedError(f"wicked's database has no tables in schema {schema}; refusing "
                           "to snapshot it (is wicked_db.dsn the right database and "
                           "wicked_db.schema the right schema? --force if intended)")
    set_search_path(conn, schema)
    row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if row and row[0]:
        count = conn.execute("SELECT count(*) FROM meta").fetchone()
        if count and int(str(count[0])) == 0:
            raise RefusedError(f"wicked's schema {schema} has an empty meta table: "
                               "portal-api never started on it; refusing to snapshot it "
                               "(--force if intended)")


def export_schema(config: WickedDbConfig, sink: SnapshotSink,
                  cancel: CancelToken = NOT_CANCELLED) -> tuple[dict[str, Any], StreamRef]:
    """Stream the schema into ``sink``; return the snapshot metadata and the stream.
    ``cancel`` is checked between chunks: the COPY is then cancelled and the transaction
    rolled back."""
    progress = _Progress()
    with consistent_read(connect(config, BACKUP_APP, "back up"),
                         "exporting wicked's database failed") as conn:
        header = read_header(conn, config.schema)
        with closing(_chunks(conn, header, progress, cancel)) as chunks:
            record = sink.add_stream(STREAM_NAME, chunks)
    if not progress.complete:
        raise SourceError("the wicked_db export stopped before its end; the snapshot must "
                          "not be used")
    rows = {name: d.rows for name, d in progress.digests.items()}
    log.info("wicked_db.backup.done", schema=header.schema, tables=len(rows),
             rows=sum(rows.values()), size=record.size)
    return {
        "format": FORMAT,
        "version": VERSION,
        "stream": STREAM_NAME,
        "size": record.size,
        "sha256": record.sha256,
        "schema": header.schema,
        "server_version": header.server_version,
        "server_time": header.server_time,
        "meta": header.meta,
        "rows": rows,
    }, record


def read_header(conn: Conn, schema: str) -> Header:
    """Everything the header holds, read in the caller's transaction."""
    version = server_version_num(conn)
    namespace = schema_oid(conn, schema)
    if namespace is None:
        raise SourceError(f"wicked's database has no schema {schema}; check "
                          "wicked_db.schema")
    set_search_path(conn, schema)
    ddl = read_schema(conn, schema, namespace, version)
    # "16.4", without a distribution's suffix ("16.4 (Debian 16.4-1)").
    row = conn.execute("SELECT split_part(current_setting('server_version'), ' ', 1), "
                       "now()").fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    server_version, now = str(row[0]), row[1]
    assert isinstance(now, datetime)
    return Header(schema=schema, server_version=server_version,
                  server_time=now.isoformat(), meta=_meta(conn, ddl.sections),
                  pre_data=ddl.pre_data, post_data=ddl.post_data,
                  sequences=tuple(_sequence(conn, name) for name in ddl.sequences),
                  sections=ddl.sections)


def _sequence(conn: Conn, name: str) -> Sequence:
    row = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
        sql.Identifier(name))).fetchone()
    assert row is not None  # a sequence is one row
    return Sequence(name, int(str(row[0])), bool(row[1]))


def _meta(conn: Conn, sections: tuple[TableSection, ...]) -> dict[str, Any]:
    """What wicked 1.0 keeps in ``meta`` row 1 (pg-utils.js ``getMetadata``): the schema's
    migration ``version``, ``create_date``/``last_update``, ``config_hash`` (the static
    configuration's identity: ``hash`` and ``previous_hash``) and ``principal``. Keys that
    look like secrets are left out (none are known: PORTAL_API_AESKEY is never stored)."""
    table = next((s for s in sections if s.name == "meta"), None)
    if table is None or "data" not in table.column_names or "id" not in table.column_names:
        return {}
    row = conn.execute("SELECT data::text FROM meta WHERE id = 1").fetchone()
    if row is None or row[0] is None:
        return {}
    data = json.loads(str(row[0]))
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items()
            if not any(word in key.lower() for word in _SECRET_WORDS)}


def copy_query(schema: str, section: TableSection) -> sql.Composed:
    """The section's COPY: its columns, every row of ``schema``'s table, in its order. The
    probe runs the same query on the reloaded schema and expects the same bytes."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in section.column_names)
    order = sql.SQL(", ").join(sql.Identifier(c) for c in section.order_by)
    return sql.SQL("COPY (SELECT {} FROM {}.{} ORDER BY {}) TO STDOUT").format(
        columns, sql.Identifier(schema), sql.Identifier(section.name), order)


@dataclass
class _Progress:
    digests: dict[str, SectionDigest] = field(default_factory=dict)
    complete: bool = False


def _chunks(conn: Conn, header: Header, progress: _Progress,
            cancel: CancelToken) -> Generator[bytes, None, None]:
    """The header line; per table its COPY text rows and the end-of-data marker; the
    trailer (a cut stream lacks it)."""
    yield json_line(header.to_json())
    for section in header.sections:
        # A blob boundary before each table (the sink's empty chunk): a table that did not
        # change is the same blobs as last time, whatever changed before it (the header's
        # server_time always does).
        yield b""
        digest = progress.digests[section.name] = SectionDigest()
        for chunk, _ in copy_out(conn, copy_query(header.schema, section)):
            cancel.check()
            digest.update(chunk)
            if chunk:
                yield chunk
        yield END_OF_DATA
    yield b""
    yield json_line(trailer_doc(progress.digests))
    progress.complete = True
