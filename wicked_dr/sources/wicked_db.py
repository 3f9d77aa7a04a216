"""wicked 1.0's own PostgreSQL schema as a source: one consistent stream, loaded without
side effects.

This is the source as the registry sees it: ``WickedDbSource`` (the guard, the backup, the
stream into a directory as CSV files and DDL) plus ``load_into_schema``, which the live
restore's schema swap calls. The work lives in modules each readable in one sitting,
imported only when used, so that a backup without ``wicked_db.dsn`` never loads psycopg:

* wicked_db_schema.py: the schema's DDL, read from the catalog;
* wicked_db_export.py: what the backup reads, in which transaction;
* wicked_db_load.py: the stream loaded into a schema in one transaction, no trigger firing;
* wicked_db_live.py: restore --live: a staging schema, swapped in by renaming schemas;
* wicked_db_stream.py: the stream format (docs/format-wicked-db.md), shared with the probe;
* wicked_db_probe.py: verify's probe, the load in a scratch PostgreSQL server (pg_probe.py);
* pg_copy.py: the COPY machinery and stream shape shared with kong_tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from wicked_dr.config import WickedDbConfig
from wicked_dr.errors import IntegrityError, RefusedError, SourceError
from wicked_dr.repository.snapshot import SourceRecord, StreamRef
from wicked_dr.sources.base import (
    BackupContext,
    DirRestore,
    LiveSettings,
    LiveState,
    ProbeBench,
    SnapshotSink,
    SourceBackup,
    SourceKind,
    TreeReader,
)
from wicked_dr.sources.wicked_db_stream import STREAM_NAME, Header, StreamReader, TableSection

if TYPE_CHECKING:
    from wicked_dr.repository.verification import ProbeResult
    from wicked_dr.sources.wicked_db_load import LoadReport

class WickedDbSource:
    """The ``wicked_db`` source: every table, row, function, trigger and sequence of
    wicked's schema, as one stream read in one REPEATABLE READ transaction."""

    name = STREAM_NAME
    kind: SourceKind = "stream"

    def __init__(self, config: WickedDbConfig) -> None:
        self._config = config

    @property
    def configured(self) -> bool:
        """Backed up when wicked's database is configured (``wicked_db.dsn``)."""
        return self._config.configured

    def check_ready(self, *, force: bool) -> None:
        """Refuse an empty schema (none, no table, an empty ``meta``), like an empty volume,
        unless forced; SourceError when the database cannot be reached."""
        if not force:
            from wicked_dr.sources.wicked_db_export import check_not_empty

            check_not_empty(self._config)

    def backup(self, sink: SnapshotSink, context: BackupContext) -> SourceBackup:
        """Stream the schema into ``sink`` (one REPEATABLE READ, READ ONLY transaction)."""
        if not self.configured:
            raise SourceError("wicked_db.dsn is not set; wicked_db backup is off")
        from wicked_dr.sources.wicked_db_export import export_schema

        metadata, stream = export_schema(self._config, sink, context.cancel)
        return SourceBackup(metadata, stream=stream)

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        """``target/wicked_db/``: ``schema.sql``, one ``<table>.csv`` per table,
        ``sequences.json``, ``meta.json`` and ``load.psql`` (the whole load by hand, in one
        transaction: docs/format-wicked-db.md). A subdirectory, so that it never mixes
        with the volume's files restored into ``target`` itself."""
        return write_dir(reader.stream(_stream_of(record)), target / self.name)

    def probe(self, reader: TreeReader, record: SourceRecord,
              bench: ProbeBench) -> list[ProbeResult]:
        """The stream loaded into a scratch PostgreSQL server as a restore loads it, read
        back against the trailer, wicked's relations checked on the rows
        (``wicked_db_probe.py``)."""
        from wicked_dr.sources.wicked_db_probe import probe_wicked_db

        return [probe_wicked_db(reader, record, bench)]

    # --- the live restore (wicked_db_live.py): a staging schema, swapped in by renaming

    def live_guard(self, reader: TreeReader, record: SourceRecord, settings: LiveSettings,
                   state: LiveState) -> dict[str, Any]:
        """A snapshot of a later migration than the live schema, or a restoring role that
        does not own the live schema, is refused before anything is written."""
        from wicked_dr.sources import wicked_db_live

        return wicked_db_live.live_guard(self._config, reader, _stream_of(record),
                                         settings, state)

    def stage_live(self, reader: TreeReader, record: SourceRecord, settings: LiveSettings,
                   state: LiveState) -> dict[str, Any]:
        """The snapshot loaded and checked in a staging schema beside the live one."""
        from wicked_dr.sources import wicked_db_live

        return wicked_db_live.stage_live(self._config, reader, _stream_of(record),
                                         settings, state)

    def swap_live(self, state: LiveState) -> dict[str, Any]:
        """Staging schema in, live schema kept as the pre-restore copy (one transaction)."""
        from wicked_dr.sources import wicked_db_live

        return wicked_db_live.swap_live(self._config, state)

    def undo_live(self, state: LiveState) -> dict[str, Any]:
        """The pre-restore copy back in place (one transaction)."""
        from wicked_dr.sources import wicked_db_live

        return wicked_db_live.undo_live(self._config, state)

    def finish_live(self, state: LiveState) -> dict[str, Any]:
        """Staging leftovers dropped; the pre-restore copy named."""
        from wicked_dr.sources import wicked_db_live

        return wicked_db_live.finish_live(self._config, state)


def load_into_schema(config: WickedDbConfig, chunks: Iterable[bytes], target_schema: str,
                     *, empty_queues: tuple[str, ...] = (),
                     replace: bool = False) -> LoadReport:
    """Load a wicked_db stream into ``target_schema`` (``wicked_db_load.py``)."""
    from wicked_dr.sources import wicked_db_load

    return wicked_db_load.load_into_schema(config, chunks, target_schema,
                                           empty_queues=empty_queues, replace=replace)


def _stream_of(record: SourceRecord) -> StreamRef:
    if record.stream is None:
        raise IntegrityError(f"the {record.name} record of the snapshot holds no stream")
    return record.stream


# --- the stream as files ---------------------------------------------------------------------


def write_dir(chunks: Iterable[bytes], directory: Path) -> DirRestore:
    """The stream as files under ``directory`` (created; it must not exist), the trailer
    checked at the end (IntegrityError: the files are incomplete)."""
    reader = StreamReader(chunks)
    header = reader.header
    if directory.exists():
        raise RefusedError(f"{directory} exists; restore wicked_db into another --target")
    directory.mkdir(parents=True)
    written = {"tables": 0, "rows": 0, "bytes": 0}
    for section, rows in reader.sections():
        with open(directory / f"{section.name}.csv", "xb") as out:
            written["rows"] += copy_text_to_csv(section, rows, out)
            written["bytes"] += out.tell()
        written["tables"] += 1
    reader.check_trailer()
    (directory / "schema.sql").write_text(schema_sql(header))
    (directory / "load.psql").write_text(load_psql(header))
    (directory / "sequences.json").write_text(
        json.dumps([s.to_json() for s in header.sequences], indent=2) + "\n")
    (directory / "meta.json").write_text(json.dumps(
        {"schema": header.schema, "server_version": header.server_version,
         "server_time": header.server_time, "meta": header.meta}, indent=2) + "\n")
    return DirRestore(STREAM_NAME, written, str(directory))


def _sql_list(statements: Iterable[str]) -> str:
    return "".join(s.rstrip().rstrip(";") + ";\n\n" for s in statements)


def _copy_lines(header: Header) -> str:
    return "".join(
        f"\\copy {_ident(s.name)} ({', '.join(_ident(c) for c in s.column_names)}) FROM "
        f"'{s.name}.csv' WITH (FORMAT csv, HEADER true)\n" for s in header.sections)


def schema_sql(header: Header) -> str:
    """The DDL for reading: pre_data, where the rows go, post_data."""
    return (f"-- wicked-dr: schema {header.schema} as of {header.server_time} (PostgreSQL "
            f"{header.server_version}).\n-- Schema-neutral: run with search_path set to the "
            "target schema. load.psql does all of it in one transaction.\n\n"
            "-- pre_data: functions, sequences, tables (no keys, no triggers)\n\n"
            + _sql_list(header.pre_data)
            + "-- Load the rows here, before post_data (no trigger exists yet, so none "
            "fires):\n" + "".join(f"--   {line}\n" for line in
                                 _copy_lines(header).splitlines())
            + "-- then the sequences' values (sequences.json) with setval.\n\n"
            "-- post_data: keys, foreign keys, indexes, triggers\n\n"
            + _sql_list(header.post_data))


def load_psql(header: Header, copy_lines: str | None = None,
              before_post_data: str = "") -> str:
    """A psql script that loads the directory into schema :schema (default: the snapshot's)
    in one transaction; run from inside the directory.

    The verify probe (wicked_db_probe.py) runs the same script with its own ``copy_lines``
    (the sections' COPY text files, ``copy_text_lines``) and its model checks as
    ``before_post_data``: after the rows, before the keys."""
    setvals = "".join(
        f"SELECT setval('{_ident(s.name)}', {s.last_value}, {str(s.is_called).lower()});\n"
        for s in header.sequences)
    copies = _copy_lines(header) if copy_lines is None else copy_lines
    return ("-- wicked-dr: load this directory by hand, in one transaction:\n"
            "--   cd <this directory> && psql -X \"$DSN\" -v schema=<target schema> -f "
            "load.psql\n-- The target schema must not exist.\n"
            "\\set ON_ERROR_STOP on\n"
            f"\\if :{{?schema}}\n\\else\n\\set schema {header.schema}\n\\endif\n"
            "BEGIN;\nCREATE SCHEMA :\"schema\";\n"
            "SET LOCAL search_path = :\"schema\", pg_catalog;\n"
            "SET LOCAL check_function_bodies = off;\n\n"
            + _sql_list(header.pre_data) + copies + "\n" + setvals + "\n"
            + before_post_data + _sql_list(header.post_data) + "COMMIT;\n")


def copy_text_lines(header: Header, path_of: Callable[[TableSection], str]) -> str:
    """psql ``\\copy`` lines loading each section's COPY text file ``path_of(section)``
    (the format the stream holds), in stream order."""
    return "".join(
        f"\\copy {_ident(s.name)} ({', '.join(_ident(c) for c in s.column_names)}) FROM "
        f"'{path_of(s)}'\n" for s in header.sections)


_PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")


def _ident(name: str) -> str:
    """``name`` as an SQL identifier (quoted unless plain lower case)."""
    return name if _PLAIN.match(name) else '"' + name.replace('"', '""') + '"'


# --- COPY text to CSV ----------------------------------------------------------------------

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if code[:1] == b"x":
        return bytes([int(code[1:], 16)])
    if code[:1].isdigit():
        return bytes([int(code, 8) & 0xFF])
    return _SIMPLE.get(code, code)


def csv_field(value: bytes) -> bytes:
    """One COPY text field as a CSV field: NULL (``\\N``) unquoted and empty, every value
    quoted, so that an empty string stays distinct from NULL (PostgreSQL's CSV rules)."""
    if value == b"\\N":
        return b""
    text = _ESCAPE.sub(_unescape, value)
    return b'"' + text.replace(b'"', b'""') + b'"'


def copy_text_to_csv(section: TableSection, rows: Iterable[bytes], out: IO[bytes]) -> int:
    """Write the section's COPY text rows as CSV with a header line; the rows written."""
    out.write(b",".join(csv_field(c.encode()) for c in section.column_names) + b"\n")
    count = 0
    for line in _lines(rows):
        # A tab in a value is escaped (\t): every raw tab separates fields.
        out.write(b",".join(csv_field(f) for f in line.split(b"\t")) + b"\n")
        count += 1
    return count


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        yield from lines
    if rest:
        raise IntegrityError("a wicked_db section ends inside a row")
