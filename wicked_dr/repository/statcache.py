"""The local stat cache: what each file looked like at the previous snapshot.

An unchanged file then costs one ``lstat`` (in a scan worker) and no parsing here: the cache
line holds the file's manifest line, which is reused as it is. The cache is a zstd-compressed
text file per snapshot under ``state_dir/cache/<repo-id>/stat/``, in manifest order, read by
a cursor that only moves forward (a merge-join, so memory does not grow with the volume).

Format 3, after a JSON header line::

    /<directory>                                  the block of that directory's children
    <name> TAB size TAB mtime_ns TAB ctime_ns TAB inode TAB <manifest line of the file>

Blocks come in ascending order of their directory's path components (``/`` alone is the
root), names ascending within a block. Names and directories are JSON-quoted only when they
start with a quote or hold a tab, newline or carriage return.

Racy timestamps (git's rule): a file whose mtime is not safely older than the previous scan's
start may have changed within the same timestamp tick, so it is not vouched for.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

import zstandard

from wicked_dr.repository.manifest import dir_key

FORMAT = 3
Key = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


class Cached(NamedTuple):
    """A file as the previous snapshot saw it."""

    key: Key
    line: str  # its whole cache line, reused verbatim while the file is unchanged
    manifest_line: str  # its manifest line, likewise
_quote = json.encoder.encode_basestring_ascii

# Filesystem timestamps can be coarse (ext4 without nanoseconds, overlayfs, NFS): treat
# anything modified within this much of the previous scan's start as racy.
RACY_WINDOW_NS = 2_000_000_000


def _field(text: str) -> str:
    """A name or directory as a field: JSON-quoted only when it needs to be."""
    if text.startswith('"') or "\t" in text or "\n" in text or "\r" in text:
        return str(_quote(text))
    return text


def _unfield(field: str) -> str:
    return str(json.loads(field)) if field.startswith('"') else field


def stat_line(name: str, key: Key, manifest_line: str) -> str:
    """The cache line of one file (``manifest_line`` ends with a newline)."""
    size, mtime_ns, ctime_ns, inode = key
    return f"{_field(name)}\t{size}\t{mtime_ns}\t{ctime_ns}\t{inode}\t{manifest_line}"


class StatCacheWriter:
    """Streams the stat lines of the snapshot being written."""

    def __init__(self, directory: Path, snapshot_id: str, scan_start_ns: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._final = directory / f"{snapshot_id}.stat.zst"
        self._tmp = directory / f".{snapshot_id}.tmp"
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._out: IO[bytes] = zstandard.ZstdCompressor(level=1).stream_writer(self._raw)
        header = {"snapshot": snapshot_id, "scan_start_ns": scan_start_ns, "format": FORMAT}
        self._lines: list[str] = [json.dumps(header, separators=(",", ":")) + "\n"]

    def enter_dir(self, rel_dir: str) -> None:
        self._add("/" + _field(rel_dir) + "\n")

    def add(self, line: str) -> None:
        """A line made by ``stat_line`` (or reused from the previous cache)."""
        self._add(line)

    def _add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= 4096:
            self._flush()

    def _flush(self) -> None:
        self._out.write("".join(self._lines).encode())
        self._lines = []

    def commit(self) -> None:
        """Make the cache usable by the next backup (only after the snapshot exists)."""
        self._flush()
        self._out.close()
        os.replace(self._tmp, self._final)
        for old in self._final.parent.iterdir():
            if old != self._final and not old.name.startswith("."):
                old.unlink(missing_ok=True)  # older snapshots' caches, older formats too

    def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)


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
        self._line = self._stream.readline()  # the line under the cursor ("" at the end)
        self._in_block = False

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
        while self._line:
            if self._line.startswith("/"):
                here = dir_key(_unfield(self._line[1:-1]))
                if here == wanted:
                    self._line = self._stream.readline()
                    self._in_block = True
                    return
                if here > wanted:
                    return
            self._line = self._stream.readline()

    def vouch(self, names: Sequence[str]) -> list[Cached | None]:
        """Per name (ascending, across calls within one block): what the cache knows."""
        racy_from = self.scan_start_ns - RACY_WINDOW_NS
        return [self._find(name, racy_from) for name in names]

    def _find(self, name: str, racy_from: int) -> Cached | None:
        while self._in_block and self._line:
            if self._line.startswith("/"):
                self._in_block = False
                return None
            fields = self._line.split("\t", 5)
            here = _unfield(fields[0])
            if here < name:
                self._line = self._stream.readline()
                continue
            if here > name:
                return None
            line, self._line = self._line, self._stream.readline()
            key = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4]))
            # A file changed within the timestamp tick of the last scan may look unchanged.
            return None if key[1] >= racy_from else Cached(key, line, fields[5])
        return None

    def close(self) -> None:
        self._stream.close()
