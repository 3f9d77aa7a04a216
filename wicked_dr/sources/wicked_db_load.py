"""Loading a wicked_db stream into a schema, in one transaction and without side effects.

``COPY ... FROM`` fires row triggers, and wicked's AFTER INSERT trigger on
``webhook_events`` calls ``pg_notify('webhook_insert', ...)``: portal-api would send every
restored event again. The loader therefore creates the schema's tables without any trigger
(``pre_data``), loads the rows, and only then creates keys, indexes and triggers
(``post_data``): no trigger exists while a row arrives, so none fires and no foreign key
needs an order. Everything is one transaction: a kill at any point leaves the target as it
was (no half schema); the stream's trailer (rows and SHA-256 per table) and the loaded row
counts are checked before COMMIT.

``load_into_schema`` is what the live restore calls with a staging schema
(``wicked_restore_<id>``) before its swap; by hand it loads into ``wicked`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from wicked_dr.config import WickedDbConfig
from wicked_dr.errors import DatabaseError, IntegrityError, RefusedError, SourceError
from wicked_dr.log import get_logger
from wicked_dr.sources.pg_copy import copy_in, one_line
from wicked_dr.sources.wicked_db_export import connect
from wicked_dr.sources.wicked_db_schema import schema_oid, set_search_path
from wicked_dr.sources.wicked_db_stream import StreamReader, TableSection

if TYPE_CHECKING:
    from wicked_dr.sources.pg_copy import Conn

log = get_logger("wicked_dr.sources.wicked_db")

LOAD_APP = "wicked-dr wicked_db load"
# wicked's pending-event table and its listener column (core.sql).
WEBHOOK_EVENTS = "webhook_events"
LISTENER_COLUMN = "webhook_listeners_id"


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the schema it filled, rows per table (as loaded, before queues were
    emptied), pending events removed per listener, sequences set, whether a schema was
    replaced."""

    schema: str
    source_schema: str
    rows: dict[str, int]
    emptied: dict[str, int] = field(default_factory=dict)
    sequences: int = 0
    replaced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return asdict(self)


def load_into_schema(config: WickedDbConfig, chunks: Iterable[bytes], target_schema: str,
                     *, empty_queues: tuple[str, ...] = (),
                     replace: bool = False) -> LoadReport:
    """Create ``target_schema`` from the stream ``chunks`` in one transaction: schema,
    ``pre_data``, every table's rows, sequence values, pending events of ``empty_queues``
    deleted, ``post_data``; the trailer and row counts checked before COMMIT.

    RefusedError when ``target_schema`` exists, unless ``replace`` (then it is dropped in
    the same transaction: until COMMIT everybody else still sees the old one)."""
    if not config.configured:
        raise SourceError("wicked_db.dsn is not set; configure wicked's database to load "
                          "into it")
    reader = StreamReader(chunks)  # the header is checked before anything is connected
    conn = connect(config, LOAD_APP, "load")
    try:
        with conn.transaction():
            report = _load(conn, reader, target_schema, empty_queues, replace)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(f"loading wicked's schema was refused: {one_line(exc)}; use a "
                            "role that may create schemas; nothing was written") from None
    except psycopg.Error as exc:
        raise DatabaseError(f"loading wicked's schema into {target_schema} failed: "
                            f"{one_line(exc)}; the transaction was rolled back, nothing "
                            "was written") from None
    finally:
        conn.close()
    log.info("wicked_db.load.done", schema=target_schema, tables=len(report.rows),
             rows=sum(report.rows.values()), emptied=report.emptied,
             replaced=report.replaced)
    return report


def _load(conn: Conn, reader: StreamReader, target: str, empty_queues: tuple[str, ...],
          replace: bool) -> LoadReport:
    header = reader.header
    existed = schema_oid(conn, target) is not None
    if existed and not replace:
        raise RefusedError(f"schema {target} exists in wicked's database; refusing to load "
                           "over it (drop it first, or load into another schema)")
    if existed:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(target)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(target)))
    set_search_path(conn, target)
    # Functions come before the tables: a SQL function's body naming a table is checked
    # only when it runs (as pg_dump loads them).
    conn.execute("SELECT set_config('check_function_bodies', 'off', true)")
    for statement in header.pre_data:
        conn.execute(statement.encode())
    log.info("wicked_db.load.tables_created", schema=target, tables=len(header.sections))
    loaded: dict[str, int] = {}
    for section, rows in reader.sections():
        loaded[section.name] = copy_in(conn, _copy_from(section), rows)
        log.info("wicked_db.load.section", table=section.name, rows=loaded[section.name])
    reader.check_trailer()
    _check_counts(conn, header.sections, loaded)
    for sequence in header.sequences:
        conn.execute("SELECT setval(%s::regclass, %s, %s)",
                     (sql.Identifier(sequence.name).as_string(conn), sequence.last_value,
                      sequence.is_called))
    emptied = _empty_queues(conn, header.sections, empty_queues)
    for statement in header.post_data:
        conn.execute(statement.encode())
    return LoadReport(target, header.schema, loaded, emptied, len(header.sequences),
                      existed)


def _copy_from(section: TableSection) -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in section.column_names)
    return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(section.name), columns)


def _check_counts(conn: Conn, sections: tuple[TableSection, ...],
                  loaded: dict[str, int]) -> None:
    """Each table holds as many rows as its section had (COPY's own count says what it
    read; this says what the table holds, in the transaction about to commit)."""
    for section in sections:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(section.name))).fetchone()
        count = int(str(row[0])) if row else -1
        if count != loaded[section.name]:
            raise IntegrityError(f"table {section.name} holds {count} rows after the load, "
                                 f"its section {loaded[section.name]}; nothing was written")


def _empty_queues(conn: Conn, sections: tuple[TableSection, ...],
                  listeners: tuple[str, ...]) -> dict[str, int]:
    """Delete the pending events of ``listeners`` (``restore.empty_webhook_queues``): mails
    and chat messages must not be sent twice. The listeners stay registered."""
    events = next((s for s in sections if s.name == WEBHOOK_EVENTS), None)
    if not listeners or events is None or LISTENER_COLUMN not in events.column_names:
        return {}
    rows = conn.execute(sql.SQL(
        "WITH gone AS (DELETE FROM {} WHERE {} = ANY(%s) RETURNING {}) "
        "SELECT {}, count(*) FROM gone GROUP BY 1").format(
            sql.Identifier(WEBHOOK_EVENTS), sql.Identifier(LISTENER_COLUMN),
            sql.Identifier(LISTENER_COLUMN), sql.Identifier(LISTENER_COLUMN)),
        (list(listeners),)).fetchall()
    found = {str(listener): int(str(count)) for listener, count in rows}
    return {listener: found.get(listener, 0) for listener in listeners}
