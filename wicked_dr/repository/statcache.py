"""The local stat cache: what each file looked like at the previous snapshot.

An unchanged file then costs one ``stat``. The cache is a zstd-compressed JSON-lines file per
snapshot under ``state_dir/cache/<repo-id>/stat/``, sorted like the manifest, read by a cursor
that only moves forward (a merge-join, so memory does not grow with the volume).
Racy timestamps (git's rule): a file whose mtime is not safely older than the previous scan's
start may have changed within the same timestamp tick, so it is re-read.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from wicked_dr.repository.manifest import sort_key

_quote = json.encoder.encode_basestring_ascii


def _field_path(path: str) -> str:
    """The path as a tab-separated field: JSON-quoted only when it needs to be."""
    if path.startswith('"') or "\t" in path or "\n" in path or "\r" in path:
        return str(_quote(path))
    return path

# Filesystem timestamps can be coarse (ext4 without nanoseconds, overlayfs, NFS): treat
# anything modified within this much of the previous scan's start as racy.
RACY_WINDOW_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class StatRecord:
    """A file's identity at the previous snapshot and its content address."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str
    blobs: tuple[str, ...]

    def matches(self, st: os.stat_result) -> bool:
        """Whether ``st`` shows the same file, unchanged."""
        return (st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
                and st.st_ctime_ns == self.ctime_ns and st.st_ino == self.inode)


class StatCacheWriter:
    """Streams the stat records of the snapshot being written."""

    def __init__(self, directory: Path, snapshot_id: str, scan_start_ns: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._final = directory / f"{snapshot_id}.jsonl.zst"
        self._tmp = directory / f".{snapshot_id}.tmp"
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._out: IO[bytes] = zstandard.ZstdCompressor(level=1).stream_writer(self._raw)
        self._write({"snapshot": snapshot_id, "scan_start_ns": scan_start_ns, "format": 2})

    def _write(self, doc: object) -> None:
        self._out.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")

    def add(self, rec: StatRecord) -> None:
        # Tab-separated, 100 k lines per run: much cheaper than JSON to write and to parse.
        self._out.write(f"{_field_path(rec.path)}\t{rec.size}\t{rec.mtime_ns}\t{rec.ctime_ns}\t"
                        f"{rec.inode}\t{rec.sha256}\t{','.join(rec.blobs)}\n".encode())

    def commit(self) -> None:
        """Make the cache usable by the next backup (only after the snapshot exists)."""
        self._out.close()
        os.replace(self._tmp, self._final)
        for old in self._final.parent.glob("*.jsonl.zst"):
            if old != self._final:
                old.unlink(missing_ok=True)

    def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)


class StatCacheReader:
    """A forward-only cursor over a previous snapshot's stat records."""

    def __init__(self, path: Path) -> None:
        self._stream = io.TextIOWrapper(
            zstandard.ZstdDecompressor().stream_reader(open(path, "rb")),  # noqa: SIM115
            encoding="utf-8")
        header = json.loads(self._stream.readline())
        if header.get("format") != 2:
            raise ValueError("stat cache of an older wicked-dr: not used")
        self.snapshot_id: str = header["snapshot"]
        self.scan_start_ns: int = header["scan_start_ns"]
        self._records = self._iter()
        self._current: StatRecord | None = next(self._records, None)

    @classmethod
    def latest(cls, directory: Path, snapshot_id: str | None) -> StatCacheReader | None:
        """The cache of ``snapshot_id`` if this machine has it."""
        if snapshot_id is None:
            return None
        path = directory / f"{snapshot_id}.jsonl.zst"
        try:
            return cls(path)
        except (OSError, ValueError, KeyError, zstandard.ZstdError):
            return None

    def _iter(self) -> Iterator[StatRecord]:
        for line in self._stream:
            p, size, mtime, ctime, ino, sha, blobs = line.rstrip("\n").split("\t")
            yield StatRecord(json.loads(p) if p.startswith('"') else p, int(size), int(mtime),
                             int(ctime), int(ino), sha, tuple(blobs.split(",")) if blobs else ())

    def find(self, path: str) -> StatRecord | None:
        """The record for ``path``; callers ask in manifest order."""
        current = self._current
        if current is None or current.path != path:
            key = sort_key(path)
            while current is not None and sort_key(current.path) < key:
                current = next(self._records, None)
            self._current = current
            if current is None or current.path != path:
                return None
        # Paths are unique and ascending: step past the match, so the next lookup of a walk
        # that runs in step with the cache is one string comparison.
        self._current = next(self._records, None)
        return current

    def is_racy(self, st: os.stat_result) -> bool:
        """Whether the file changed too close to the previous scan to trust its stat."""
        return st.st_mtime_ns >= self.scan_start_ns - RACY_WINDOW_NS

    def close(self) -> None:
        self._stream.close()
