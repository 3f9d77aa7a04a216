"""The wicked_db source without a database: its stream format, the CSV files of restore
--target, its configuration, the volume guard's words and the registry's order."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from wicked_dr.config import ConfigError, load_config
from wicked_dr.errors import IntegrityError, RefusedError
from wicked_dr.sources import REGISTRY, configured_sources
from wicked_dr.sources.pg_copy import END_OF_DATA, json_line
from wicked_dr.sources.volume import VolumeSource
from wicked_dr.sources.wicked_db import copy_text_to_csv, csv_field
from wicked_dr.sources.wicked_db_stream import (
    FORMAT,
    Column,
    SectionDigest,
    StreamReader,
    TableSection,
    parse_header,
    trailer_doc,
)

USERS = [b"u1\ta@example.com\t\\N\t{\"a\": 1}\n", b"u2\tb@example.com\t\t{}\n"]
EVENTS: list[bytes] = []


def _header(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT, "version": 1, "encoding": "postgresql-copy-text",
        "schema": "wicked", "server_version": "16.4", "server_time": "2026-11-30T00:00:00Z",
        "meta": {"version": 6}, "pre_data": ["CREATE TABLE users (id text)"],
        "post_data": [], "sequences": [{"name": "s", "last_value": 3, "is_called": True}],
        "sections": [
            {"name": "users", "columns": [{"name": n, "type": "text"} for n in
                                          ("id", "email", "custom_id", "data")],
             "order_by": ["id"]},
            {"name": "webhook_events", "columns": [{"name": "id", "type": "text"}],
             "order_by": ["id"]}]}
    doc.update(overrides)
    return doc


def _stream(header: dict[str, Any] | None = None, users: list[bytes] = USERS) -> bytes:
    digests = {"users": SectionDigest(), "webhook_events": SectionDigest()}
    digests["users"].update(b"".join(USERS))
    return (json_line(header or _header()) + b"".join(users) + END_OF_DATA
            + b"".join(EVENTS) + END_OF_DATA + json_line(trailer_doc(digests)))


def _read(data: bytes, chunk: int = 7) -> dict[str, bytes]:
    reader = StreamReader(data[i:i + chunk] for i in range(0, len(data), chunk))
    sections = {s.name: b"".join(rows) for s, rows in reader.sections()}
    reader.check_trailer()
    return sections


def test_stream_read_in_small_chunks_gives_each_section_and_checks_the_trailer() -> None:
    assert _read(_stream()) == {"users": b"".join(USERS), "webhook_events": b""}


def test_stream_with_a_changed_row_fails_its_trailer() -> None:
    changed = [USERS[0], USERS[1].replace(b"b@", b"c@")]
    with pytest.raises(IntegrityError, match="section users does not match its trailer"):
        _read(_stream(users=changed))


def test_stream_cut_before_the_trailer_is_truncated() -> None:
    data = _stream()
    with pytest.raises(IntegrityError, match="truncated"):
        _read(data[:data.rindex(END_OF_DATA) + len(END_OF_DATA)])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"format": "wicked-dr/kong-tokens"}, "unsupported wicked_db stream"),
    ({"version": 2}, "unsupported wicked_db stream"),
    ({"schema": "wicked; DROP"}, "bad schema name"),
    ({"sections": [{"name": "users\"x", "columns": [{"name": "id", "type": "text"}]}]},
     "bad table name"),
    ({"sections": [{"name": "users", "columns": [{"name": "id", "type": "text"}],
                    "order_by": ["nope"]}]}, "orders by a column it lacks"),
    ({"pre_data": [""]}, "not SQL text"),
    ({"sequences": [{"name": "s", "last_value": "3", "is_called": True}]}, "bad sequence"),
])
def test_header_refused_before_any_name_reaches_sql(overrides: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        parse_header(_header(**overrides))


def test_copy_text_becomes_csv_with_null_distinct_from_empty() -> None:
    section = TableSection("t", (Column("id", "text"), Column("v", "text")), ("id",))
    rows = [b"1\ttab\\there\\nnewline \\\\ \"q\", \\x41\\101\n", b"2\t\\N\n", b"3\t\n"]
    out = io.BytesIO()
    assert copy_text_to_csv(section, [b"".join(rows)[:5], b"".join(rows)[5:]], out) == 3
    assert out.getvalue().decode() == (
        '"id","v"\n"1","tab\there\nnewline \\ ""q"", AA"\n"2",\n"3",""\n')
    assert csv_field(b"\\N") == b""


def _config(tmp_path: Path, doc: dict[str, Any]) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(doc))
    return load_config(path, {})


def test_volume_path_null_needs_wicked_db_dsn(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"volume": {"path": None}})
    assert caught.value.problems == [
        "config.yaml: volume.path is null but wicked_db.dsn is not set: set volume.path to "
        "portal-api's dynamic data folder, or wicked_db.dsn to wicked's database"]
    config = _config(tmp_path, {"volume": {"path": None},
                                "wicked_db": {"dsn": "postgresql://w:pw@db/wicked"}})
    assert [s.name for s in configured_sources(config)] == ["wicked_db"]
    assert config.wicked_db.schema == "wicked"


def test_wicked_db_schema_must_be_a_plain_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a PostgreSQL schema name"):
        _config(tmp_path, {"wicked_db": {"dsn": "postgresql://db/w", "schema": "a.b"}})


def test_registry_order_volume_then_wicked_db_then_tokens(tmp_path: Path) -> None:
    assert list(REGISTRY) == ["volume", "wicked_db", "kong_tokens"]
    config = _config(tmp_path, {"wicked_db": {"dsn": "postgresql://db/w"},
                                "kong_tokens": {"dsn": "postgresql://db/k"}})
    assert [s.name for s in configured_sources(config)] == ["volume", "wicked_db",
                                                            "kong_tokens"]


def test_volume_without_wicked_layout_refusal_names_wicked_db(tmp_path: Path) -> None:
    config = _config(tmp_path, {"volume": {"path": str(tmp_path)}})
    with pytest.raises(RefusedError, match=r"set wicked_db\.dsn and volume\.path: null"):
        VolumeSource(config.volume).check_ready(force=False)
    with pytest.raises(RefusedError, match=r"wicked_db\.dsn is set.*set volume\.path: null"):
        VolumeSource(config.volume, wicked_db_configured=True).check_ready(force=False)
    VolumeSource(config.volume, wicked_db_configured=True).check_ready(force=True)
