"""The stat cache: a forward-only merge-join over the previous snapshot's file identities."""

from __future__ import annotations

import json
from pathlib import Path

import zstandard

from wicked_dr.repository.entry_lines import stat_line
from wicked_dr.repository.statcache import StatCacheReader, StatCacheWriter

SCAN_START = 123


def _line(rel_dir: str, name: str) -> str:
    path = f"{rel_dir}/{name}" if rel_dir else name
    return stat_line(name, f"{len(name)}:10:20:30",
                     json.dumps({"path": path, "type": "file"}) + "\n")


def _write(directory: Path, snapshot: str, blocks: dict[str, list[str]]) -> None:
    """``blocks``: directory -> file names, given in manifest order."""
    writer = StatCacheWriter(directory, snapshot, SCAN_START)
    for rel_dir, names in blocks.items():
        writer.enter_dir(rel_dir)
        writer.add("".join(_line(rel_dir, name) for name in names))
    writer.commit()


def test_reader_hands_out_lines_per_block_in_order(tmp_path: Path) -> None:
    """Blocks are found by directory (gone ones skipped); a block's lines come out up to a
    name, across calls; lines are the ones written, verbatim."""
    _write(tmp_path, "s1", {"": ["a-b", "z"], "a": ["b"], "gone": ["x"],
                            "users": ["1.json", "2.json", "3.json"]})
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None and reader.scan_start_ns == SCAN_START
    reader.enter_dir("")
    assert reader.take_until("m") == [_line("", "a-b")]
    assert reader.take_until("zz") == [_line("", "z")]
    reader.enter_dir("a")
    assert reader.take_until("b") == [_line("a", "b")]
    reader.enter_dir("new-dir")               # between blocks: nothing known, cursor intact
    assert reader.take_until("x") == []
    reader.enter_dir("users")                 # skips the block of "gone"
    assert reader.take_until("2.json") == [_line("users", "1.json"), _line("users", "2.json")]
    assert reader.take_until("4.json") == [_line("users", "3.json")]
    reader.enter_dir("zz")
    assert reader.take_until("x") == []
    reader.close()


def test_names_needing_quotes_round_trip(tmp_path: Path) -> None:
    """Names with tabs, newlines or a leading quote survive the tab-separated format."""
    names = sorted(['"quoted', "new\nline", "tab\there"])
    _write(tmp_path, "s1", {"": names, "dir\twith tab": ["f"]})
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None
    reader.enter_dir("")
    assert reader.take_until("zzz") == [_line("", n) for n in names]
    reader.enter_dir("dir\twith tab")
    assert reader.take_until("f") == [_line("dir\twith tab", "f")]
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


def test_long_blocks_are_handed_out_exactly_once_across_chunks(tmp_path: Path) -> None:
    """Blocks longer than the read-ahead chunk, batch boundaries that fall between cached
    names, and a block that ends inside a chunk: every line comes out once, in order."""
    root = [f"{i:04}" for i in range(0, 1200, 2)]          # 600 names, even numbers
    _write(tmp_path, "s1", {"": root, "a": ["x", "y"], "b": ["z"]})
    reader = StatCacheReader.latest(tmp_path, "s1")
    assert reader is not None
    reader.enter_dir("")
    got: list[str] = []
    for last in ("0001", "0511", "0512", "0999", "1199", "9999"):  # odd: between names
        got.extend(reader.take_until(last))
    assert got == [_line("", n) for n in root]
    reader.enter_dir("a")
    assert reader.take_until("x") == [_line("a", "x")]
    reader.enter_dir("b")                                   # the rest of "a" is skipped
    assert reader.take_until("z") == [_line("b", "z")]
    reader.close()
