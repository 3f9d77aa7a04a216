"""The index: which pack holds which blob.

The repository stores one ``index`` object per backup run (``{"packs": [PackRecord...]}``).
Locally, ``IndexCache`` mirrors them in SQLite under ``state_dir`` so lookups cost no memory
that grows with the repository (a million blobs would not fit the daemon's memory budget as a
Python dict) and a daemon does not re-read every index object on every run.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wicked_dr.errors import IntegrityError
from wicked_dr.log import get_logger
from wicked_dr.repository.packs import PackRecord
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)

# Version 2: blobs refer to packs by a small integer, not by their 64-character id (a third
# of the row, which makes the ~100 k inserts of a backup markedly cheaper).
CACHE_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    raw_size INTEGER NOT NULL, stored_size INTEGER NOT NULL, index_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS loaded (index_id TEXT PRIMARY KEY) WITHOUT ROWID;
"""


_HAS_QUERY = "SELECT 1 FROM blobs WHERE id=?"
RUN_FILTER_BITS = 1 << 24  # 2 MiB; about 6 % false positives at a million blobs
RUN_SET_MAX = 100_000  # about 14 MiB of Python set (hex ids) before spilling to the temp table


def _filter_position(key: bytes) -> tuple[int, int]:
    """Byte index and bit mask of a blob id in the run filter (ids are uniform hashes)."""
    n = int.from_bytes(key[:3], "big")
    return n >> 3, 1 << (n & 7)


@dataclass(frozen=True)
class BlobRef:
    """A blob's pack and position."""

    pack_id: str
    offset: int
    length: int


class IndexCache:
    """A local SQLite mirror of every index object in one repository."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _connect(path)
        except sqlite3.DatabaseError:
            # A cache damaged by a crash is rebuilt from the repository's index objects.
            log.warning("index cache unreadable; rebuilding it", path=str(path))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self._db = _connect(path)
        # Blobs in this run's staged packs: trusted for dedup within the run only, never
        # persisted, because those packs may never reach the repository. The first
        # RUN_SET_MAX live in a set (fast); beyond, a temp table behind a one-hash bit filter
        # that answers most misses without a query, so memory stays flat at a million blobs.
        self._db.execute("CREATE TEMP TABLE run_blobs (id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._run_set: set[str] = set()
        self._run_filter = bytearray(RUN_FILTER_BITS // 8)
        self._spilled = False  # whether run_blobs holds anything
        self._empty = self._db.execute("SELECT 1 FROM blobs LIMIT 1").fetchone() is None

    @classmethod
    def for_repository(cls, repo: Repository, state_dir: Path) -> IndexCache:
        """The cache of ``repo``, brought up to date with its index objects."""
        cache = cls(state_dir / "cache" / repo.repo_id / "index.sqlite")
        cache.sync(repo)
        return cache

    def close(self) -> None:
        self._db.close()

    def sync(self, repo: Repository) -> None:
        """Load index objects not seen yet; start over when one disappeared (pruned)."""
        stored = set(repo.list_ids("index"))
        loaded = {row[0] for row in self._db.execute("SELECT index_id FROM loaded")}
        if loaded - stored:
            log.info("index cache reset: index objects were removed", removed=len(loaded - stored))
            self._db.executescript("DELETE FROM blobs; DELETE FROM packs; DELETE FROM loaded;")
            loaded = set()
        for index_id in sorted(stored - loaded):
            self.add_index(index_id, repo.load("index", index_id))
        self._empty = self._db.execute("SELECT 1 FROM blobs LIMIT 1").fetchone() is None

    def add_index(self, index_id: str, plaintext: bytes) -> None:
        """Record an index object (its plaintext), e.g. one this process just wrote."""
        packs, blobs = _index_rows(index_id, plaintext)
        # Sorted by blob id, the inserts walk the B-tree left to right instead of at random
        # pages: about twice as fast for a backup's ~100 k new blobs.
        blobs.sort()
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO packs (id, raw_size, stored_size, "
                                 "index_id) VALUES (?,?,?,?)", packs)
            numbers = {pack_id: self._pack_number(pack_id) for pack_id, *_ in packs}
            self._db.executemany("INSERT OR IGNORE INTO blobs VALUES (?,?,?,?)",
                                 ((key, numbers[pack], o, n) for key, pack, o, n in blobs))
            self._db.execute("INSERT OR IGNORE INTO loaded VALUES (?)", (index_id,))
        self._empty = self._empty and not blobs

    def _pack_number(self, pack_id: str) -> int:
        return int(self._db.execute("SELECT n FROM packs WHERE id=?", (pack_id,)).fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def lookup(self, blob_id: str) -> BlobRef | None:
        """Where ``blob_id`` is stored, or None."""
        row = self._db.execute("SELECT p.id, b.offset, b.length FROM blobs b JOIN packs p "
                               "ON p.n = b.pack WHERE b.id=?",
                               (bytes.fromhex(blob_id),)).fetchone()
        return BlobRef(row[0], row[1], row[2]) if row else None

    def has(self, blob_id: str) -> bool:
        """Whether the repository (or this run) already holds ``blob_id``."""
        if blob_id in self._run_set:
            return True
        key = bytes.fromhex(blob_id)
        if self._spilled:
            byte, bit = _filter_position(key)
            if self._run_filter[byte] & bit and self._db.execute(
                    "SELECT 1 FROM run_blobs WHERE id=?", (key,)).fetchone() is not None:
                return True
        if self._empty:  # a first backup asks ~100 k times; skip the queries
            return False
        return self._db.execute(_HAS_QUERY, (key,)).fetchone() is not None

    def mark_written(self, blob_ids: list[str]) -> None:
        """Remember blobs of this run's packs (not trusted across runs until indexed)."""
        if len(self._run_set) + len(blob_ids) <= RUN_SET_MAX:
            self._run_set.update(blob_ids)
            return
        keys = [bytes.fromhex(b) for b in blob_ids]
        self._spilled = True
        for key in keys:
            byte, bit = _filter_position(key)
            self._run_filter[byte] |= bit
        self._db.executemany("INSERT OR IGNORE INTO run_blobs VALUES (?)",
                             ((k,) for k in keys))

    def pack_raw_size(self, pack_id: str) -> int | None:
        """The plaintext size of a pack, the bound for decompressing it."""
        row = self._db.execute("SELECT raw_size FROM packs WHERE id=?", (pack_id,)).fetchone()
        return int(row[0]) if row else None



def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # A cache, rebuilt from the repository when lost: durability buys nothing here.
    db.execute("PRAGMA synchronous=OFF")
    # 16 MiB of page cache: the ~100 k inserts of a 20 k-user backup stay in memory until
    # the commit; more only raises the peak memory of a million-file backup.
    db.execute("PRAGMA cache_size=-16384")
    # One transaction, so two processes opening a new cache at once cannot drop each other's
    # tables.
    db.execute("BEGIN IMMEDIATE")
    if db.execute("PRAGMA user_version").fetchone()[0] != CACHE_VERSION:
        # Another layout (an older wicked-dr): start over; sync() reloads every index object.
        for table in ("blobs", "packs", "loaded"):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"PRAGMA user_version={CACHE_VERSION}")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("COMMIT")
    db.execute("SELECT 1 FROM blobs LIMIT 1").fetchone()
    return db


def read_index(repo: Repository, index_id: str) -> list[PackRecord]:
    """The packs an index object describes."""
    return parse_index(index_id, repo.load("index", index_id))


def parse_index(index_id: str, plaintext: bytes) -> list[PackRecord]:
    """The packs described by an index object's plaintext."""
    try:
        return [PackRecord.from_json(p) for p in json.loads(plaintext)["packs"]]
    except (KeyError, TypeError, ValueError, IndexError):
        raise IntegrityError(f"index object {index_id} is malformed") from None


def _index_rows(index_id: str, plaintext: bytes,
                ) -> tuple[list[tuple[str, int, int, str]], list[tuple[bytes, str, int, int]]]:
    """The rows of the ``packs`` and ``blobs`` tables for one index object."""
    packs = parse_index(index_id, plaintext)
    try:
        blobs = [(bytes.fromhex(b.blob_id), p.pack_id, b.offset, b.length)
                 for p in packs for b in p.blobs]
    except ValueError:
        raise IntegrityError(f"index object {index_id} is malformed") from None
    return [(p.pack_id, p.raw_size, p.stored_size, index_id) for p in packs], blobs


def index_document(packs: list[PackRecord]) -> bytes:
    """The plaintext of an index object: compact JSON, keys sorted. Formatted by hand (ids
    are hex, sizes integers: nothing to escape) because a backup writes ~100 k blob rows."""
    return ('{"packs":[' + ",".join(_pack_json(p) for p in packs) + "]}").encode()


def _pack_json(pack: PackRecord) -> str:
    blobs = ",".join(f'["{b.blob_id}",{b.offset},{b.length}]' for b in pack.blobs)
    return (f'{{"blobs":[{blobs}],"id":"{pack.pack_id}","raw_size":{pack.raw_size},'
            f'"stored_size":{pack.stored_size}}}')
