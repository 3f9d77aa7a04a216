"""The stat cache: a forward-only merge-join over the previous snapshot's file identities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from wicked_dr.repository.statcache import (
    RACY_WINDOW_NS,
    Cached,
    StatCacheReader,
    StatCacheWriter,
    stat_line,
)

SCAN_START = 100 * RACY_WINDOW_NS
OLD = 10  # an mtime far older than the scan: not racy


def _manifest_line(path: str) -> str:
    return json.dumps({"path": path, "type": "file"}) + "\n"


def _write(directory: Path, snapshot: str, blocks: dict[str, list[str]],
           scan_start_ns: int = SCAN_START, mtime_ns: int = OLD) -> None:
    """``blocks``: directory -> file names, given in manifest order."""
    writer = StatCacheWriter(directory, snapshot, scan_start_ns)
    for rel_dir, names in blocks.items():
        writer.enter_dir(rel_dir)
        for name in names:
            path = f"{rel_dir}/{name}" if rel_dir else name
            writer.add(stat_line(name, (len(name), mtime_ns, 20, 30), _manifest_line(path)))
    writer.commit()


def _expected(rel_dir: str, name: str, mtime_ns: int = OLD) -> Cached:
    path = f"{rel_dir}/{name}" if rel_dir else name
    key = (len(name), mtime_ns, 20, 30)
    return Cached(key, stat_line(name, key, _manifest_line(path)), _manifest_line(path))


def test_reader_vouches_in_manifest_order(tmp_path: Path) -> None:
    """Blocks are found by directory (gone ones skipped), names by merge-join; absent → None."""
    _write(tmp_path, "s1", {"": ["a-b", "z"], "a": ["b"], "gone": ["x"],
                            "users": ["1.json", "2.json"]}, scan_start_ns=SCAN_START)
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None and reader.scan_start_ns == SCAN_START
    reader.enter_dir("")
    assert reader.vouch(["a-b", "new", "z"]) == [_expected("", "a-b"), None, _expected("", "z")]
    reader.enter_dir("a")
    assert reader.vouch(["a", "b"]) == [None, _expected("a", "b")]
    reader.enter_dir("new-dir")               # between blocks: nothing known, cursor intact
    assert reader.vouch(["x"]) == [None]
    reader.enter_dir("users")                 # skips the block of "gone"
    assert reader.vouch(["2.json"]) == [_expected("users", "2.json")]  # skips 1.json
    assert reader.vouch(["3.json"]) == [None]
    reader.enter_dir("zz")
    assert reader.vouch(["x"]) == [None]
    reader.close()


def test_names_needing_quotes_round_trip(tmp_path: Path) -> None:
    """Names with tabs, newlines or a leading quote survive the tab-separated format."""
    names = sorted(['"quoted', "new\nline", "tab\there"])
    _write(tmp_path, "s1", {"": names, "dir\twith tab": ["f"]})
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None
    reader.enter_dir("")
    assert reader.vouch(names) == [_expected("", n) for n in names]
    reader.enter_dir("dir\twith tab")
    assert reader.vouch(["f"]) == [_expected("dir\twith tab", "f")]
    reader.close()


def test_latest_missing_corrupt_or_older_format_is_none(tmp_path: Path) -> None:
    """No cache for the snapshot, no previous snapshot, a damaged file or an older format:
    everything is read."""
    assert StatCacheReader.latest(tmp_path, "nope") is None
    assert StatCacheReader.latest(tmp_path, None) is None
    (tmp_path / "bad.stat.zst").write_bytes(b"not zstd")
    assert StatCacheReader.latest(tmp_path, "bad") is None
    (tmp_path / "v2.stat.zst").write_bytes(zstandard.compress(
        b'{"snapshot":"v2","scan_start_ns":1,"format":2}\n'))
    assert StatCacheReader.latest(tmp_path, "v2") is None


def test_commit_keeps_only_the_newest_and_abort_leaves_nothing(tmp_path: Path) -> None:
    """A committed cache replaces older ones (older formats too); an aborted one leaves no
    file behind."""
    (tmp_path / "s0.jsonl.zst").write_bytes(b"format 2 leftover")
    _write(tmp_path, "s1", {"": ["a"]})
    _write(tmp_path, "s2", {"": ["a"]})
    aborted = StatCacheWriter(tmp_path, "s3", 0)
    aborted.enter_dir("")
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2.stat.zst"]


@pytest.mark.parametrize(("age_s", "vouched"), [(0.0, False), (1.0, False), (5.0, True)])
def test_racy_files_are_not_vouched_for(tmp_path: Path, age_s: float, vouched: bool) -> None:
    """A file modified within the racy window of the previous scan's start is re-read."""
    mtime = SCAN_START - int(age_s * 1e9)
    _write(tmp_path, "s1", {"": ["f"]}, mtime_ns=mtime)
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None
    reader.enter_dir("")
    assert (reader.vouch(["f"]) == [_expected("", "f", mtime)]) is vouched
    assert RACY_WINDOW_NS >= 1_000_000_000  # coarse filesystems tick in whole seconds
    reader.close()
