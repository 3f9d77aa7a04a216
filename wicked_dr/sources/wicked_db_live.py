"""wicked_db's part of ``restore --live``: the snapshot loaded into a staging schema beside
the live one, then swapped in by renaming schemas in one transaction while portal-api is
stopped.

Names, for a restore id ``r`` and ``wicked_db.schema`` ``s`` (``restore_id`` made a lowercase
identifier)::

    s_restore_r       the staging schema: the snapshot loaded and checked (wicked_db_load.py:
                      one transaction, no trigger fires, trailer rows and SHA-256 checked,
                      pending mailer/chatbot events emptied)
    s_pre_restore_r   the live schema after the swap: the pre-restore copy, kept
    s_discard_r       the restored schema after an undo, dropped when the undo is done

The swap and the undo are each one transaction of two ``ALTER SCHEMA ... RENAME``: a crash
leaves either side whole, never a half swap. Both are judged from which schemas exist, not
from the journal alone, so a repeated swap or undo after a crash finishes what the first
one did or finds nothing to do. A lost live schema (the database was wiped) is fine: the
staging schema just becomes the live one.

Guards, before anything is written: the snapshot's migration state (``meta`` ``version``)
must not be newer than the live one (``--allow-newer-data``), the restoring role must own
the live schema (portal-api connects as that owner: objects it did not create would be
someone else's), and a different static configuration (``config_hash``) is a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from wicked_dr.config import WickedDbConfig
from wicked_dr.errors import DatabaseError, RefusedError
from wicked_dr.log import get_logger
from wicked_dr.sources.base import LiveSettings, LiveState, SnapshotReader
from wicked_dr.sources.pg_copy import one_line
from wicked_dr.sources.wicked_db_export import connect
from wicked_dr.sources.wicked_db_load import load_into_schema
from wicked_dr.sources.wicked_db_schema import schema_oid
from wicked_dr.sources.wicked_db_stream import StreamReader

if TYPE_CHECKING:
    from wicked_dr.repository.snapshot import StreamRef
    from wicked_dr.sources.pg_copy import Conn

log = get_logger("wicked_dr.sources.wicked_db")
LIVE_APP = "wicked-dr restore --live"


@dataclass(frozen=True)
class Schemas:
    """The schema names of one live restore (JSON-able, kept in the journal)."""

    live: str
    staging: str
    pre_restore: str
    discard: str

    @classmethod
    def of(cls, schema: str, restore_id: str) -> Schemas:
        suffix = re.sub(r"[^a-z0-9]+", "_", restore_id.lower()).strip("_")
        return cls(schema, f"{schema}_restore_{suffix}", f"{schema}_pre_restore_{suffix}",
                   f"{schema}_discard_{suffix}")

    def to_json(self) -> dict[str, str]:
        return {"live": self.live, "staging": self.staging, "pre_restore": self.pre_restore,
                "discard": self.discard}

    @classmethod
    def from_state(cls, state: LiveState) -> Schemas:
        names = state.get()["schemas"]
        return cls(names["live"], names["staging"], names["pre_restore"], names["discard"])


# --- guard --------------------------------------------------------------------------------


def live_guard(config: WickedDbConfig, reader: SnapshotReader, stream: StreamRef,
               settings: LiveSettings, state: LiveState) -> dict[str, Any]:
    """Refuse what must not go live (see the module docstring); record the names."""
    _require_configured(config)
    header = _header(reader, stream)
    names = Schemas.of(config.schema, settings.restore_id)
    with _session(config, "check") as conn:
        live = _live_facts(conn, config.schema)
    warnings = _config_warning(header.meta, live.get("meta") or {})
    _guard_version(header.meta, live, allow_newer=settings.allow_newer)
    state.put(schemas=names.to_json(), live_existed=live["exists"])
    return {"schema": config.schema, "staging_schema": names.staging,
            "snapshot_version": header.meta.get("version"),
            "live_version": (live.get("meta") or {}).get("version"),
            "live_exists": live["exists"], "tables": len(header.sections),
            "warnings": warnings}


def _header(reader: SnapshotReader, stream: StreamRef) -> Any:
    chunks = reader.stream(stream)
    try:
        return StreamReader(chunks).header
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _live_facts(conn: Conn, schema: str) -> dict[str, Any]:
    """Whether the live schema exists, who owns it, who we are, and its ``meta`` row 1."""
    row = conn.execute("SELECT pg_get_userbyid(nspowner), current_user FROM pg_namespace "
                       "WHERE nspname = %s", (schema,)).fetchone()
    if row is None:
        return {"exists": False}
    facts: dict[str, Any] = {"exists": True, "owner": str(row[0]), "me": str(row[1])}
    meta = conn.execute(sql.SQL("SELECT data FROM {}.meta WHERE id = 1").format(
        sql.Identifier(schema))).fetchone() if _has_meta(conn, schema) else None
    facts["meta"] = meta[0] if meta and isinstance(meta[0], dict) else {}
    if facts["owner"] != facts["me"]:
        raise RefusedError(
            f"wicked_db.dsn connects as {facts['me']}, but schema {schema} is owned by "
            f"{facts['owner']} (portal-api's role): a restore by another role would leave "
            "portal-api objects it cannot use; connect as the owner")
    return facts


def _has_meta(conn: Conn, schema: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                       (f"{sql.Identifier(schema).as_string(conn)}.meta",)).fetchone()
    return bool(row and row[0])


def _guard_version(snapshot_meta: dict[str, Any], live: dict[str, Any], *,
                   allow_newer: bool) -> None:
    """A snapshot of a later migration than the live portal-api knows is refused: that
    portal-api would run on a schema it does not understand."""
    theirs, ours = snapshot_meta.get("version"), (live.get("meta") or {}).get("version")
    if not isinstance(theirs, int) or not isinstance(ours, int) or theirs <= ours:
        return
    if allow_newer:
        log.warning("restoring a schema of a later migration than the live one",
                    snapshot_version=theirs, live_version=ours)
        return
    raise RefusedError(f"the snapshot's wicked schema is at migration {theirs}, the live one "
                       f"at {ours}: the running portal-api may not understand it; upgrade "
                       "portal-api first, or pass --allow-newer-data")


def _config_warning(snapshot_meta: dict[str, Any], live_meta: dict[str, Any]) -> list[str]:
    """The static configuration the data was written with (``config_hash``) differs from
    the live one: PORTAL_API_AESKEY may differ, and encrypted values would not decrypt."""
    theirs = (snapshot_meta.get("config_hash") or {}).get("hash")
    ours = (live_meta.get("config_hash") or {}).get("hash")
    if theirs and ours and theirs != ours:
        text = (f"the snapshot was written with static configuration {theirs}, the live "
                f"portal with {ours}: check that PORTAL_API_AESKEY is the same, or "
                "encrypted values (API keys, client secrets) will not decrypt")
        log.warning("static configuration differs", snapshot=theirs, live=ours)
        return [text]
    return []


# --- stage, swap, undo, finish -----------------------------------------------------------------


def stage_live(config: WickedDbConfig, reader: SnapshotReader, stream: StreamRef,
               settings: LiveSettings, state: LiveState) -> dict[str, Any]:
    """The snapshot loaded into the staging schema and checked there (one transaction:
    a failure or a kill leaves no staging schema); nothing live changes."""
    names = Schemas.from_state(state)
    report = load_into_schema(config, reader.stream(stream), names.staging,
                              empty_queues=settings.empty_queues)
    state.put(staged=True)
    return {"staging_schema": names.staging, "rows": sum(report.rows.values()),
            "tables": len(report.rows), "emptied": report.emptied}


def swap_live(config: WickedDbConfig, state: LiveState) -> dict[str, Any]:
    """Live schema -> pre-restore copy, staging -> live, in one transaction."""
    names = Schemas.from_state(state)
    with _session(config, "swap") as conn, conn.transaction():
        live, staging = _exists(conn, names.live), _exists(conn, names.staging)
        pre = _exists(conn, names.pre_restore)
        if not staging and live and (pre or not state.get().get("live_existed", True)):
            log.info("schemas already swapped", live=names.live)
        elif not staging:
            raise DatabaseError(f"the staging schema {names.staging} is gone; nothing to "
                                "swap in")
        else:
            if live:
                _rename(conn, names.live, names.pre_restore)
            _rename(conn, names.staging, names.live)
    state.put(swapped=True)
    copy = names.pre_restore if state.get().get("live_existed", True) else None
    return {"schema": names.live, "pre_restore_schema": copy}


def undo_live(config: WickedDbConfig, state: LiveState) -> dict[str, Any]:
    """Put the pre-restore copy back as the live schema (one transaction); the restored
    one is dropped."""
    names = Schemas.from_state(state)
    with _session(config, "undo") as conn, conn.transaction():
        if _exists(conn, names.pre_restore):
            if _exists(conn, names.live):
                _rename(conn, names.live, names.discard)
            _rename(conn, names.pre_restore, names.live)
        elif not state.get().get("live_existed", True) and _exists(conn, names.live):
            _rename(conn, names.live, names.discard)  # there was no live schema before
        _drop(conn, names.discard)
        _drop(conn, names.staging)
    state.put(swapped=False, undone=True)
    return {"schema": names.live, "restored": "pre-restore copy put back"}


def finish_live(config: WickedDbConfig, state: LiveState) -> dict[str, Any]:
    """Drop what staging left (after a refusal, or nothing after a swap); the pre-restore
    copy is kept for the operator to drop once satisfied."""
    fields = state.get()
    if "schemas" not in fields:
        return {}
    names = Schemas.from_state(state)
    with _session(config, "tidy") as conn, conn.transaction():
        _drop(conn, names.staging)
        _drop(conn, names.discard)
        kept = names.pre_restore if _exists(conn, names.pre_restore) else None
    return {"pre_restore_schema": kept,
            "drop_when_satisfied": f'DROP SCHEMA "{kept}" CASCADE' if kept else None}


# --- sessions and statements --------------------------------------------------------------------


@contextmanager
def _session(config: WickedDbConfig, doing: str) -> Iterator[Conn]:
    conn = connect(config, LIVE_APP, doing)
    try:
        yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"restore --live could not {doing} wicked's schema: "
                            f"{one_line(exc)}") from None
    finally:
        conn.close()


def _exists(conn: Conn, schema: str) -> bool:
    return schema_oid(conn, schema) is not None


def _rename(conn: Conn, old: str, new: str) -> None:
    conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old),
                                                               sql.Identifier(new)))
    log.info("schema renamed", old=old, new=new)


def _drop(conn: Conn, schema: str) -> None:
    if _exists(conn, schema):
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        log.info("schema dropped", schema=schema)


def _require_configured(config: WickedDbConfig) -> None:
    if not config.configured:
        raise RefusedError("the snapshot holds wicked's database (wicked_db), but "
                           "wicked_db.dsn is not set: set it to restore it live, or leave "
                           "it out with 'restore --target DIR --source volume'")
