"""The ``wicked_db`` stream format, as the export writes it and the loader and probe read it.

A JSON header line (the schema's DDL, sequence values, ``meta``, one section per table), one
COPY text section per table each ended by COPY's end-of-data marker, a JSON trailer with
each section's row count and SHA-256 (docs/format-wicked-db.md). The shape is the one
kong_tokens uses (``pg_copy.py``); this module holds what is wicked_db's: the header's
fields, checked before any name reaches SQL, and the trailer's check. Nothing here talks to
a database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wicked_dr.errors import IntegrityError
from wicked_dr.sources import pg_copy
from wicked_dr.sources.pg_copy import END_OF_DATA as END_OF_DATA
from wicked_dr.sources.pg_copy import SectionReader
from wicked_dr.sources.pg_copy import json_line as json_line

STREAM_NAME = "wicked_db"  # the source, and its stream in a snapshot
FORMAT = "wicked-dr/wicked-db"
VERSION = 1
ENCODING = "postgresql-copy-text"
_LABEL = "wicked_db stream"
# A name the header gives goes into SQL quoted (sql.Identifier); it must still be a plain
# PostgreSQL name, so that a damaged header cannot name something unexpected.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


@dataclass(frozen=True)
class Column:
    """One column as the catalog describes it (``type`` is ``format_type`` output)."""

    name: str
    type: str


@dataclass(frozen=True)
class TableSection:
    """One table's section: the columns it streams and the order its rows are in."""

    name: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in stream order."""
        return tuple(c.name for c in self.columns)

    def to_json(self) -> dict[str, Any]:
        """The section's entry in the header."""
        return {"name": self.name, "columns": [{"name": c.name, "type": c.type}
                                               for c in self.columns],
                "order_by": list(self.order_by)}


@dataclass(frozen=True)
class Sequence:
    """A sequence's value at the snapshot (``setval(name, last_value, is_called)``)."""

    name: str
    last_value: int
    is_called: bool

    def to_json(self) -> dict[str, Any]:
        """The sequence's entry in the header."""
        return {"name": self.name, "last_value": self.last_value, "is_called": self.is_called}


@dataclass(frozen=True)
class Header:
    """What the header line holds."""

    schema: str
    server_version: str
    server_time: str
    meta: dict[str, Any]
    pre_data: tuple[str, ...]
    post_data: tuple[str, ...]
    sequences: tuple[Sequence, ...]
    sections: tuple[TableSection, ...]

    def to_json(self) -> dict[str, Any]:
        """The header line's document."""
        return {"format": FORMAT, "version": VERSION, "encoding": ENCODING,
                "schema": self.schema, "server_version": self.server_version,
                "server_time": self.server_time, "meta": self.meta,
                "pre_data": list(self.pre_data), "post_data": list(self.post_data),
                "sequences": [s.to_json() for s in self.sequences],
                "sections": [s.to_json() for s in self.sections]}


@dataclass
class SectionDigest:
    """Rows and SHA-256 of a section's bytes (without its end-of-data line), as they pass."""

    rows: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)

    def update(self, chunk: bytes) -> None:
        """Count and hash ``chunk`` (whole COPY text rows or a part of them)."""
        self._hash.update(chunk)
        # COPY text escapes newlines inside values: each b"\n" ends a row.
        self.rows += chunk.count(b"\n")

    @property
    def sha256(self) -> str:
        """The hex digest so far."""
        return str(self._hash.hexdigest())


def trailer_doc(digests: dict[str, SectionDigest]) -> dict[str, Any]:
    """The trailer line's document."""
    return {"rows": {name: d.rows for name, d in digests.items()},
            "sha256": {name: d.sha256 for name, d in digests.items()}}


# --- reading -----------------------------------------------------------------------------


def parse_header(doc: dict[str, Any]) -> Header:
    """The header a document declares; IntegrityError for anything this version cannot read
    or that is not safe to hand to SQL."""
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise IntegrityError(f"unsupported wicked_db stream {doc.get('format')!r} version "
                             f"{doc.get('version')!r}; expected {FORMAT} version {VERSION}")
    if doc.get("encoding") != ENCODING:
        raise IntegrityError(f"the wicked_db stream's encoding {doc.get('encoding')!r} is "
                             f"not {ENCODING}")
    sections = tuple(_section(entry) for entry in _list(doc, "sections"))
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        raise IntegrityError("the wicked_db stream's header repeats a section")
    meta = doc.get("meta")
    return Header(
        schema=_name(doc.get("schema"), "schema"),
        server_version=str(doc.get("server_version", "")),
        server_time=str(doc.get("server_time", "")),
        meta=meta if isinstance(meta, dict) else {},
        pre_data=tuple(_statements(doc, "pre_data")),
        post_data=tuple(_statements(doc, "post_data")),
        sequences=tuple(_sequence(entry) for entry in _list(doc, "sequences")),
        sections=sections)


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise IntegrityError(f"the wicked_db stream's header has no list {key!r}")
    return value


def _statements(doc: dict[str, Any], key: str) -> list[str]:
    value = _list(doc, key)
    if not all(isinstance(s, str) and s.strip() for s in value):
        raise IntegrityError(f"the wicked_db stream's {key} holds something not SQL text")
    return [str(s) for s in value]


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise IntegrityError(f"the wicked_db stream's header has a bad {what} name {value!r}")
    return value


def _section(entry: Any) -> TableSection:
    if not isinstance(entry, dict):
        raise IntegrityError("the wicked_db stream's header has a section that is no object")
    name = _name(entry.get("name"), "table")
    columns = tuple(_column(c, name) for c in entry.get("columns") or [])
    order_by = tuple(_name(c, "order_by column") for c in entry.get("order_by") or [])
    if not columns or not set(order_by) <= {c.name for c in columns}:
        raise IntegrityError(f"the wicked_db stream's section {name} has no columns or "
                             "orders by a column it lacks")
    return TableSection(name, columns, order_by)


def _column(entry: Any, table: str) -> Column:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise IntegrityError(f"the wicked_db stream's section {table} has a bad column")
    return Column(_name(entry.get("name"), f"{table} column"), str(entry["type"]))


def _sequence(entry: Any) -> Sequence:
    if not isinstance(entry, dict) or not isinstance(entry.get("last_value"), int) \
            or not isinstance(entry.get("is_called"), bool):
        raise IntegrityError("the wicked_db stream's header has a bad sequence entry")
    return Sequence(_name(entry.get("name"), "sequence"), int(entry["last_value"]),
                    bool(entry["is_called"]))


class StreamReader:
    """A ``wicked_db`` stream read in order: ``header``, then ``sections()`` (each table's
    COPY text, hashed and counted as it passes), then ``check_trailer()``."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        doc, data = pg_copy.split_header(chunks, _LABEL, STREAM_NAME)
        self.header = parse_header(doc)
        self._reader = SectionReader(data, marked=True, label=_LABEL, name=STREAM_NAME)
        self.digests: dict[str, SectionDigest] = {}

    def sections(self) -> Iterator[tuple[TableSection, Iterator[bytes]]]:
        """Each section with its rows; a section's rows must be consumed before the next
        (they are read from one stream)."""
        for section in self.header.sections:
            digest = self.digests[section.name] = SectionDigest()
            yield section, _digested(self._reader.section(), digest)

    def check_trailer(self) -> dict[str, Any]:
        """Compare the trailer with what passed; IntegrityError naming the first section
        whose rows or bytes differ. The trailer's document when all agree."""
        trailer = self._reader.trailer()
        rows, sums = trailer.get("rows"), trailer.get("sha256")
        if not isinstance(rows, dict) or not isinstance(sums, dict):
            raise IntegrityError("the wicked_db stream's trailer lacks rows or sha256")
        if set(rows) != set(self.digests) or set(sums) != set(self.digests):
            raise IntegrityError("the wicked_db stream's trailer names other sections than "
                                 "its header")
        for name, digest in self.digests.items():
            if rows[name] != digest.rows or sums[name] != digest.sha256:
                raise IntegrityError(
                    f"the wicked_db stream's section {name} does not match its trailer "
                    f"({digest.rows} rows read, {rows[name]} declared; sha256 "
                    f"{'differs' if sums[name] != digest.sha256 else 'agrees'})")
        return trailer


def _digested(rows: Iterator[bytes], digest: SectionDigest) -> Iterator[bytes]:
    for chunk in rows:
        digest.update(chunk)
        yield chunk
