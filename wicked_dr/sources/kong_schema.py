"""Which Kong schema generation a PostgreSQL database holds, read from the catalog.

Kong's OAuth2 token table changed shape over the years (see wicked-facts.md):

* 0.11: ``api_id``, no ``service_id``; expiry in the separate ``ttls`` table;
* 0.14: as 0.11 plus ``service_id``;
* 1.x:  no ``api_id``; a ``ttl`` column;
* 2.x:  plus ``ws_id`` (workspaces) and per-workspace composite keys;
* 3.x:  as 2.x plus an insert trigger that deletes expired rows.

We never assume a column: callers use ``KongSchema.token_columns`` exactly as found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import psycopg

from wicked_dr.errors import SourceError

Generation = Literal["0.11", "0.14", "1.x", "2.x", "3.x"]

TOKENS = "oauth2_tokens"
CREDENTIALS = "oauth2_credentials"
# Tables whose presence says "this is Kong's database" at all.
_KONG_MARKERS = ("consumers", CREDENTIALS, TOKENS)
_ALL_TABLES = ("consumers", CREDENTIALS, TOKENS, "services", "apis", "ttls", "workspaces")
_TTL_TRIGGER = "oauth2_tokens_ttl_trigger"
# format_type() output we accept as a column type when we re-create it (a temp table on
# restore): words, an optional (n[,m]) and an optional []; nothing that could end a statement.
SAFE_TYPE = re.compile(r"^[a-z][a-z ]*(\(\d+(,\d+)?\))?(\[\])?$")


@dataclass(frozen=True)
class Column:
    """One column as the catalog describes it (``type`` is ``format_type`` output)."""

    name: str
    type: str


@dataclass(frozen=True)
class KongSchema:
    """What restore and backup need to know about one Kong database."""

    generation: Generation
    token_columns: tuple[Column, ...]
    tables: frozenset[str]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Token column names in catalog order."""
        return tuple(c.name for c in self.token_columns)

    def has(self, column: str) -> bool:
        """Whether ``oauth2_tokens`` has ``column``."""
        return column in self.column_names

    @property
    def uses_ttls_table(self) -> bool:
        """Kong 0.x keeps token expiry in the separate ``ttls`` table."""
        return self.generation in ("0.11", "0.14")

    @property
    def uses_workspaces(self) -> bool:
        """Kong 2.x and 3.x key every row by workspace (``ws_id``)."""
        return self.generation in ("2.x", "3.x")


def detect_schema(conn: psycopg.Connection[tuple[object, ...]]) -> KongSchema:
    """Read the catalog and name the generation; SourceError says what is missing."""
    database = _current_database(conn)
    tables = _present_tables(conn)
    if not tables.intersection(_KONG_MARKERS):
        raise SourceError(
            f"database {database!r} is not a Kong database: no table consumers, "
            f"oauth2_credentials or oauth2_tokens; check kong_tokens.dsn")
    for needed in (TOKENS, CREDENTIALS):
        if needed not in tables:
            raise SourceError(
                f"Kong database {database!r} has no table {needed}: the oauth2 plugin's "
                "migrations have not run there (kong migrations up)")
    columns = table_columns(conn, TOKENS)
    generation = _generation(conn, {c.name for c in columns})
    _require_tables(database, generation, tables, {c.name for c in columns})
    return KongSchema(generation=generation, token_columns=columns, tables=frozenset(tables))


def _current_database(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    return str(row[0]) if row else "?"


def _present_tables(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    # to_regclass follows search_path, as Kong does (its pg_schema setting sets it).
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
        (list(_ALL_TABLES),)).fetchall()
    return {str(r[0]) for r in rows}


def table_columns(conn: psycopg.Connection[tuple[object, ...]],
                  table: str) -> tuple[Column, ...]:
    """``table``'s columns in catalog order (empty when there is no such table)."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(quote_ident(%s)) AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum", (table,)).fetchall()
    return tuple(Column(str(name), str(typ)) for name, typ in rows)


def _generation(conn: psycopg.Connection[tuple[object, ...]], names: set[str]) -> Generation:
    if "ws_id" in names:
        return "3.x" if _has_ttl_trigger(conn) else "2.x"
    if "ttl" in names:
        return "1.x"
    if "api_id" in names:
        return "0.14" if "service_id" in names else "0.11"
    missing = sorted({"id", "credential_id", "access_token"} - names) or ["ttl or api_id"]
    raise SourceError(
        f"oauth2_tokens has an unknown layout (no column {', '.join(missing)}); "
        "supported are Kong 0.11, 0.14, 1.x, 2.x and 3.x")


def _has_ttl_trigger(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
        "AND tgname = %s)", (TOKENS, _TTL_TRIGGER)).fetchone()
    return bool(row and row[0])


def _require_tables(database: str, generation: Generation, tables: set[str],
                    names: set[str]) -> None:
    needed: list[str] = []
    if "service_id" in names:
        needed.append("services")
    if "api_id" in names:
        needed.append("apis")
    if generation in ("0.11", "0.14"):
        needed.append("ttls")
    if generation in ("2.x", "3.x"):
        needed.append("workspaces")
    missing = [t for t in needed if t not in tables]
    if missing:
        raise SourceError(
            f"Kong {generation} database {database!r} has no table {', '.join(missing)}; "
            "its migrations are incomplete (kong migrations up)")
