"""The stat cache: a forward-only merge-join over the previous snapshot's file identities."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from wicked_dr.repository.manifest import sort_key
from wicked_dr.repository.statcache import (
    RACY_WINDOW_NS,
    StatCacheReader,
    StatCacheWriter,
    StatRecord,
)


def _record(path: str, size: int = 1) -> StatRecord:
    return StatRecord(path, size, 10, 20, 30, "s" * 64, ("s" * 64,))


def _write(directory: Path, snapshot: str, paths: list[str], scan_start_ns: int = 1000) -> None:
    writer = StatCacheWriter(directory, snapshot, scan_start_ns)
    for path in sorted(paths, key=sort_key):
        writer.add(_record(path))
    writer.commit()


def test_reader_finds_records_in_manifest_order(tmp_path: Path) -> None:
    """Records come back by path when asked in manifest order; absent paths give None."""
    paths = ["a/b", "a-b", "users/1.json", "users/2.json", "z"]
    _write(tmp_path, "s1", paths, scan_start_ns=77)
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None and reader.scan_start_ns == 77
    assert reader.find("a/b") == _record("a/b")
    assert reader.find("a/x") is None           # between records: cursor stays usable
    assert reader.find("a-b") == _record("a-b")
    assert reader.find("users/2.json") == _record("users/2.json")  # skips users/1.json
    assert reader.find("zz") is None
    reader.close()


def test_latest_missing_or_corrupt_cache_is_none(tmp_path: Path) -> None:
    """No cache for the snapshot, no previous snapshot, or a damaged file: read everything."""
    assert StatCacheReader.latest(tmp_path, "nope") is None
    assert StatCacheReader.latest(tmp_path, None) is None
    (tmp_path / "bad.jsonl.zst").write_bytes(b"not zstd")
    assert StatCacheReader.latest(tmp_path, "bad") is None


def test_commit_keeps_only_the_newest_and_abort_leaves_nothing(tmp_path: Path) -> None:
    """A committed cache replaces older ones; an aborted one leaves no file behind."""
    _write(tmp_path, "s1", ["a"])
    _write(tmp_path, "s2", ["a"])
    aborted = StatCacheWriter(tmp_path, "s3", 0)
    aborted.add(_record("a"))
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2.jsonl.zst"]


def test_matches_requires_size_mtime_ctime_and_inode(tmp_path: Path) -> None:
    """A record matches only the very same, unchanged file."""
    path = tmp_path / "f"
    path.write_text("hello")
    st = path.stat()
    rec = StatRecord("f", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "x", ())
    assert rec.matches(st)
    for changed in ({"size": st.st_size + 1}, {"mtime_ns": st.st_mtime_ns + 1},
                    {"ctime_ns": st.st_ctime_ns + 1}, {"inode": st.st_ino + 1}):
        other = dataclasses.replace(rec, **changed)
        assert not other.matches(st), changed


@pytest.mark.parametrize(("age_s", "racy"), [(0.0, True), (1.0, True), (5.0, False)])
def test_is_racy_mtime_near_previous_scan(tmp_path: Path, age_s: float, racy: bool) -> None:
    """A file modified within the racy window of the previous scan's start is re-read."""
    scan_start = time.time_ns()
    _write(tmp_path, "s1", ["f"], scan_start_ns=scan_start)
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None
    path = tmp_path / "f"
    path.write_text("x")
    stamp = scan_start - int(age_s * 1e9)
    os.utime(path, ns=(stamp, stamp))
    assert reader.is_racy(path.stat()) is racy
    assert RACY_WINDOW_NS >= 1_000_000_000  # coarse filesystems tick in whole seconds
    reader.close()
