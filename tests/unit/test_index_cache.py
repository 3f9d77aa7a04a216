"""The index cache's run set: exact answers below and above the in-memory limit."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from wicked_dr.repository import index
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.packs import BlobLocation, PackRecord


def _ids(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


@pytest.mark.parametrize("set_max", [0, 3, 1_000_000], ids=["spilled", "mixed", "in-memory"])
def test_run_blobs_marked_written_found_others_not(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  set_max: int) -> None:
    """Blobs of this run are known exactly, whether held in memory or spilled to SQLite."""
    monkeypatch.setattr(index, "RUN_SET_MAX", set_max)
    cache = IndexCache(tmp_path / "index.sqlite")
    written = _ids(50, "w")
    for start in range(0, 50, 5):
        cache.mark_written(written[start:start + 5])
    assert all(cache.has(b) for b in written)
    assert not any(cache.has(b) for b in _ids(500, "other"))


def test_run_blobs_not_persisted_across_caches(tmp_path: Path) -> None:
    """A new run never trusts blobs an earlier, unfinished run only staged."""
    first = IndexCache(tmp_path / "index.sqlite")
    blob = _ids(1, "x")[0]
    first.mark_written([blob])
    first.close()
    assert not IndexCache(tmp_path / "index.sqlite").has(blob)


def _index(pack_id: str, blob_ids: list[str]) -> bytes:
    return index.index_document([PackRecord(pack_id, 100, 90, tuple(
        BlobLocation(b, i * 10, 10) for i, b in enumerate(blob_ids)))])


def test_indexed_blobs_are_found_with_their_pack(tmp_path: Path) -> None:
    """Index objects recorded in the cache answer has() and lookup() across connections."""
    blobs = _ids(30, "i")
    cache = IndexCache(tmp_path / "index.sqlite")
    cache.add_index("i1", _index("p" * 64, blobs[:20]))
    cache.add_index("i2", _index("q" * 64, blobs[20:]))
    cache.close()
    reopened = IndexCache(tmp_path / "index.sqlite")
    assert all(reopened.has(b) for b in blobs) and not reopened.has(_ids(1, "x")[0])
    assert reopened.lookup(blobs[3]) == index.BlobRef("p" * 64, 30, 10)
    assert reopened.lookup(blobs[21]) == index.BlobRef("q" * 64, 10, 10)
    assert reopened.pack_raw_size("q" * 64) == 100


def test_cache_of_an_older_layout_is_rebuilt(tmp_path: Path) -> None:
    """A cache written by an older wicked-dr (other tables, user_version 0) is dropped and
    starts empty, so sync() reloads every index object instead of misreading old rows."""
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE blobs (id BLOB PRIMARY KEY, pack TEXT, offset INTEGER, length INTEGER) "
        "WITHOUT ROWID; CREATE TABLE packs (id TEXT PRIMARY KEY, raw_size INTEGER, "
        "stored_size INTEGER, index_id TEXT) WITHOUT ROWID; "
        "CREATE TABLE loaded (index_id TEXT PRIMARY KEY) WITHOUT ROWID; "
        f"INSERT INTO blobs VALUES (x'{_ids(1, 'o')[0]}', 'p', 0, 1); "
        "INSERT INTO loaded VALUES ('i-old');")
    old.commit()
    old.close()
    cache = IndexCache(path)
    assert not cache.has(_ids(1, "o")[0])
    cache.add_index("i1", _index("p" * 64, _ids(3, "n")))
    assert cache.lookup(_ids(3, "n")[2]) == index.BlobRef("p" * 64, 20, 10)
