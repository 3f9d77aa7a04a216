"""Snapshot manifests: sorted file entries in chunked ``tree`` objects, and the snapshot object.

Entries come one directory block at a time (a directory's direct children, names ascending;
blocks in ascending order of their directory's path components, the root's first), which
lets a backup scan a directory in parallel batches and merge-join it with the previous
snapshot's stat cache without holding either in memory.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from wicked_dr.errors import IntegrityError
from wicked_dr.repository.entry_lines import dir_line, file_line, symlink_line
from wicked_dr.repository.repo import Repository

TREE_CHUNK_ENTRIES = 16384  # ~4 MiB of plaintext: few PUTs per backup, bounded memory


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink of a snapshot."""

    path: str
    type: str  # "file", "dir" or "symlink"
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    blobs: tuple[str, ...] = ()
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode,
                               "uid": self.uid, "gid": self.gid, "mtime_ns": self.mtime_ns}
        if self.type == "file":
            doc["size"] = self.size
            doc["sha256"] = self.sha256
            if self.blobs != implied_blobs(self.size, self.sha256):
                doc["blobs"] = list(self.blobs)
        if self.type == "symlink":
            doc["target"] = self.target
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Entry:
        size = int(doc.get("size", 0))
        sha = doc.get("sha256")
        blobs = tuple(doc["blobs"]) if "blobs" in doc else implied_blobs(size, sha)
        return cls(str(doc["path"]), str(doc["type"]), int(doc["mode"]), int(doc["uid"]),
                   int(doc["gid"]), int(doc["mtime_ns"]), size, sha, blobs, doc.get("target"))


def implied_blobs(size: int, sha256: str | None) -> tuple[str, ...]:
    """A file of one blob omits ``blobs``: its single blob id is its SHA-256."""
    if size == 0 or sha256 is None:
        return ()
    return (sha256,)


def dir_key(rel_dir: str) -> tuple[str, ...]:
    """The order of directory blocks: by path components, the root (``""``) first."""
    return tuple(rel_dir.split("/")) if rel_dir else ()


def sort_key(path: str) -> tuple[tuple[str, ...], str]:
    """The manifest order (snapshot version 2): by directory block, then by name."""
    parent, _, name = path.rpartition("/")
    return (dir_key(parent), name)


def depth_first_order(entries: Iterable[Entry], snapshot_version: int) -> Iterator[Entry]:
    """The entries with each directory's own entry moved to just before its block, so that a
    directory's whole subtree follows it without interruption (what ``tar -x`` expects to
    restore directory times). Version 1 snapshots are in that order already."""
    if snapshot_version < 2:
        yield from entries
        return
    held: list[tuple[tuple[str, ...], Entry]] = []  # directories whose block is still ahead
    block: str | None = None
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        if parent != block:
            block, here = parent, dir_key(parent)
            while held and held[0][0] <= here:  # this block's directory, or empty ones passed
                yield heapq.heappop(held)[1]
        if entry.type == "dir":
            heapq.heappush(held, (dir_key(entry.path), entry))
        else:
            yield entry
    while held:
        yield heapq.heappop(held)[1]


def encode_tree(entries: list[Entry]) -> bytes:
    """A tree object's plaintext: one JSON entry per line."""
    return "".join(encode_entry(e) for e in entries).encode()


def encode_entry(e: Entry) -> str:
    """One entry as a JSON line (``entry_lines`` formats it: scan workers use the same code)."""
    if e.type == "file":
        implied = e.blobs == implied_blobs(e.size, e.sha256)
        return file_line(e.path, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.sha256 or "",
                         None if implied else e.blobs)
    if e.type == "symlink":
        return symlink_line(e.path, e.mode, e.uid, e.gid, e.mtime_ns, e.target or "")
    return dir_line(e.path, e.mode, e.uid, e.gid, e.mtime_ns)


def decode_tree(tree_id: str, plaintext: bytes) -> list[Entry]:
    """The entries of one tree object."""
    try:
        return [Entry.from_json(json.loads(line)) for line in plaintext.splitlines() if line]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"tree object {tree_id} is malformed") from None


def iter_entries(repo: Repository, snapshot: dict[str, Any]) -> Iterator[Entry]:
    """Every entry of a snapshot, in manifest order, one tree object in memory at a time."""
    for tree_id in snapshot.get("trees", []):
        yield from decode_tree(tree_id, repo.load("tree", tree_id))
