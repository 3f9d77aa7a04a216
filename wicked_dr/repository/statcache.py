"""The local stat cache: what each file looked like at the previous snapshot.

An unchanged file then costs one ``lstat`` in a scan worker, and its cached manifest line is
reused as it is. The cache is a zstd-compressed text file per snapshot under
``state_dir/cache/<repo-id>/stat/``, in manifest order, read by a cursor that only moves
forward (a merge-join, so memory does not grow with the volume).

Format 3, after a JSON header line::

    /<directory>                                   the block of that directory's children
    <name> TAB <size>:<mtime_ns>:<ctime_ns>:<inode> TAB <manifest line of the file>

Blocks come in ascending order of their directory's path components (``/`` alone is the
root), names ascending within a block. Names and directories are JSON-quoted only when they
start with a quote or hold a tab, newline or carriage return (``entry_lines.field``).

The header names the index cache's ``epoch`` the cache was written under: a cache vouches
for its files' blobs only while the index has lost none of them since (``IndexCache.epoch``
changes when index objects disappear or a pack is found damaged), so a backup never
references a blob the repository's index no longer lists.

Racy timestamps (git's rule): a file whose mtime is not safely older than the previous scan's
start may have changed within the same timestamp tick; the scan re-reads it.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import zstandard

from wicked_dr.repository.entry_lines import field, unfield
from wicked_dr.repository.manifest import dir_key

FORMAT = 3

# Filesystem timestamps can be coarse (ext4 without nanoseconds, overlayfs, NFS): treat
# anything modified within this much of the previous scan's start as racy.
RACY_WINDOW_NS = 2_000_000_000


class StatCacheWriter:
    """Streams the stat lines of the snapshot being written."""

    def __init__(self, directory: Path, snapshot_id: str, scan_start_ns: int,
                 defer: Callable[..., None] | None = None, *, index_epoch: str = "") -> None:
        """``defer(function, *args)``, when given, runs the compression and writes later, in
        order, e.g. on a background thread (``commit`` and ``abort`` come after it ran)."""
        directory.mkdir(parents=True, exist_ok=True)
        self._defer = defer
        self._final = directory / f"{snapshot_id}.stat.zst"
        self._tmp = directory / f".{snapshot_id}.tmp"
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._out: IO[bytes] = zstandard.ZstdCompressor(level=1).stream_writer(self._raw)
        header = {"snapshot": snapshot_id, "scan_start_ns": scan_start_ns, "format": FORMAT,
                  "index_epoch": index_epoch}
        self._lines: list[str] = [json.dumps(header, separators=(",", ":")) + "\n"]
        self._buffered = 0
        self._finished = False

    @property
    def path(self) -> Path:
        """Where the cache is being written (complete once ``finish`` returned)."""
        return self._tmp

    def enter_dir(self, rel_dir: str) -> None:
        self.add("/" + field(rel_dir) + "\n")

    def add(self, text: str) -> None:
        """Lines made by ``entry_lines.stat_line``, in order."""
        self._lines.append(text)
        self._buffered += len(text)
        if self._buffered >= 1 << 20:  # compress in pieces of about 1 MiB
            self._flush()

    def _flush(self, *, now: bool = False) -> None:
        text = "".join(self._lines)
        self._lines, self._buffered = [], 0
        if self._defer is None or now:
            self._write(text)
        else:
            self._defer(self._write, text)

    def _write(self, text: str) -> None:
        self._out.write(text.encode())

    def finish(self) -> None:
        """Complete the file under its temporary name: readable (``StatCacheReader(path)``),
        not yet the next backup's. Deferred writes must have run."""
        if not self._finished:
            self._flush(now=True)
            self._out.close()
            self._finished = True

    def commit(self) -> None:
        """Make the cache usable by the next backup (only after the snapshot exists)."""
        self.finish()
        os.replace(self._tmp, self._final)
        for old in self._final.parent.iterdir():
            if old != self._final and not old.name.startswith("."):
                old.unlink(missing_ok=True)  # older snapshots' caches, older formats too

    def abort(self) -> None:
        if not self._finished:
            self._out.close()
        self._tmp.unlink(missing_ok=True)


def _name(line: str) -> str:
    """The file name a stat-cache line starts with."""
    name = line.partition("\t")[0]
    return unfield(name) if name.startswith('"') else name


class StatCacheReader:
    """A forward-only cursor over a previous snapshot's stat lines."""

    def __init__(self, path: Path) -> None:
        self._stream = io.TextIOWrapper(
            zstandard.ZstdDecompressor().stream_reader(open(path, "rb")),  # noqa: SIM115
            encoding="utf-8", newline="\n")
        header = json.loads(self._stream.readline())
        if header.get("format") != FORMAT:
            raise ValueError("stat cache of another wicked-dr version: not used")
        self.snapshot_id: str = header["snapshot"]
        self.scan_start_ns: int = header["scan_start_ns"]
        self.index_epoch: str = str(header.get("index_epoch", ""))
        self._pushback: list[str] = []  # lines read past a block's end, to be read again
        self._in_block = False
        self._ahead: list[str] = []  # lines of the open block read but not taken yet

    @classmethod
    def latest(cls, directory: Path, snapshot_id: str | None) -> StatCacheReader | None:
        """The cache of ``snapshot_id`` if this machine has it."""
        if snapshot_id is None:
            return None
        try:
            return cls(directory / f"{snapshot_id}.stat.zst")
        except (OSError, ValueError, KeyError, zstandard.ZstdError):
            return None

    def enter_dir(self, rel_dir: str) -> None:
        """Move to the block of ``rel_dir`` (blocks of directories that are gone are skipped)."""
        wanted = dir_key(rel_dir)
        self._in_block = False
        self._ahead = []
        while line := self._next_lines(1):
            if line[0].startswith("/"):
                here = dir_key(unfield(line[0][1:-1]))
                if here == wanted:
                    self._in_block = True
                    return
                if here > wanted:
                    self._pushback[:0] = line
                    return

    def take_until(self, last_name: str) -> list[str]:
        """The lines of the open block up to and including ``last_name`` (names ascending
        across calls), for the scan to align with a batch of the directory's names.

        Lines are read ahead in chunks and the boundary found by bisection: only a few
        names per batch are parsed to find it."""
        while self._in_block and (not self._ahead or _name(self._ahead[-1]) <= last_name):
            self._read_ahead()
        cut = bisect.bisect_right(self._ahead, last_name, key=_name)
        taken, self._ahead = self._ahead[:cut], self._ahead[cut:]
        return taken

    def _read_ahead(self, count: int = 256) -> None:
        """Up to ``count`` more lines of the open block, which ends at a header or EOF."""
        chunk = self._next_lines(count)
        if not chunk:
            self._in_block = False
        for i, line in enumerate(chunk):
            if line.startswith("/"):
                self._ahead.extend(chunk[:i])
                self._pushback[:0] = chunk[i:]
                self._in_block = False
                return
        self._ahead.extend(chunk)

    def _next_lines(self, count: int) -> list[str]:
        lines = self._pushback[:count]
        del self._pushback[:count]
        if len(lines) < count:
            lines.extend(itertools.islice(self._stream, count - len(lines)))
        return lines

    def close(self) -> None:
        self._stream.close()
