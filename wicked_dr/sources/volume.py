"""The dynamic data volume as a source: a sorted walk, under wicked's lock when configured."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wicked_dr.config import VolumeConfig
from wicked_dr.errors import RefusedError, SourceError
from wicked_dr.sources.base import FileMeta, TreeSink
from wicked_dr.sources.scan_pool import ScanPool
from wicked_dr.sources.scan_worker import Result
from wicked_dr.wicked.quiesce import quiesced

READ_CHUNK = 4 * 1024 * 1024
BATCH_NAMES = 256
BATCH_NAME_BYTES = 12 * 1024
WICKED_MARKERS = ("meta.json", "users/_index.json")


def is_excluded(name: str) -> bool:
    """Lock files are transient and must never come back with a restore; neither may the
    temporary file wicked-dr writes global.lock through (a kill -9 can leave one)."""
    return name.endswith(".lock") or name.startswith(".wicked-dr-")


class VolumeSource:
    """portal-api's dynamic data folder."""

    name = "volume"

    def __init__(self, config: VolumeConfig) -> None:
        self.config = config
        self.path = config.path

    def check_looks_like_wicked(self) -> None:
        """Refuse a folder that is not (or no longer) wicked's dynamic data."""
        if not self.path.is_dir():
            raise SourceError(f"volume.path {self.path} is not a directory")
        missing = [m for m in WICKED_MARKERS if not (self.path / m).is_file()]
        if missing:
            raise RefusedError(
                f"{self.path} does not look like wicked's dynamic data (missing "
                f"{', '.join(missing)}); refusing to snapshot it (use --force if this is "
                "intended; wicked 1.0 with Postgres storage keeps its data in the 'wicked' "
                "database instead)")

    def backup(self, sink: TreeSink) -> dict[str, Any]:
        """Walk the volume into ``sink`` under the configured quiesce mode."""
        # Workers start before wicked's lock is taken: their start-up is not lock time.
        with ScanPool(self.config.workers()) as pool, \
                quiesced(self.path, self.config.quiesce, self.config.quiesce_timeout_s) as report:
            walk(self.path, sink, pool)
        return {"path": str(self.path), "quiesce": report.mode,
                "lock_window_s": report.window_s, "waited_for_writes": report.waited_for_locks,
                "removed_stale_lock": report.removed_stale}


def walk(root: Path, sink: TreeSink, pool: ScanPool | None = None) -> None:
    """Every entry under ``root`` into ``sink``, one directory block at a time, each block's
    names ascending, blocks in ascending path order: exactly the manifest order. Without a
    pool, everything runs in this process."""
    pool = pool or ScanPool(0)
    pending = [("", str(root))]
    while pending:
        rel_dir, directory = pending.pop()
        subdirs = _scan_dir(directory, rel_dir, sink, pool)
        pending.extend(reversed(subdirs))  # the smallest name is scanned next


def _scan_dir(directory: str, rel_dir: str, sink: TreeSink,
              pool: ScanPool) -> list[tuple[str, str]]:
    # Plain names, not DirEntry objects: wicked keeps 200 k files in one folder at 200 k
    # users, and a sorted list of DirEntry objects costs three times the memory.
    try:
        names = sorted(n for n in os.listdir(directory) if not is_excluded(n))
    except OSError as exc:
        sink.add_error(rel_dir or ".", exc.strerror or str(exc))
        return []
    sink.enter_dir(rel_dir)
    prefix = f"{rel_dir}/" if rel_dir else ""
    subdirs: list[tuple[str, str]] = []
    jobs = ((batch, sink.vouched(batch)) for batch in _batches(names))
    for answer in pool.map(directory, jobs):
        for result in answer:
            if _record(result, directory, prefix, sink):
                subdirs.append((prefix + str(result[1]), f"{directory}/{result[1]}"))
    return subdirs


def _batches(names: list[str]) -> Iterator[list[str]]:
    """Slices of at most BATCH_NAMES names and BATCH_NAME_BYTES characters: a job frame
    stays far below a pipe's buffer (see scan_pool.py)."""
    batch: list[str] = []
    size = 0
    for name in names:
        if batch and (len(batch) == BATCH_NAMES or size + len(name) > BATCH_NAME_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(name)
        size += len(name)
    if batch:
        yield batch


def _record(result: Result, directory: str, prefix: str, sink: TreeSink) -> bool:
    """Hand one scan result to the sink; True for a directory (its block comes later)."""
    kind, name = result[0], str(result[1])
    rel = prefix + name
    if kind == "e":
        sink.add_error(rel, str(result[2]))
        return False
    meta = FileMeta(*result[2])  # type: ignore[misc]
    if kind == "u":
        sink.add_unchanged(rel, meta)
    elif kind == "f":
        sink.add_file(rel, meta, (result[3],), str(result[4]))  # type: ignore[arg-type]
    elif kind == "b":
        _add_big_file(f"{directory}/{name}", rel, meta, sink)
    elif kind == "l":
        sink.add_symlink(rel, meta, str(result[3]))
    else:
        sink.add_dir(rel, meta)
        return True
    return False


def _add_big_file(path: str, rel: str, meta: FileMeta, sink: TreeSink) -> None:
    try:
        sink.add_file(rel, meta, read_chunks(path, meta.size))
    except OSError as exc:
        sink.add_error(rel, exc.strerror or str(exc))
def read_chunks(path: str, size_hint: int) -> Iterator[bytes]:
    """A file's bytes in chunks, never following a symlink swapped in after the walk.

    The first read asks for the size ``stat`` reported plus one byte: ``os.read`` allocates
    what it is asked for, and a fixed 4 MiB buffer per small file (an mmap and munmap each)
    costs more than reading the file. A file of exactly the stat size ends there; one that
    grew or shrank since is read on until end of file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunk = os.read(fd, min(size_hint + 1, READ_CHUNK))
        if chunk:
            yield chunk
        if len(chunk) == size_hint:
            return
        while chunk := os.read(fd, READ_CHUNK):
            yield chunk
    finally:
        os.close(fd)

