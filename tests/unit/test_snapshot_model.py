"""The typed snapshot: parsed and validated once, both stored versions read, written back
exactly as stored, and damage named instead of surfacing later as a KeyError."""

from __future__ import annotations

import re
from typing import Any

import pytest

from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.repository.snapshot import Snapshot

SNAPSHOT_ID = "20261130T030000.000001Z-0badc0de"


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 2, "id": SNAPSHOT_ID, "time": "2026-11-30T03:00:00.000001+00:00",
        "end_time": "2026-11-30T03:00:02+00:00", "duration_s": 2.0, "host": "h",
        "tool_version": "0.1.0", "parent": None, "trees": ["t1", "t2"],
        "streams": {"kong_tokens": {"size": 3, "sha256": "ab", "blobs": ["b1"]}},
        "sources": {"kong_tokens": {"generation": "3.x"}, "volume": {"path": "/v"}},
        "summary": {"files": 7, "dirs": 2, "symlinks": 0, "bytes": 70, "bytes_read": 70,
                    "bytes_new": 70, "files_unchanged": 0, "errors": 1},
        "errors": [{"path": "users/pipe", "error": "not a regular file"}]}
    doc.update(changes)
    return doc


def test_from_json_joins_trees_and_streams_into_source_records() -> None:
    """The volume's record holds the trees, the tokens' record its stream and metadata."""
    snapshot = Snapshot.from_json(_doc(), SNAPSHOT_ID)
    assert snapshot.trees == ("t1", "t2")
    assert snapshot.source("volume").metadata == {"path": "/v"}
    tokens = snapshot.source("kong_tokens")
    assert tokens.trees == () and tokens.stream is not None
    assert (tokens.stream.size, tokens.stream.blobs) == (3, ("b1",))
    assert snapshot.summary.files == 7 and snapshot.errors[0].path == "users/pipe"


@pytest.mark.parametrize("version", [1, 2])
def test_to_json_gives_back_the_stored_document(version: int) -> None:
    """Parsing then serialising changes nothing (both versions), so a rewrite is lossless."""
    doc = _doc(version=version)
    assert Snapshot.from_json(doc, SNAPSHOT_ID).to_json() == doc


@pytest.mark.parametrize(("changes", "message"), [
    ({"version": 3}, "version 3"),
    ({"id": "other"}, "does not describe itself"),
    ({"trees": "t1"}, "malformed"),
    ({"streams": {"kong_tokens": {"size": 1}}}, "malformed"),
    ({"summary": {"files": "many"}}, "malformed"),
    ({"time": None, "errors": [{"path": "x"}]}, "malformed"),
])
def test_from_json_damaged_document_integrity_error(changes: dict[str, Any],
                                                    message: str) -> None:
    """A snapshot of an unknown version or with a malformed field is an IntegrityError naming
    the snapshot."""
    with pytest.raises(IntegrityError, match=message) as caught:
        Snapshot.from_json(_doc(**changes), SNAPSHOT_ID)
    assert SNAPSHOT_ID in str(caught.value)


def test_source_absent_not_found_names_what_is_held() -> None:
    """Asking a snapshot for a source it lacks names the snapshot and what it holds."""
    snapshot = Snapshot.from_json(_doc(streams={}, sources={"volume": {}}), SNAPSHOT_ID)
    expected = re.escape("holds no 'kong_tokens' data (it holds: volume)")
    with pytest.raises(NotFoundError, match=expected):
        snapshot.source("kong_tokens")
