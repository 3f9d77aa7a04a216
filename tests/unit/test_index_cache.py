"""The index cache: a run's staged packs (in memory and in SQLite), its transaction, the
layout upgrade."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from wicked_dr.errors import LockedError
from wicked_dr.repository import index
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.packs import BlobLocation, PackRecord


def _ids(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def _record(pack_id: str, blob_ids: list[str]) -> PackRecord:
    return PackRecord.of(pack_id, 100, 90, (BlobLocation(b, i * 10, 10)
                                             for i, b in enumerate(blob_ids)))


def _stage(cache: IndexCache, record: PackRecord) -> None:
    """What the snapshot writer does with a sealed pack."""
    cache.note_run_blobs(record.blob_ids)
    cache.stage_pack(record)


@pytest.mark.parametrize("set_max", [0, 12, 1_000_000], ids=["table", "mixed", "in-memory"])
@pytest.mark.parametrize("repository_empty", [True, False], ids=["first", "later"])
def test_run_blobs_staged_found_others_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           set_max: int, repository_empty: bool) -> None:
    """Blobs of this run are known exactly, whether held in memory or only in SQLite."""
    monkeypatch.setattr(index, "RUN_SET_MAX", set_max)
    cache = IndexCache(tmp_path / "index.sqlite")
    if not repository_empty:
        cache.add_index("i0", _index("o" * 64, _ids(3, "old")))
    cache.begin_run()
    written = _ids(50, "w")
    for start in range(0, 50, 5):
        _stage(cache, _record(f"{start:064x}", written[start:start + 5]))
    assert all(cache.has(b) for b in written)
    assert not cache.has_none(written[7:9]) and not cache.has_none(["0" * 64, written[49]])
    assert not any(cache.has(b) for b in _ids(500, "other"))
    assert cache.has_none(_ids(5, "other"))


def test_staged_run_is_kept_only_when_committed(tmp_path: Path) -> None:
    """A run's packs reach the cache with commit_run, named by their index object; an
    aborted run, or a process that ends without committing, leaves nothing behind."""
    path = tmp_path / "index.sqlite"
    blobs = _ids(6, "r")
    aborted = IndexCache(path)
    aborted.begin_run()
    _stage(aborted, _record("a" * 64, blobs[:2]))
    aborted.stage_index("i-aborted", ["a" * 64])
    aborted.abort_run()
    assert not aborted.has(blobs[0])
    aborted.close()
    crashed = IndexCache(path)
    crashed.begin_run()
    _stage(crashed, _record("c" * 64, blobs[2:4]))
    crashed.close()  # like a process that died: the transaction is never committed
    committed = IndexCache(path)
    assert not committed.has(blobs[2])
    committed.begin_run()
    _stage(committed, _record("d" * 64, blobs[4:]))
    committed.stage_index("i-done", ["d" * 64])
    committed.commit_run()
    committed.close()
    reopened = IndexCache(path)
    assert [reopened.has(b) for b in blobs] == [False] * 4 + [True] * 2
    assert reopened.lookup(blobs[5]) == index.BlobRef("d" * 64)
    loaded = sqlite3.connect(path).execute("SELECT index_id FROM loaded").fetchall()
    assert loaded == [("i-done",)]


def test_a_second_run_on_the_same_cache_is_told_to_wait(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two backups sharing a state_dir: the second gets a one-line LockedError (after the
    busy timeout), and a reader is never blocked by the running one."""
    monkeypatch.setattr(index, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "index.sqlite"
    running = IndexCache(path)
    running.begin_run()
    reader = IndexCache(path)
    assert not reader.has(_ids(1, "z")[0])
    with pytest.raises(LockedError, match="same state_dir"):
        reader.begin_run()
    running.abort_run()
    reader.begin_run()
    reader.abort_run()


def _index(pack_id: str, blob_ids: list[str]) -> bytes:
    return index.index_document([_record(pack_id, blob_ids)])


def test_indexed_blobs_are_found_with_their_pack(tmp_path: Path) -> None:
    """Index objects recorded in the cache answer has() and lookup() across connections."""
    blobs = _ids(30, "i")
    cache = IndexCache(tmp_path / "index.sqlite")
    cache.add_index("i1", _index("p" * 64, blobs[:20]))
    cache.add_index("i2", _index("q" * 64, blobs[20:]))
    cache.close()
    reopened = IndexCache(tmp_path / "index.sqlite")
    assert all(reopened.has(b) for b in blobs) and not reopened.has(_ids(1, "x")[0])
    assert reopened.lookup(blobs[3]) == index.BlobRef("p" * 64)
    assert reopened.lookup(blobs[21]) == index.BlobRef("q" * 64)
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
    assert cache.lookup(_ids(3, "n")[2]) == index.BlobRef("p" * 64)


def test_damaged_pack_is_no_dedup_target_and_a_sound_copy_is_preferred(tmp_path: Path) -> None:
    """Once a pack is marked damaged its blobs are no dedup target (a backup stores them
    again), the epoch changes (a stat cache written before no longer vouches), a copy of a
    blob in a sound pack is what lookups give, and a pack stored again whole is sound."""
    cache = IndexCache(tmp_path / "index.sqlite")
    blobs = _ids(3, "d")
    cache.add_index("i0", _index("a" * 64, blobs))
    before = cache.epoch
    assert cache.has(blobs[0]) and cache.epoch == before  # reading changes nothing
    assert cache.mark_damaged("a" * 64) and not cache.mark_damaged("a" * 64)
    assert not cache.mark_damaged("f" * 64)  # a pack the index does not list
    assert cache.epoch != before
    assert not any(cache.has(b) for b in blobs)
    assert cache.lookup(blobs[0]) == index.BlobRef("a" * 64)  # still found for a restore
    cache.add_index("i1", _index("b" * 64, blobs[:1]))  # the next backup stored one again
    assert cache.has(blobs[0]) and not cache.has(blobs[1])
    assert cache.lookup(blobs[0]) == index.BlobRef("b" * 64)
    assert cache.damaged_packs() == ["a" * 64]
    cache.mark_sound("a" * 64)
    assert cache.has(blobs[1]) and cache.damaged_packs() == []


def test_epoch_survives_reopening_and_is_new_for_a_new_cache(tmp_path: Path) -> None:
    """The epoch is the cache's: the same after reopening, another for a cache made anew
    (a stat cache must not vouch across a rebuilt index cache)."""
    first = IndexCache(tmp_path / "index.sqlite")
    epoch = first.epoch
    first.close()
    assert IndexCache(tmp_path / "index.sqlite").epoch == epoch
    assert IndexCache(tmp_path / "other.sqlite").epoch != epoch
