"""Snapshot manifests: sorted file entries in chunked ``tree`` objects, and the snapshot object.

Entries come one directory block at a time (a directory's direct children, names ascending;
blocks in ascending order of their directory's path components, the root's first), which
lets a backup scan a directory in parallel batches and merge-join it with the previous
snapshot's stat cache without holding either in memory.
"""

from __future__ import annotations

import heapq
import json
import stat as statmod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.repository.entry_lines import dir_line, file_line, symlink_line
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot

TREE_CHUNK_ENTRIES = 16384  # ~4 MiB of plaintext: few PUTs per backup, bounded memory
# What an entry's numbers may be (docs/format.md section 7): a snapshot is data from a store
# that may be damaged or hostile, and restore hands these numbers to chmod, chown and utime.
MAX_MODE = 0o7777                   # permission bits only
MAX_ID = 2**32 - 2                  # uid_t/gid_t; 2**32 - 1 means "leave unchanged" to chown
MAX_SIZE = 2**63 - 1
MIN_MTIME_NS, MAX_MTIME_NS = -(2**63) * 10**9, (2**63 - 1) * 10**9  # a 64-bit time_t
# Bits no restored file may carry: a setuid/setgid file restored as root would run with
# whatever owner a forged entry names. (A setgid directory only passes its group on.)
FORBIDDEN_FILE_BITS = statmod.S_ISUID | statmod.S_ISGID
# The mode bits restore and export give an entry: never setuid, setgid or sticky.
PERMISSION_BITS = 0o777


class EntryError(ValueError):
    """A manifest entry whose values no file can have."""


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
        """The entry a manifest line describes; EntryError for values out of range."""
        mode, uid, gid, mtime_ns = doc["mode"], doc["uid"], doc["gid"], doc["mtime_ns"]
        size = doc.get("size", 0)
        sha, target = doc.get("sha256"), doc.get("target")
        blobs = tuple(doc["blobs"]) if "blobs" in doc else implied_blobs(size, sha)
        # One expression for the common case; _entry_error finds the culprit.
        if not (type(mode) is int and 0 <= mode <= MAX_MODE
                and type(uid) is int and 0 <= uid <= MAX_ID
                and type(gid) is int and 0 <= gid <= MAX_ID
                and type(mtime_ns) is int and MIN_MTIME_NS <= mtime_ns <= MAX_MTIME_NS
                and type(size) is int and 0 <= size <= MAX_SIZE
                and (sha is None or type(sha) is str)
                and (target is None or type(target) is str)
                and all(type(b) is str for b in blobs)):
            raise _entry_error(doc)
        return cls(str(doc["path"]), str(doc["type"]), mode, uid, gid, mtime_ns, size, sha,
                   blobs, target)


def _entry_error(doc: dict[str, Any]) -> EntryError:
    """What is wrong with an entry ``Entry.from_json`` refused."""
    where = f"entry {doc.get('path')!r}"
    ranges = {"mode": (0, MAX_MODE), "uid": (0, MAX_ID), "gid": (0, MAX_ID),
              "mtime_ns": (MIN_MTIME_NS, MAX_MTIME_NS), "size": (0, MAX_SIZE)}
    for key, (low, high) in ranges.items():
        value = doc.get(key, 0)
        if type(value) is not int:
            return EntryError(f"{where}: {key} {value!r} is not an integer")
        if not low <= value <= high:
            return EntryError(f"{where}: {key} {value} is out of range")
    return EntryError(f"{where}: sha256, target or blobs is not text")


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


def decode_tree(tree_id: str, plaintext: bytes, snapshot_id: str | None = None) -> list[Entry]:
    """The entries of one tree object (of ``snapshot_id``, named in errors)."""
    where = f"tree object {tree_id}"
    if snapshot_id is not None:
        where = f"snapshot {snapshot_id}: {where}"
    try:
        return [Entry.from_json(json.loads(line)) for line in plaintext.splitlines() if line]
    except EntryError as exc:
        raise IntegrityError(f"{where}: {exc} (the snapshot is damaged or was tampered "
                             "with); refused") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"{where} is malformed") from None


def check_relative(rel: str) -> None:
    """Refuse a manifest path that is absolute, empty, or has ``.``/``..`` components."""
    if (not rel or rel.startswith("/") or "\0" in rel
            or any(p in ("", ".", "..") for p in rel.split("/"))):
        raise IntegrityError(f"manifest entry {rel!r} would land outside the target; refused")


class EntryRules:
    """The rules every reader applies to a snapshot's entries, in manifest order
    (docs/format.md section 7): restore, export and check alike.

    A path is relative and normal (``check_relative``), appears once, and lies in a directory
    that is an entry of the snapshot (the root aside), so nothing is written through a
    symlink. With ``modes`` (check), a file or symlink carrying setuid or setgid is a problem
    too; restore and export drop those bits instead of refusing the snapshot. Holds every
    path seen."""

    def __init__(self, *, modes: bool = False) -> None:
        self._modes = modes
        self._dirs: set[str] = {""}
        self._seen: set[str] = set()

    def problem(self, entry: Entry) -> str | None:
        """What is wrong with ``entry``, given the entries before it; None when nothing."""
        rel = entry.path
        try:
            check_relative(rel)
        except IntegrityError as exc:
            return str(exc)
        if rel in self._seen:
            return f"manifest entry {rel!r} appears more than once; refused"
        self._seen.add(rel)
        if rel.rpartition("/")[0] not in self._dirs:
            return f"manifest entry {rel!r} has no directory entry for its parent; refused"
        if entry.type == "dir":
            self._dirs.add(rel)
        elif self._modes and entry.mode & FORBIDDEN_FILE_BITS:
            return (f"manifest entry {rel!r}: mode {entry.mode:o} has the setuid or setgid "
                    "bit; refused")
        return None


def iter_entries(repo: Repository, snapshot: Snapshot, *,
                 on_problem: Callable[[str], None] | None = None,
                 check_modes: bool = False) -> Iterator[Entry]:
    """Every entry of a snapshot's file tree, in manifest order, one tree object in memory at
    a time. A tree object the snapshot names but the repository lacks is damage:
    IntegrityError. An entry breaking ``EntryRules`` is an IntegrityError too, or, with
    ``on_problem``, handed to it (every entry is still yielded): ``check`` reports them all."""
    snapshot_id = snapshot.id
    rules = EntryRules(modes=check_modes)
    for tree_id in snapshot.trees:
        try:
            plaintext = repo.load("tree", tree_id)
        except NotFoundError:
            raise IntegrityError(f"snapshot {snapshot_id}: tree object {tree_id} is missing "
                                 "from the repository") from None
        for entry in decode_tree(tree_id, plaintext, snapshot_id):
            problem = rules.problem(entry)
            if problem is not None:
                if on_problem is None:
                    raise IntegrityError(f"snapshot {snapshot_id}: {problem}")
                on_problem(problem)
            yield entry
