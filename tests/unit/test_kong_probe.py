"""The token probe's host side: splitting a stream of each readable version into sections,
their counts and checksums, the SQL that loads them, and comparing what the server read back.
The server side runs in tests/integration/test_token_probe.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.chunked_stream import ChunkedReader
from wicked_dr.repository.snapshot import StreamRef
from wicked_dr.sources import kong_probe, kong_stream
from wicked_dr.sources.kong_probe import HostSection, compare, load_sql, split_stream
from wicked_dr.sources.kong_schema import Column

TOKENS = [b"b1\tat-1\tc1\n", b"a2\tat-\\t2\\\\\tc1\n", b"c3\tat-3\\nx\tc2\n"]
CREDENTIALS = [b"c1\tclient-1\n", b"c2\tclient-2\n"]
COLUMNS = [{"name": "id", "type": "uuid"}, {"name": "access_token", "type": "text"},
           {"name": "credential_id", "type": "uuid"}]
REF = StreamRef(0, "0" * 64, ())


def _v3(trailer: dict[str, int] | None = None) -> bytes:
    header = kong_stream.json_line({
        "format": kong_stream.FORMAT, "version": 3, "sections": [
            {"name": "oauth2_tokens", "columns": [*COLUMNS, {"name": "ttl", "type":
                                                             "timestamp with time zone"}]},
            {"name": "oauth2_credentials", "columns": [
                {"name": "id", "type": "uuid"}, {"name": "client_id", "type": "text"}]}]})
    rows = trailer or {"oauth2_tokens": 3, "oauth2_credentials": 2}
    return (header + b"".join(TOKENS) + kong_stream.END_OF_DATA + b"".join(CREDENTIALS)
            + kong_stream.END_OF_DATA + kong_stream.json_line({"rows": rows}))


def _joined_header(version: int) -> bytes:
    doc: dict[str, Any] = {"format": kong_stream.FORMAT, "version": version,
                           "columns": [*COLUMNS, {"name": "x_client_id", "type": "text"}]}
    if version == 1:
        doc["rows"] = 3
    return kong_stream.json_line(doc)


def _sorted_sha(lines: list[bytes]) -> str:
    return hashlib.sha256(b"".join(sorted(lines))).hexdigest()


def test_split_v3_sections_counted_and_checksummed_over_sorted_lines(tmp_path: Path) -> None:
    sections, problems = split_stream(ChunkedReader(_v3()), REF, {"sections": {
        "oauth2_tokens": 3, "oauth2_credentials": 2}, "exported": 3}, tmp_path)
    assert problems == []
    assert [(s.name, s.rows, s.sha256) for s in sections] == [
        ("oauth2_tokens", 3, _sorted_sha(TOKENS)),
        ("oauth2_credentials", 2, _sorted_sha(CREDENTIALS))]
    assert (tmp_path / sections[0].file).read_bytes() == b"".join(TOKENS)
    assert sections[1].file == "sections/1-oauth2_credentials.copy"


def test_split_trailer_and_manifest_disagreeing_named_by_section(tmp_path: Path) -> None:
    stream = ChunkedReader(_v3({"oauth2_tokens": 4, "oauth2_credentials": 2}))
    _, problems = split_stream(stream, REF,
                               {"sections": {"oauth2_tokens": 4, "oauth2_credentials": 1},
                                "exported": 4}, tmp_path)
    assert problems == [
        "section oauth2_tokens: the stream holds 3 rows, its trailer says 4",
        "section oauth2_credentials: the manifest records 1 rows, the stream 2"]


@pytest.mark.parametrize("version", [1, 2])
def test_split_joined_versions_one_section(tmp_path: Path, version: int) -> None:
    joined = [line[:-1] + b"\tclient-1\n" for line in TOKENS]
    body = b"".join(joined)
    if version == 2:
        body += kong_stream.END_OF_DATA + kong_stream.json_line({"rows": 3})
    sections, problems = split_stream(ChunkedReader(_joined_header(version) + body), REF,
                                      {"exported": 3}, tmp_path)
    assert problems == []
    assert [(s.name, s.rows, s.sha256) for s in sections] == [
        (kong_stream.JOINED, 3, _sorted_sha(joined))]
    assert 'CREATE TABLE "joined" ("id" uuid, "access_token" text, "credential_id" uuid, ' \
           '"x_client_id" text);' in load_sql(sections)


def test_load_sql_one_table_per_section_loaded_from_its_file(tmp_path: Path) -> None:
    sections, _ = split_stream(ChunkedReader(_v3()), REF, {}, tmp_path)
    sql = load_sql(sections)
    assert ('CREATE TABLE "oauth2_tokens" ("id" uuid, "access_token" text, "credential_id" '
            'uuid, "ttl" timestamp with time zone);') in sql
    assert f"COPY \"oauth2_credentials\" FROM '{kong_probe.MOUNT}/sections/" \
           "1-oauth2_credentials.copy';" in sql


def test_compare_names_each_section_that_differs() -> None:
    section = kong_stream.Section("oauth2_tokens", ())
    sections = [HostSection(0, section, 1000, "a" * 64),
                HostSection(1, kong_stream.Section("services", ()), 5, "b" * 64),
                HostSection(2, kong_stream.Section("apis", ()), 0, "c" * 64)]
    output = f"section oauth2_tokens 999 {'a' * 64}\nsection services 5 {'d' * 64}\n"
    assert compare(sections, output) == [
        "section oauth2_tokens: 999 rows read back, the snapshot holds 1000",
        "section services: checksum differs (the rows read back are not the snapshot's)",
        "section apis: not read back from the scratch server"]
    assert compare(sections[:1], f"section oauth2_tokens 1000 {'a' * 64}\n") == []


def test_load_problem_names_section_line_column_and_hides_values() -> None:
    sections = [HostSection(0, kong_stream.Section("oauth2_tokens", (
        Column("credential_id", "uuid"),)), 1, "a" * 64)]
    stderr = ('psql:/probe/load.sql:3: ERROR:  missing data for column "credential_id"\n'
              'CONTEXT:  COPY oauth2_tokens, line 7: "id-1\tat-secret"\n')
    assert kong_probe.load_problem(3, stderr, sections) == (
        'section oauth2_tokens: line 7 does not load into the scratch server: missing data '
        'for column "credential_id"')
    stderr = 'ERROR:  invalid input syntax for type uuid: "at-secret"\n'
    assert kong_probe.load_problem(3, stderr, sections) == (
        "loading the sections into the scratch server failed (exit 3): invalid input syntax "
        'for type uuid: "..."')


@pytest.mark.parametrize("run_bytes", [1, 40, 1 << 20])
def test_sorted_lines_digest_in_runs_equals_sorting_in_memory(tmp_path: Path,
                                                              run_bytes: int) -> None:
    """Sorted in runs spilled to files and merged: the same digest as one in-memory sort,
    duplicates and bytes above 0x7f included (``LC_ALL=C sort`` order)."""
    lines = [f"{(i * 7919) % 101}\tvalue-{i % 13}\n".encode() for i in range(300)]
    lines += [b"\xc3\xbc-umlaut\n", b"\xc3\xbc-umlaut\n", b"Z\n", b"\\N\t\\t\n"]
    path = tmp_path / "section.copy"
    path.write_bytes(b"".join(lines))
    assert kong_probe.sorted_lines_digest(path, run_bytes) == (len(lines), _sorted_sha(lines))
    assert sorted(tmp_path.iterdir()) == [path]  # the runs are gone


def test_split_small_runs_same_result(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, _ = split_stream(ChunkedReader(_v3()), REF, {}, tmp_path / "a", run_bytes=8)
    whole, _ = split_stream(ChunkedReader(_v3()), REF, {}, tmp_path / "b")
    assert small == whole and small
