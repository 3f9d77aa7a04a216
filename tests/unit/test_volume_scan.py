"""The volume scan: manifest order, worker processes, unchanged files, big and growing files.

The workers are real child processes (``python -m wicked_dr.sources.scan_worker``); the sink
is a recording double that consumes contents as the engine does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from wicked_dr.errors import SourceError
from wicked_dr.repository.manifest import sort_key
from wicked_dr.sources import scan_worker
from wicked_dr.sources.base import FileMeta, StreamRecord
from wicked_dr.sources.scan_pool import ScanPool
from wicked_dr.sources.scan_worker import scan_batch
from wicked_dr.sources.volume import walk

Key = tuple[int, int, int, int]


class _RecordingSink:
    """A TreeSink that records entries in order, with contents and what it was asked."""

    def __init__(self, known: dict[str, Key] | None = None) -> None:
        self.order: list[str] = []
        self.contents: dict[str, bytes] = {}
        self.unchanged: list[str] = []
        self.errors: dict[str, str] = {}
        self.blocks: list[str] = []
        self._known = known or {}
        self._prefix = ""

    def enter_dir(self, rel_dir: str) -> None:
        self.blocks.append(rel_dir)
        self._prefix = f"{rel_dir}/" if rel_dir else ""

    def vouched(self, names: Sequence[str]) -> list[Key | None]:
        return [self._known.get(self._prefix + n) for n in names]

    def add_dir(self, rel: str, meta: FileMeta) -> None:
        self.order.append(rel)

    def add_symlink(self, rel: str, meta: FileMeta, target: str) -> None:
        self.order.append(rel)
        self.contents[rel] = target.encode()

    def add_file(self, rel: str, meta: FileMeta, chunks: Iterable[bytes],
                 sha256: str | None = None) -> None:
        data = b"".join(chunks)
        assert sha256 in (None, hashlib.sha256(data).hexdigest())
        self.order.append(rel)
        self.contents[rel] = data

    def add_unchanged(self, rel: str, meta: FileMeta) -> None:
        self.order.append(rel)
        self.unchanged.append(rel)

    def add_error(self, rel: str, error: str) -> None:
        self.errors[rel] = error

    def add_stream(self, name: str, chunks: object) -> StreamRecord:
        raise AssertionError("not used")


def _tree(root: Path) -> None:
    for rel in ["a/b", "a-b", "a.b", "ab", "a/c/d", "A", "z", "a0", "users/1.json"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel * 3)
    for i in range(700):  # several batches in one directory
        (root / "many" / f"{i:04}.json").parent.mkdir(exist_ok=True)
        (root / "many" / f"{i:04}.json").write_text(f'{{"i": {i}}}')
    os.symlink("z", root / "y")
    (root / "skip.lock").write_text("")
    (root / ".wicked-dr-global.lock.tmp").write_text("")


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_walk_emits_manifest_order_with_any_number_of_workers(tmp_path: Path,
                                                               workers: int) -> None:
    """Entries come in sort_key order (directory blocks), contents intact, locks left out."""
    _tree(tmp_path)
    sink = _RecordingSink()
    with ScanPool(workers) as pool:
        walk(tmp_path, sink, pool)
    assert "skip.lock" not in sink.order and ".wicked-dr-global.lock.tmp" not in sink.order
    assert sink.order == sorted(sink.order, key=sort_key)
    assert sink.blocks == ["", "a", "a/c", "many", "users"]
    assert sink.contents["a/c/d"] == b"a/c/d" * 3 and sink.contents["y"] == b"z"
    assert sink.contents["many/0699.json"] == b'{"i": 699}'
    assert len(sink.order) == 9 + 700 + 1 + 4  # files, many/*, the symlink, 4 directories
    assert not sink.errors


def test_vouched_unchanged_files_are_not_read_changed_ones_are(tmp_path: Path) -> None:
    """A file whose lstat matches its vouched key is unchanged; any other key reads it."""
    for name in ("same", "touched"):
        (tmp_path / name).write_text(name)
    keys = {name: _key(tmp_path / name) for name in ("same", "touched")}
    bumped = keys["touched"]
    keys["touched"] = (bumped[0], bumped[1] + 1, bumped[2], bumped[3])  # mtime differs
    sink = _RecordingSink(known=keys)
    with ScanPool(1) as pool:
        walk(tmp_path, sink, pool)
    assert sink.unchanged == ["same"]
    assert sink.contents == {"touched": b"touched"}


@pytest.mark.parametrize("field", range(4))
def test_any_key_field_differing_means_changed(tmp_path: Path, field: int) -> None:
    """Size, mtime, ctime and inode all have to match."""
    path = tmp_path / "f"
    path.write_text("hello")
    key = list(_key(path))
    assert scan_batch(str(tmp_path), ["f"], [tuple(key)])[0][0] == "u"  # type: ignore[list-item]
    key[field] += 1
    assert scan_batch(str(tmp_path), ["f"], [tuple(key)])[0][0] == "f"  # type: ignore[list-item]


def test_big_file_is_streamed_by_the_main_process(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the inline limit the worker leaves the file to the main process, which streams it."""
    monkeypatch.setattr(scan_worker, "INLINE_MAX", 1000)
    data = os.urandom(5000)
    (tmp_path / "big").write_bytes(data)
    assert scan_batch(str(tmp_path), ["big"], [None])[0][0] == "b"
    sink = _RecordingSink()
    walk(tmp_path, sink)
    assert sink.contents["big"] == data


def test_file_that_grew_after_its_stat_is_left_to_the_main_process(tmp_path: Path) -> None:
    """Reading one byte past the stat size notices growth; the main process reads it all."""
    path = tmp_path / "grows"
    path.write_text("12345")
    meta = (0o100644, 0, 0, 3, 1, 1, 1)  # as if lstat had seen 3 bytes
    assert scan_worker._read_small(str(path), "grows", meta)[0] == "b"


def test_missing_file_and_special_files_are_errors(tmp_path: Path) -> None:
    """A vanished entry and a FIFO are reported, never recorded."""
    os.mkfifo(tmp_path / "fifo")
    results = scan_batch(str(tmp_path), ["fifo", "gone"], [None, None])
    assert [(r[0], r[1]) for r in results] == [("e", "fifo"), ("e", "gone")]
    assert "not a regular file" in str(results[0][2])
    assert "No such file" in str(results[1][2])
    assert scan_worker._read_small(str(tmp_path / "gone"), "gone", (0, 0, 0, 1, 0, 0, 0))[0] == "e"


def test_dead_worker_is_a_source_error(tmp_path: Path) -> None:
    """A worker killed mid-scan fails the backup with a clear error instead of hanging."""
    _tree(tmp_path)
    with ScanPool(1) as pool:
        pool._workers[0].kill()
        pool._workers[0].wait()
        with pytest.raises(SourceError, match=r"scan worker .* exited unexpectedly"):
            walk(tmp_path, _RecordingSink(), pool)


def test_pool_close_ends_its_workers() -> None:
    """Closing the pool leaves no child process behind."""
    pool = ScanPool(2)
    workers = list(pool._workers)
    pool.close()
    assert all(w.poll() is not None for w in workers)


def _key(path: Path) -> Key:
    st = path.lstat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def test_workers_that_cannot_start_fall_back_to_the_main_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that cannot be executed (e.g. after dropping privileges) makes the scan
    run in-process: slower, same result."""
    _tree(tmp_path)
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    monkeypatch.setattr("sys.executable", str(not_executable))
    sink = _RecordingSink()
    with ScanPool(2) as pool:
        assert pool._workers == []
        walk(tmp_path, sink, pool)
    assert sink.contents["many/0699.json"] == b'{"i": 699}' and not sink.errors
