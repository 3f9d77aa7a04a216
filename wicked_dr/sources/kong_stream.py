"""The ``kong_tokens`` stream format, as the export writes it and the restore reads it back.

A JSON header line, COPY text sections each ended by COPY's end-of-data marker, a JSON
trailer with the row counts (docs/format-kong-tokens.md). Both sides share the names and
constants here, so that a stream written by one version is read by the next; the reading
side also checks everything the header claims before any of it reaches SQL (column names
and types go into statements). Nothing here talks to a database.

Versions 1 and 2 held the tokens already joined with the names re-attaching needs, in one
section; version 3 holds the tables unjoined. All three are read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from wicked_dr.errors import IntegrityError
from wicked_dr.sources import pg_copy
from wicked_dr.sources.kong_schema import SAFE_TYPE, Column

# The stream shape is shared with wicked_db (pg_copy.py); its names stay importable here.
from wicked_dr.sources.pg_copy import END_OF_DATA as END_OF_DATA
from wicked_dr.sources.pg_copy import SectionReader as SectionReader
from wicked_dr.sources.pg_copy import json_line as json_line

FORMAT = "wicked-dr/kong-tokens"
VERSION = 3
# Version 1 carried the row count in the header (it cost a second pass over the join);
# version 2 held one joined COPY section; version 3 holds the tables unjoined.
READABLE_VERSIONS = (1, 2, 3)
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
# Versions 1 and 2 held one section, the tokens already joined, staged under this name.
JOINED = "joined"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Section:
    """One COPY section of a version 3 stream: some columns of one table."""

    name: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in stream order."""
        return tuple(c.name for c in self.columns)


def joined_columns(sections: list[Section]) -> list[Column]:
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


def split_header(chunks: Iterable[bytes]) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The parsed first line, and the COPY text data after it."""
    return pg_copy.split_header(chunks, "token stream", "kong_tokens")


@dataclass(frozen=True)
class Layout:
    """How a stream's data is laid out, from its header."""

    version: int
    sections: tuple[Section, ...]
    # The columns of one token as the plan reads it (version 2's joined layout).
    token_columns: tuple[Column, ...]
    header_rows: int | None = None  # version 1 only


def parse_layout(header: dict[str, Any]) -> Layout:
    """The layout a header declares; IntegrityError for anything this version cannot read."""
    version = header.get("version")
    if header.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise IntegrityError(f"unsupported token stream {header.get('format')!r} version "
                             f"{version!r}; expected {FORMAT} version "
                             f"{' or '.join(map(str, READABLE_VERSIONS))}")
    if version == 3:
        sections = _v3_sections(header)
        return Layout(3, sections, tuple(joined_columns(list(sections))))
    columns = _columns(header.get("columns"), "the token stream's header")
    _require_columns(columns, ("id", "access_token", CLIENT_ID.name), "the token stream")
    rows = header.get("rows")
    if version == 1 and not isinstance(rows, int):
        raise IntegrityError("the token stream's header has no row count")
    return Layout(int(version), (Section(JOINED, columns),), columns,
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


def declared_rows(layout: Layout, reader: SectionReader) -> dict[str, int]:
    """Rows per section as the stream declares them (read after the last section)."""
    if layout.header_rows is not None:
        return {JOINED: layout.header_rows}
    rows = reader.trailer()["rows"]
    if layout.version == 2:
        rows = {JOINED: rows}
    if not isinstance(rows, dict) or not all(
            isinstance(rows.get(s.name), int) for s in layout.sections):
        raise IntegrityError("the token stream's trailer lacks a row count per section")
    return {s.name: int(rows[s.name]) for s in layout.sections}
