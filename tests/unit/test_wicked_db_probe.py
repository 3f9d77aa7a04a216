"""The wicked_db probe's host side: splitting the stream, a damaged stream as a problem (no
server started), the script it runs (the restore's load.psql with the model checks before
post_data), reading the server's answers. The server side runs in
tests/integration/test_wicked_db_probe.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.fixtures.chunked_stream import ChunkedReader
from wicked_dr.repository.snapshot import SourceRecord, StreamRef
from wicked_dr.sources import wicked_db_probe as probe
from wicked_dr.sources.base import ProbeBench, ProbedSource
from wicked_dr.sources.pg_copy import END_OF_DATA, json_line
from wicked_dr.sources.wicked_db import WickedDbSource
from wicked_dr.sources.wicked_db_stream import (
    FORMAT,
    SectionDigest,
    parse_header,
    trailer_doc,
)

USERS = [b"u2\tb@example.com\n", b"u1\ta@example.com\n"]
OWNERS = [b"a1:u1\tu1\ta1\n"]
REF = StreamRef(0, "0" * 64, ())


def _header() -> dict[str, Any]:
    def section(name: str, columns: tuple[str, ...]) -> dict[str, Any]:
        return {"name": name, "columns": [{"name": c, "type": "text"} for c in columns],
                "order_by": ["id"]}
    return {"format": FORMAT, "version": 1, "encoding": "postgresql-copy-text",
            "schema": "wicked", "server_version": "15.4", "server_time": "t", "meta": {},
            "pre_data": ["CREATE TABLE users (id text, email text)"],
            "post_data": ["ALTER TABLE ONLY owners ADD CONSTRAINT users_fkey FOREIGN KEY "
                          "(users_id) REFERENCES users(id) ON DELETE CASCADE"],
            "sequences": [],
            "sections": [section("owners", ("id", "users_id", "applications_id")),
                         section("users", ("id", "email"))]}


def _stream(owners: list[bytes] = OWNERS) -> bytes:
    digests = {"owners": SectionDigest(), "users": SectionDigest()}
    digests["owners"].update(b"".join(OWNERS))
    digests["users"].update(b"".join(USERS))
    return (json_line(_header()) + b"".join(owners) + END_OF_DATA + b"".join(USERS)
            + END_OF_DATA + json_line(trailer_doc(digests)))


class NoServer:
    """A scratch runner that only lets the image check pass."""

    def ensure_image(self, image: str, pull: str = "never") -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"nothing may be started for a damaged stream ({name})")


def test_wicked_db_source_is_probed() -> None:
    from wicked_dr.config import WickedDbConfig

    assert isinstance(WickedDbSource(WickedDbConfig()), ProbedSource)


def test_split_checks_trailer_and_manifest(tmp_path: Path) -> None:
    header, tables, problems = probe.split_stream(ChunkedReader(_stream()), REF,
                                                  {"rows": {"owners": 1, "users": 3}},
                                                  tmp_path)
    assert header.schema == "wicked"
    assert [(t.name, t.rows) for t in tables] == [("owners", 1), ("users", 2)]
    assert tables[1].sha256 == hashlib.sha256(b"".join(USERS)).hexdigest()
    assert tables[1].sorted_sha256 == hashlib.sha256(b"".join(sorted(USERS))).hexdigest()
    assert (tmp_path / tables[1].file).read_bytes() == b"".join(USERS)
    assert problems == ["table users: the manifest records 3 rows, the stream 2"]


def test_damaged_stream_is_a_problem_and_starts_nothing(tmp_path: Path) -> None:
    damaged = _stream([b"a1:u1\tu9\ta1\n"])  # a byte changed after the trailer was written
    record = SourceRecord("wicked_db", {}, (), StreamRef(len(damaged), "0" * 64, ()))
    bench = ProbeBench(scratch=NoServer(), image="i", postgres_image="p", owner=(0, 0),
                       spool_dir=tmp_path, timeout_s=10)
    result = probe.probe_wicked_db(ChunkedReader(damaged), record, bench)
    assert not result.ok
    assert result.problems == ("the wicked_db stream cannot be read: the wicked_db stream's "
                               "section owners does not match its trailer (1 rows read, 1 "
                               "declared; sha256 differs)",)
    assert list(tmp_path.iterdir()) == []


def test_script_is_the_restores_load_with_checks_before_post_data(tmp_path: Path) -> None:
    header, tables, _ = probe.split_stream(ChunkedReader(_stream()), REF, {}, tmp_path)
    relations, script = probe.probe_script(header, tables)
    assert [r.key for r in relations] == ["owners_users"]  # the tables the schema has
    assert "BEGIN;\nCREATE SCHEMA" in script and script.endswith("COMMIT;\n")
    assert "\\copy owners (id, users_id, applications_id) FROM " \
           "'/probe/sections/0-owners.copy'\n" in script
    assert script.index("\\copy users") < script.index("wdr-check") \
        < script.index("ADD CONSTRAINT users_fkey")
    assert probe.readback_sql("wicked", header.sections[1]) == (
        'COPY (SELECT "id", "email" FROM "wicked"."users" ORDER BY "id") TO STDOUT;\n')


def test_check_findings_problems_warnings_and_capped_ids() -> None:
    relations = [r for r in probe.RELATIONS
                 if r.key in ("owners_users", "access_tokens_users")]
    output = ("1\n"
              'wdr-check {"check": "owners_users", "count": 12, "sample": '
              '[["a1:ghost", "ghost"]]}\n'
              'wdr-check {"check": "access_tokens_users", "count": 1, "sample": '
              '[["gone", "gone"]]}\n')
    problems, warnings = probe.check_findings(relations, output)
    assert problems == ["table owners: 12 owner rows whose user does not exist: a1:ghost "
                        "(users_id ghost) and 11 more"]
    assert warnings == ["table access_tokens: 1 users with access tokens who no longer "
                        "exist (the tokens expire): gone"]
    assert probe.check_findings(relations, "") == ([], [])


def test_compare_accepts_another_collations_order_only_with_equal_rows(
        tmp_path: Path) -> None:
    _, tables, _ = probe.split_stream(ChunkedReader(_stream()), REF, {}, tmp_path)
    users = tables[1]
    sorted_sha = users.sorted_sha256
    assert probe.compare([users], f"table users 2 {'f' * 64} {sorted_sha}\n") == ([], 1)
    assert probe.compare([users], f"table users 2 {users.sha256} x\n") == ([], 0)
    assert probe.compare([users], f"table users 2 {'f' * 64} {'e' * 64}\n")[0] == [
        "table users: checksum differs (the rows read back are not the snapshot's)"]
    assert probe.compare([users], f"table users 1 {users.sha256} x\n")[0] == [
        "table users: 1 rows read back, the snapshot holds 2"]
    assert probe.compare([users], "")[0] == [
        "table users: not read back from the scratch server"]


def test_load_problem_names_the_table_and_hides_values() -> None:
    header = parse_header(_header())
    stderr = ('psql:/probe/load.psql:40: ERROR:  insert or update on table "owners" violates '
              'foreign key constraint "users_fkey"\nDETAIL:  Key (users_id)=(ghost) is not '
              'present in table "users".\n')
    assert probe.load_problem(3, stderr, header) == (
        'table owners: the snapshot does not load into the scratch server: insert or update '
        'on table "owners" violates foreign key constraint "users_fkey"')
    stderr = ('ERROR:  invalid input syntax for type integer: "secret"\n'
              'CONTEXT:  COPY users, line 2, column email: "secret"\n')
    assert probe.load_problem(3, stderr, header) == (
        'table users: line 2, column email does not load into the scratch server: invalid '
        'input syntax for type integer: "..."')
