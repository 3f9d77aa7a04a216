"""The PostgreSQL streaming machinery every database source shares (kong_tokens, wicked_db).

A session with timeouts and a name an operator finds in ``pg_stat_activity``; ``COPY ... TO
STDOUT`` read in large chunks and ``COPY ... FROM STDIN`` written from them, both with
psycopg's own ``cursor.copy()``; and the plain-text stream shape both sources write: a JSON
header line, COPY text sections each ended by COPY's end-of-data marker, a JSON trailer
line. The source modules keep what is theirs (their tables, their header fields, their
error wording); nothing here knows a table. psycopg is imported only by ``connect``: the
stream readers (the probes) need no driver.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING, Any

from wicked_dr.errors import IntegrityError, SourceError
from wicked_dr.log import REDACTOR

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow

    Conn = psycopg.Connection[TupleRow]

# COPY text's end-of-data marker: no data line can equal it (a backslash is escaped as \\).
END_OF_DATA = b"\\.\n"
# The sink gets chunks of about this size: COPY delivers one message per row, far too small.
CHUNK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 1 << 24  # a wicked_db header carries the schema's DDL
_MAX_TRAILER_BYTES = 1 << 20


def connect(dsn: str, *, connect_timeout_s: int, statement_timeout_s: int,
            application: str, failure: str, dsn_key: str) -> Conn:
    """Autocommit connection (transactions are explicit) with both timeouts, a UTC, ISO
    date, UTF-8 session;
    SourceError as one line, without the password, naming ``dsn_key`` to check."""
    import psycopg

    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout_s,
                               application_name=application)
    except psycopg.Error as exc:
        raise SourceError(f"{failure}: {one_line(exc)}; check {dsn_key}") from None
    try:
        # COPY text is written by one server and read by another: every setting that shapes
        # it is fixed (as pg_dump does), so no server's defaults change the bytes.
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('TimeZone', 'UTC', false), "
                     "set_config('DateStyle', 'ISO', false), "
                     "set_config('IntervalStyle', 'postgres', false), "
                     "set_config('extra_float_digits', '3', false), "
                     "set_config('client_encoding', 'UTF8', false)",
                     (f"{statement_timeout_s * 1000}",))
    except psycopg.Error as exc:
        conn.close()
        raise SourceError(f"the database refused the session settings: "
                          f"{one_line(exc)}") from None
    return conn


@contextmanager
def consistent_read(conn: Conn, failure: str) -> Iterator[Conn]:
    """One REPEATABLE READ, READ ONLY transaction on ``conn`` for the block: every read in
    it (catalog, COPYs) sees the database at one instant, so a backup is one recovery
    point. The connection is closed afterwards; a psycopg error becomes one SourceError
    line starting with ``failure``."""
    import psycopg

    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            yield conn
    except psycopg.Error as exc:
        raise SourceError(f"{failure}: {one_line(exc)}") from None
    finally:
        conn.close()


def one_line(exc: BaseException) -> str:
    """The error as one line, without any password the driver might have echoed."""
    return REDACTOR.scrub(" ".join(str(exc).split()))


def json_line(doc: dict[str, Any]) -> bytes:
    """A header or trailer line: compact, keys sorted, so equal content gives equal bytes."""
    return (json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode()


# --- COPY both ways ----------------------------------------------------------------------


def copy_out(conn: Conn, query: sql.Composed, end: bytes = b"") -> Iterator[tuple[bytes, int]]:
    """Run ``COPY ... TO STDOUT`` with psycopg's own ``Copy``; yield (chunk, rows in it) of
    about CHUNK_BYTES each, ``end`` appended to the last one.

    COPY delivers one message per row; they are joined into chunks so that the sink sees
    few large writes. ``Copy`` holds the connection's lock while this generator is
    suspended, so it must be run to its end or closed before the connection is used again;
    on either an error or a close, psycopg cancels the COPY and drains it, leaving the
    connection usable for the rollback.
    """
    pieces: list[bytes] = []
    size = 0
    with conn.cursor() as cur, cur.copy(query) as copy:
        for data in copy:
            pieces.append(bytes(data))
            size += len(data)
            if size >= CHUNK_BYTES:
                chunk = b"".join(pieces)
                pieces.clear()
                size = 0
                # COPY text escapes newlines inside values: each b"\n" ends a row.
                yield chunk, chunk.count(b"\n")
    chunk = b"".join(pieces)
    yield chunk + end, chunk.count(b"\n")


def copy_in(conn: Conn, statement: sql.Composed, data: Iterable[bytes]) -> int:
    """Run ``COPY ... FROM STDIN`` fed with ``data``; the rows the server loaded."""
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for chunk in data:
                if chunk:
                    copy.write(chunk)
        return cur.rowcount


# --- reading the stream shape --------------------------------------------------------------


def split_header(chunks: Iterable[bytes], label: str,
                 name: str) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The parsed first line, and the COPY text data after it. ``label`` names the stream
    in errors ("token stream"), ``name`` its source."""
    it = iter(chunks)
    buffer = bytearray()
    for chunk in it:
        buffer += chunk
        end = buffer.find(b"\n")
        if end >= 0:
            try:
                header = json.loads(bytes(buffer[:end]))
            except ValueError:
                raise IntegrityError(f"the {label}'s first line is not a JSON header; "
                                     f"this is not a wicked-dr {name} stream") from None
            if not isinstance(header, dict):
                raise IntegrityError(f"the {label}'s header is not a JSON object")
            return header, chain([bytes(buffer[end + 1:])], it)
        if len(buffer) > _MAX_HEADER_BYTES:
            break
    raise IntegrityError(f"the {label} has no header line; it is empty or not a "
                         f"wicked-dr {name} stream")


class SectionReader:
    """The data after the header: sections each ended by COPY's end-of-data marker, then a
    trailer line; ``marked=False`` reads one section that ends with the stream (kong_tokens
    version 1)."""

    def __init__(self, data: Iterator[bytes], *, marked: bool = True,
                 label: str = "token stream", name: str = "kong_tokens") -> None:
        self._data = data
        self._marked = marked
        self._rest = b""
        self._label = label
        self._name = name

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
                raise IntegrityError(f"the {self._label} ends inside a section: the "
                                     f"snapshot's {self._label} is truncated")
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
                raise IntegrityError(f"the {self._label}'s trailer is too long; this is not "
                                     f"a wicked-dr {self._name} stream")
        line, newline, extra = bytes(buffer).partition(b"\n")
        try:
            trailer = json.loads(line) if newline and not extra else None
        except ValueError:
            trailer = None
        if not isinstance(trailer, dict) or "rows" not in trailer:
            raise IntegrityError(f"the {self._label} has no end-of-data trailer: the "
                                 f"snapshot's {self._label} is truncated")
        return trailer
