"""The tree scan: manifest order, worker processes, the stat cache, big and growing files.

The workers are real child processes (``python -m wicked_dr.engine.scan_worker``). The
target is a recording double that behaves like the snapshot writer where the scan can tell:
it parses the manifest lines it gets, checks every new blob against its SHA-256, streams big
files, and serves stat-cache lines per directory the way the stat cache reader does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from wicked_dr.engine import scan_worker
from wicked_dr.engine.scan_pool import ScanPool
from wicked_dr.engine.scan_worker import (
    BigItem,
    ErrorItem,
    Job,
    ReuseItem,
    RunItem,
    scan_batch,
)
from wicked_dr.engine.tree_scan import BATCH_NAMES, scan_tree
from wicked_dr.errors import Interrupted, SourceError
from wicked_dr.repository.entry_lines import stat_key, stat_line
from wicked_dr.repository.manifest import sort_key
from wicked_dr.repository.segments import Segment
from wicked_dr.sources.volume import is_excluded
from wicked_dr.testing.scripted_token import ScriptedToken

NEVER_RACY = 2**62


class _RecordingTarget:
    """Records entries (parsed manifest lines), contents, stat lines and errors in order."""

    def __init__(self, cache: dict[str, list[str]] | None = None) -> None:
        self.entries: list[dict[str, Any]] = []
        self.contents: dict[str, bytes] = {}
        self.stat_lines: list[str] = []
        self.errors: dict[str, str] = {}
        self.blocks: list[str] = []
        self.unchanged = 0
        self._cache = cache or {}
        self._pending: list[str] = []

    def enter_dir(self, rel_dir: str, names: list[str]) -> None:
        self.blocks.append(rel_dir)
        self._pending = list(self._cache.get(rel_dir, []))

    def cached_lines(self, last_name: str) -> list[str]:
        taken = [line for line in self._pending if line.split("\t", 1)[0] <= last_name]
        self._pending = self._pending[len(taken):]
        return taken

    def add_run(self, run: RunItem) -> None:
        lines = run.manifest.splitlines()
        assert len(lines) == run.entries
        blobs = _blobs(run.blobs)
        for line in lines:
            entry = json.loads(line)
            self.entries.append(entry)
            if entry.get("type") == "file" and entry["sha256"] in blobs:
                self.contents[entry["path"]] = blobs[entry["sha256"]]
        self.stat_lines.extend(run.stat.splitlines(keepends=True))

    def add_reused(self, manifest: str, stat: str, entries: int, bytes_total: int) -> None:
        lines = manifest.splitlines()
        assert len(lines) == entries == len(stat.splitlines())
        self.entries.extend(json.loads(line) for line in lines)
        self.stat_lines.extend(stat.splitlines(keepends=True))
        self.unchanged += entries

    def add_big_file(self, rel: str, meta: tuple[int, ...], chunks: Iterable[bytes]) -> None:
        self.contents[rel] = b"".join(chunks)
        self.entries.append({"path": rel, "type": "file", "size": len(self.contents[rel])})

    def add_error(self, rel: str, error: str) -> None:
        self.errors[rel] = error

    @property
    def order(self) -> list[str]:
        return [e["path"] for e in self.entries]


def _blobs(segment: Segment) -> dict[str, bytes]:
    """A segment's blobs by id, each checked against its SHA-256; ids distinct."""
    assert len(set(segment.blob_ids)) == len(segment.blob_ids) == len(segment.lengths)
    blobs, start = {}, 0
    for blob_id, length in zip(segment.blob_ids, segment.lengths, strict=True):
        blobs[blob_id] = segment.data[start:start + length]
        assert hashlib.sha256(blobs[blob_id]).hexdigest() == blob_id
        start += length
    assert start == len(segment.data)
    return blobs


def _tree(root: Path) -> None:
    for rel in ["a/b", "a-b", "a.b", "ab", "a/c/d", "A", "z", "a0", "users/1.json"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel * 3)
    (root / "many").mkdir()
    for i in range(2100):  # several batches in one directory
        (root / "many" / f"{i:04}.json").write_text(f'{{"i": {i}}}')
    (root / "empty.json").write_text("")
    (root / "emptydir").mkdir()
    os.symlink("z", root / "y")
    (root / "skip.lock").write_text("")
    (root / ".wicked-dr-global.lock.tmp").write_text("")


def _scan(root: Path, target: _RecordingTarget, workers: int,
          racy_from_ns: int = NEVER_RACY) -> None:
    with ScanPool(workers) as pool:
        scan_tree(str(root), target, pool, exclude=is_excluded, racy_from_ns=racy_from_ns)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_scan_emits_manifest_order_with_any_number_of_workers(tmp_path: Path,
                                                               workers: int) -> None:
    """Entries come in sort_key order (directory blocks), contents intact, locks left out."""
    _tree(tmp_path)
    target = _RecordingTarget()
    _scan(tmp_path, target, workers)
    assert "skip.lock" not in target.order and ".wicked-dr-global.lock.tmp" not in target.order
    assert target.order == sorted(target.order, key=sort_key)
    assert target.blocks == ["", "a", "a/c", "emptydir", "many", "users"]
    assert target.contents["a/c/d"] == b"a/c/d" * 3
    assert target.contents["many/2099.json"] == b'{"i": 2099}'
    link = next(e for e in target.entries if e["path"] == "y")
    assert link["type"] == "symlink" and link["target"] == "z"
    empty = next(e for e in target.entries if e["path"] == "empty.json")
    assert empty["size"] == 0 and "blobs" not in empty
    assert len(target.order) == 10 + 2100 + 1 + 5  # files, many/*, the symlink, directories
    assert not target.errors


def test_cached_files_are_reused_changed_and_racy_ones_read(tmp_path: Path) -> None:
    """A file whose stat matches its cache line keeps the cached lines without a read;
    a different key, or an mtime inside the racy window, means a fresh read."""
    racy_from = 1_700_000_000 * 10**9
    for name, mtime in (("racy", racy_from), ("same", racy_from - 1), ("touched", 1)):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, ns=(mtime, mtime))
    keys = {name: _key(tmp_path / name) for name in ("racy", "same", "touched")}
    size, mtime, ctime, ino = keys["touched"]
    keys["touched"] = (size, mtime, ctime + 1, ino)  # e.g. a chmod since
    cache = {"": [stat_line(name, stat_key(*keys[name]), f'{{"path":"{name}","cached":1}}\n')
                  for name in sorted(keys)]}
    target = _RecordingTarget(cache)
    _scan(tmp_path, target, 1, racy_from_ns=racy_from)
    assert target.unchanged == 1
    assert target.entries[1] == {"path": "same", "cached": 1}
    assert set(target.contents) == {"racy", "touched"}
    assert target.stat_lines[1] == cache[""][1]  # reused verbatim


@pytest.mark.parametrize("field", range(4))
def test_any_key_field_differing_means_changed(tmp_path: Path, field: int) -> None:
    """Size, mtime, ctime and inode all have to match."""
    (tmp_path / "f").write_text("hello")
    key = list(_key(tmp_path / "f"))
    unchanged = scan_batch(Job(str(tmp_path), "", ["f"], [stat_key(*key)], NEVER_RACY))
    assert unchanged == [ReuseItem(0, 1, 5)]
    key[field] += 1
    changed = scan_batch(Job(str(tmp_path), "", ["f"], [stat_key(*key)], NEVER_RACY))
    assert isinstance(changed[0], RunItem) and changed[0].files == 1
    assert changed[0].blobs == Segment([hashlib.sha256(b"hello").hexdigest()], [5], b"hello")


def test_unchanged_ranges_and_formatted_runs_interleave_in_order(tmp_path: Path) -> None:
    """Ranges of unchanged files and runs of changed entries alternate in name order; the
    same content in two files is one blob."""
    for name in "abcdef":
        (tmp_path / name).write_text("same" if name in "ce" else name)
    keys: list[str | None] = [stat_key(*_key(tmp_path / n)) if n in "abdf" else None
                              for n in "abcdef"]
    keys[3] = "0:0:0:0"  # d changed since
    items = scan_batch(Job(str(tmp_path), "", list("abcdef"), keys, NEVER_RACY))
    assert [type(i) for i in items] == [ReuseItem, RunItem, ReuseItem]
    assert items[0] == ReuseItem(0, 2, 2) and items[2] == ReuseItem(5, 6, 1)
    run = items[1]
    assert isinstance(run, RunItem) and run.entries == run.files == 3
    assert [json.loads(line)["path"] for line in run.manifest.splitlines()] == ["c", "d", "e"]
    assert set(_blobs(run.blobs).values()) == {b"same", b"d"}


def test_cache_lines_align_with_names_gone_new_and_quoted(tmp_path: Path) -> None:
    """Cached names that are gone are skipped, new names are read, and a name that the
    stat cache quotes (it holds a tab) still finds its line."""
    odd = "odd\tname"
    for name in ("kept", odd, "new"):
        (tmp_path / name).write_text(name)
    lines = {n: stat_line(n, stat_key(*_key(tmp_path / n)),
                          json.dumps({"path": n, "cached": 1}) + "\n") for n in ("kept", odd)}
    gone = stat_line("gone", "1:1:1:1", '{"path":"gone"}\n')
    cache = {"": sorted([*lines.values(), gone], key=lambda line: line.split("\t")[0])}
    target = _RecordingTarget(cache)
    _scan(tmp_path, target, 1)
    assert target.unchanged == 2
    assert sorted(target.contents) == ["new"]
    assert sorted(target.stat_lines[i] for i in (0, 1, 2) if "cached" in target.stat_lines[i]) \
        == sorted(lines.values())
    assert "gone" not in target.order


def test_big_file_is_streamed_by_the_main_process(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the inline limit the worker leaves the file to the main process, which streams it."""
    monkeypatch.setattr(scan_worker, "INLINE_MAX", 1000)
    data = os.urandom(5000)
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "small").write_bytes(b"x")
    items = scan_batch(Job(str(tmp_path), "", ["big", "small"], [None, None], NEVER_RACY))
    assert isinstance(items[0], BigItem) and isinstance(items[1], RunItem)
    target = _RecordingTarget()
    _scan(tmp_path, target, 0)
    assert target.contents == {"big": data, "small": b"x"}
    assert target.order == ["big", "small"]


def test_file_that_grew_after_its_stat_is_left_to_the_main_process(tmp_path: Path) -> None:
    """Reading one byte past the stat size notices growth; the main process reads it all."""
    (tmp_path / "grows").write_text("12345")
    assert scan_worker._read_small(str(tmp_path / "grows"), 3) is None
    assert scan_worker._read_small(str(tmp_path / "grows"), 5) == b"12345"


def test_missing_file_and_special_files_are_errors(tmp_path: Path) -> None:
    """A vanished entry and a FIFO are reported, never recorded."""
    os.mkfifo(tmp_path / "fifo")
    items = scan_batch(Job(str(tmp_path), "d", ["fifo", "gone"], [None, None], NEVER_RACY))
    assert [type(i) for i in items] == [ErrorItem, ErrorItem]
    assert "not a regular file" in items[0].message  # type: ignore[union-attr]
    assert "No such file" in items[1].message  # type: ignore[union-attr]
    assert scan_worker._read_small(str(tmp_path / "gone"), 1) == "No such file or directory"


def test_large_jobs_and_answers_do_not_deadlock(tmp_path: Path) -> None:
    """Job frames and answers far larger than a pipe's buffer flow both ways at once."""
    names = [f"{i:03}-" + "n" * 200 for i in range(600)]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(20_000))
    cache = {"": [stat_line(n, "0:0:0:0", '{"pad":"' + "p" * 2000 + '"}\n') for n in names]}
    target = _RecordingTarget(cache)
    _scan(tmp_path, target, 2)
    assert target.order == names and len(target.contents) == 600


def test_dead_worker_is_a_source_error(tmp_path: Path) -> None:
    """A worker killed mid-scan fails the backup with a clear error instead of hanging."""
    _tree(tmp_path)
    with ScanPool(1) as pool:
        pool._workers[0].kill()
        pool._workers[0].wait()
        with pytest.raises(SourceError, match=r"scan worker .* exited unexpectedly"):
            scan_tree(str(tmp_path), _RecordingTarget(), pool, exclude=is_excluded,
                      racy_from_ns=NEVER_RACY)


def test_pool_close_ends_its_workers() -> None:
    """Closing the pool leaves no child process behind."""
    pool = ScanPool(2)
    workers = list(pool._workers)
    assert pool.workers == 2
    pool.close()
    for worker in workers:
        worker.wait(timeout=10)  # reaped in the background; they end by themselves
    assert all(w.poll() is not None for w in workers)


def test_workers_that_cannot_start_fall_back_to_the_main_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that cannot be executed (e.g. after dropping privileges) makes the scan
    run in-process: slower, same result."""
    _tree(tmp_path)
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    monkeypatch.setattr("sys.executable", str(not_executable))
    target = _RecordingTarget()
    with ScanPool(2) as pool:
        assert pool.workers == 0
        scan_tree(str(tmp_path), target, pool, exclude=is_excluded, racy_from_ns=NEVER_RACY)
    assert target.contents["many/2099.json"] == b'{"i": 2099}' and not target.errors


def _key(path: Path) -> tuple[int, int, int, int]:
    st = path.lstat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def test_settle_sees_full_listings_and_a_settled_directory_is_listed_again(
        tmp_path: Path) -> None:
    """settle gets each directory's listing with its lock files before anything is read;
    when it waited (returns True), the directory is listed again, so a file a finishing
    write created is in the snapshot."""
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "new.json.lock").write_text("")
    seen: list[tuple[str, list[str]]] = []

    def settle(directory: str, names: list[str]) -> bool:
        seen.append((directory, sorted(names)))
        lock = Path(directory) / "new.json.lock"
        if lock.exists():  # the write in flight finishes while we wait
            (Path(directory) / "new.json").write_text("{}")
            lock.unlink()
            return True
        return False

    target = _RecordingTarget()
    with ScanPool(1) as pool:
        scan_tree(str(tmp_path), target, pool, exclude=is_excluded, settle=settle,
                  racy_from_ns=NEVER_RACY)
    assert seen == [(str(tmp_path), ["users"]),
                    (f"{tmp_path}/users", ["new.json.lock"]),
                    (f"{tmp_path}/users", ["new.json"])]
    assert target.contents == {"users/new.json": b"{}"}


@pytest.mark.parametrize("workers", [0, 2])
def test_cancelled_scan_stops_between_batches(tmp_path: Path, workers: int) -> None:
    """A cancel lands between two answers: the target has the first batch of the directory
    (whole entries, in order) and nothing after it; the pool still closes cleanly."""
    (tmp_path / "many").mkdir()
    for i in range(2100):  # three batches
        (tmp_path / "many" / f"{i:04}.json").write_text(f'{{"i": {i}}}')
    # Safe points: 1 the root, 2 its answer, 3 "many", 4 the first answer of "many".
    token = ScriptedToken(cancel_at_check=4)
    target = _RecordingTarget()
    with pytest.raises(Interrupted), ScanPool(workers) as pool:
        scan_tree(str(tmp_path), target, pool, exclude=is_excluded, racy_from_ns=NEVER_RACY,
                  cancel=token)
    assert target.order == ["many", *(f"many/{i:04}.json" for i in range(BATCH_NAMES))]
