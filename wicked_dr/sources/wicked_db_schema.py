"""wicked's schema as schema-neutral DDL, read from the catalog (never written by hand).

wicked creates its schema from ``core.sql`` and migrates it with ``migration-N.sql``; a later
migration must be captured without a change here, so every statement comes from the server's
own deparsers (``pg_get_functiondef``, ``pg_get_constraintdef``, ``pg_get_indexdef``,
``pg_get_triggerdef``, ``pg_get_expr``, ``format_type``). They are called with
``search_path`` set to the schema (``set_search_path``), so they print the schema's own
objects unqualified and the statements land in whichever schema a restore sets as its
``search_path`` (``wicked``, or a staging schema for the live restore's swap).
``pg_get_functiondef`` always qualifies the function's own name: that one prefix is cut.

``pre_data`` is what must exist before rows load (functions, sequences, tables with columns,
types, NOT NULL and defaults); ``post_data`` what is created after them (keys, checks,
foreign keys, indexes, triggers, sequence ownership), so that no trigger fires while rows
load and the order of tables does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from wicked_dr.errors import SourceError
from wicked_dr.sources.wicked_db_stream import Column, TableSection

if TYPE_CHECKING:
    from wicked_dr.sources.pg_copy import Conn

MIN_SERVER_VERSION = 100000
# Objects a wicked schema does not hold and whose DDL this module does not read: refused,
# so that a schema that grew one is never backed up short of it.
_UNSUPPORTED_RELKINDS = {"v": "view", "m": "materialized view", "p": "partitioned table",
                         "f": "foreign table", "c": "composite type"}
# Constraints in the order they are added: keys before the foreign keys that need them.
_CONSTRAINT_ORDER = "CASE c.contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'x' THEN 2 " \
                    "WHEN 'c' THEN 3 ELSE 4 END"


@dataclass(frozen=True)
class SchemaDdl:
    """What the header says about the schema, besides sequence values and ``meta``."""

    pre_data: tuple[str, ...]
    post_data: tuple[str, ...]
    sections: tuple[TableSection, ...]
    sequences: tuple[str, ...]


def set_search_path(conn: Conn, schema: str) -> None:
    """The transaction's search_path: ``schema`` first, so deparsers print its objects
    unqualified and unqualified statements create them there."""
    conn.execute("SELECT set_config('search_path', %s, true)",
                 (f"{sql.Identifier(schema).as_string(conn)}, pg_catalog",))


def schema_oid(conn: Conn, schema: str) -> int | None:
    """The schema's oid; None when there is no such schema."""
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return int(str(row[0])) if row else None


def table_count(conn: Conn, namespace: int) -> int:
    """How many tables the schema holds."""
    row = conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = %s "
                       "AND relkind = 'r'", (namespace,)).fetchone()
    return int(str(row[0])) if row else 0


def server_version_num(conn: Conn) -> int:
    """``server_version_num`` (e.g. 160004); SourceError below PostgreSQL 10, whose catalog
    (no ``pg_sequence``) this module does not read."""
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    version = int(str(row[0])) if row else 0
    if version < MIN_SERVER_VERSION:
        raise SourceError(f"wicked's PostgreSQL server is version {version}; the wicked_db "
                          "backup reads the catalog of PostgreSQL 10 or newer")
    return version


def read_schema(conn: Conn, schema: str, namespace: int, version: int) -> SchemaDdl:
    """The schema's DDL and table sections; the caller has set the search_path."""
    generated = "a.attgenerated::text" if version >= 120000 else "''::text"
    # prokind came with PostgreSQL 11; before, aggregates and window functions were flags.
    plain_function = ("p.prokind IN ('f', 'p')" if version >= 110000
                      else "NOT p.proisagg AND NOT p.proiswindow")
    _refuse_unsupported(conn, schema, namespace, plain_function)
    sequences = _sequences(conn, namespace)
    tables = _tables(conn, namespace)
    pre = [*_functions(conn, namespace), *(stmt for _, stmt in sequences if stmt),
           *(_create_table(conn, oid, name, generated) for oid, name in tables)]
    post = [*_constraints(conn, namespace), *_indexes(conn, namespace),
            *_triggers(conn, namespace), *_sequence_owners(conn, namespace)]
    sections = tuple(_section(conn, oid, name, generated) for oid, name in tables)
    return SchemaDdl(tuple(pre), tuple(post), sections, tuple(name for name, _ in sequences))


def _refuse_unsupported(conn: Conn, schema: str, namespace: int, plain_function: str) -> None:
    rows = conn.execute(
        "SELECT relkind::text, relname FROM pg_class WHERE relnamespace = %s AND relkind = "
        "ANY(%s) UNION ALL SELECT 'type', typname FROM pg_type t WHERE typnamespace = %s "
        "AND typtype IN ('e', 'd', 'r', 'm') UNION ALL SELECT 'aggregate', p.proname FROM "
        f"pg_proc p WHERE pronamespace = %s AND NOT ({plain_function}) ORDER BY 2",
        (namespace, list(_UNSUPPORTED_RELKINDS), namespace, namespace)).fetchall()
    if rows:
        kind, name = str(rows[0][0]), str(rows[0][1])
        raise SourceError(f"schema {schema} holds {_UNSUPPORTED_RELKINDS.get(kind, kind)} "
                          f"{name}, which the wicked_db backup does not capture; wicked's "
                          "schema has none (was it changed by hand?)")


def _not_extension(alias: str, catalog: str) -> str:
    """SQL that leaves out objects an extension owns (the extension re-creates them)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass "
            f"AND d.objid = {alias}.oid AND d.deptype = 'e')")


def _functions(conn: Conn, namespace: int) -> list[str]:
    rows = conn.execute(
        "SELECT pg_get_functiondef(p.oid), quote_ident(n.nspname) || '.', "
        "quote_ident(p.proname) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE p.pronamespace = %s AND {_not_extension('p', 'pg_proc')} "
        "ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)",
        (namespace,)).fetchall()
    return [_unqualify_function(str(d), str(prefix), str(name)) for d, prefix, name in rows]


def _unqualify_function(definition: str, prefix: str, name: str) -> str:
    """``CREATE OR REPLACE FUNCTION wicked.f(...)`` -> ``... FUNCTION f(...)``: the one
    name ``pg_get_functiondef`` qualifies whatever the search_path."""
    head, newline, body = definition.partition("\n")
    qualified = prefix + name + "("
    if qualified not in head:
        raise SourceError(f"unexpected definition of function {name}: {head[:80]!r}")
    return head.replace(qualified, name + "(", 1) + newline + body.rstrip() + "\n"


# An identity column's sequence takes its type from the column: no AS there.
_SEQUENCE_OPTIONS = (
    "format('INCREMENT BY %%s MINVALUE %%s MAXVALUE %%s START WITH %%s CACHE %%s %%sCYCLE', "
    "s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqcache, "
    "CASE WHEN s.seqcycle THEN '' ELSE 'NO ' END)")


def _sequences(conn: Conn, namespace: int) -> list[tuple[str, str | None]]:
    """(name, CREATE SEQUENCE) of the schema's sequences, every one (their values are
    restored); an identity column's sequence is created by its table (None here)."""
    rows = conn.execute(
        "SELECT c.relname, quote_ident(c.relname) || ' AS ' || format_type(s.seqtypid, NULL), "
        f"{_SEQUENCE_OPTIONS}, EXISTS (SELECT 1 "
        "FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.deptype = 'i') FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid "
        f"WHERE c.relnamespace = %s AND {_not_extension('c', 'pg_class')} "
        "ORDER BY c.relname", (namespace,)).fetchall()
    return [(str(name), None if identity else f"CREATE SEQUENCE {ident} {options}")
            for name, ident, options, identity in rows]


def _identity_options(conn: Conn, oid: int, attnum: int) -> str:
    """An identity column's sequence: its name and options, as the column recreates it."""
    row = conn.execute(
        f"SELECT quote_ident(c.relname), {_SEQUENCE_OPTIONS} FROM pg_depend d JOIN pg_class c "
        "ON c.oid = d.objid JOIN pg_sequence s ON s.seqrelid = c.oid WHERE d.classid = "
        "'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s "
        "AND d.deptype = 'i'", (oid, attnum)).fetchone()
    return f" (SEQUENCE NAME {row[0]} {row[1]})" if row else ""


def _sequence_owners(conn: Conn, namespace: int) -> list[str]:
    rows = conn.execute(
        "SELECT format('ALTER SEQUENCE %%I OWNED BY %%I.%%I', s.relname, t.relname, "
        "a.attname) FROM pg_class s JOIN pg_depend d ON d.classid = 'pg_class'::regclass "
        "AND d.objid = s.oid AND d.deptype = 'a' AND d.refclassid = 'pg_class'::regclass "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_attribute a ON a.attrelid = t.oid "
        "AND a.attnum = d.refobjsubid WHERE s.relnamespace = %s AND s.relkind = 'S' "
        "ORDER BY s.relname", (namespace,)).fetchall()
    return [str(r[0]) for r in rows]


def _tables(conn: Conn, namespace: int) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT c.oid, c.relname FROM pg_class c WHERE c.relnamespace = %s AND "
        f"c.relkind = 'r' AND {_not_extension('c', 'pg_class')} ORDER BY c.relname",
        (namespace,)).fetchall()
    return [(int(str(oid)), str(name)) for oid, name in rows]


def _create_table(conn: Conn, oid: int, name: str, generated: str) -> str:
    rows = conn.execute(
        "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        f"pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, {generated}, a.attnum "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
        "AND d.adnum = a.attnum WHERE a.attrelid = %s AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum", (oid,)).fetchall()
    columns = []
    for ident, typ, not_null, default, identity, generated, attnum in rows:
        column = f"    {ident} {typ}"
        if generated == "s":
            column += f" GENERATED ALWAYS AS ({default}) STORED"
        elif default is not None:
            column += f" DEFAULT {default}"
        if identity in ("a", "d"):
            column += (f" GENERATED {'ALWAYS' if identity == 'a' else 'BY DEFAULT'} AS IDENTITY"
                       + _identity_options(conn, oid, int(str(attnum))))
        if not_null:
            column += " NOT NULL"
        columns.append(column)
    row = conn.execute("SELECT quote_ident(%s)", (name,)).fetchone()
    return f"CREATE TABLE {row[0] if row else name} (\n" + ",\n".join(columns) + "\n)"


def _constraints(conn: Conn, namespace: int) -> list[str]:
    rows = conn.execute(
        "SELECT format('ALTER TABLE ONLY %%I ADD CONSTRAINT %%I ', t.relname, c.conname) "
        "|| pg_get_constraintdef(c.oid, true) FROM pg_constraint c JOIN pg_class t "
        "ON t.oid = c.conrelid WHERE t.relnamespace = %s AND t.relkind = 'r' "
        f"AND c.contype IN ('p', 'u', 'x', 'c', 'f') ORDER BY {_CONSTRAINT_ORDER}, "
        "t.relname, c.conname", (namespace,)).fetchall()
    return [str(r[0]) for r in rows]


def _indexes(conn: Conn, namespace: int) -> list[str]:
    """Indexes that back no constraint (those come with their constraint)."""
    rows = conn.execute(
        "SELECT pg_get_indexdef(i.indexrelid, 0, true) FROM pg_index i JOIN pg_class t "
        "ON t.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid "
        "WHERE t.relnamespace = %s AND t.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM "
        "pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "AND c.contype IN ('p', 'u', 'x')) ORDER BY x.relname", (namespace,)).fetchall()
    return [str(r[0]) for r in rows]


def _triggers(conn: Conn, namespace: int) -> list[str]:
    rows = conn.execute(
        "SELECT pg_get_triggerdef(g.oid, true) FROM pg_trigger g JOIN pg_class t "
        "ON t.oid = g.tgrelid WHERE t.relnamespace = %s AND NOT g.tgisinternal "
        "ORDER BY t.relname, g.tgname", (namespace,)).fetchall()
    return [str(r[0]) for r in rows]


def _section(conn: Conn, oid: int, name: str, generated: str) -> TableSection:
    """The table's streamed columns (generated ones are computed again on load) and its
    order: the primary key, or every column when it has none."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
        f"AND {generated} = '' ORDER BY a.attnum", (oid,)).fetchall()
    columns = tuple(Column(str(n), str(t)) for n, t in rows)
    keys = conn.execute(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH "
        "ORDINALITY AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = k.attnum WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
        (oid,)).fetchall()
    order_by = tuple(str(k[0]) for k in keys) or tuple(c.name for c in columns)
    return TableSection(name, columns, order_by)
