"""The index: which pack holds which blob.

The repository stores one ``index`` object per backup run (``{"packs": [PackRecord...]}``).
Locally, ``IndexCache`` mirrors them in SQLite under ``state_dir`` so lookups cost no memory
that grows with the repository (a million blobs would not fit the daemon's memory budget as a
Python dict) and a daemon does not re-read every index object on every run.

A pack's blob rows are not inserted with a plain ``executemany`` but made by SQLite from one
parameter (``_INSERT_BLOBS``, a recursive CTE), because a backup inserts ~100 k rows on the
metadata thread while the scan runs: for the 91 318 blobs of a 20 000-user volume it took
0.10-0.19 s against 0.29-0.50 s, and 0.10-0.14 s of that thread's CPU against 0.25-0.35 s
(``bench/bench_mechanisms.py``, medians of 3 in five runs on a loaded 2-CPU machine).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wicked_dr.errors import IntegrityError, LockedError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.repository.damage import damaged_pack_ids
from wicked_dr.repository.packs import PackRecord, blob_rows_json
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)

# Version 2: blobs refer to packs by a small integer, not by their 64-character id (a third
# of the row, which makes the ~100 k inserts of a backup markedly cheaper). Version 3: no
# offset and length per blob (readers take blobs from the verified pack header), again a
# smaller row. Version 4: damaged packs (a blob may then be in two packs: the damaged one
# and the one a later backup uploaded it to again) and the epoch (``IndexCache.epoch``).
CACHE_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (id BLOB NOT NULL, pack INTEGER NOT NULL,
    PRIMARY KEY (id, pack)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    raw_size INTEGER NOT NULL, stored_size INTEGER NOT NULL, index_id TEXT NOT NULL,
    damaged INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS loaded (index_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
_HAS_QUERY = "SELECT 1 FROM blobs WHERE id=? LIMIT 1"
# Once a pack is damaged, its blobs are no dedup target: a backup stores them again.
_HAS_SOUND_QUERY = ("SELECT 1 FROM blobs b JOIN packs p ON p.n = b.pack "
                    "WHERE b.id=? AND p.damaged=0 LIMIT 1")
# A pack's blob rows from one parameter, its 32-byte ids back to back: the rows are made by
# SQLite in one statement, which runs without the GIL and costs no Python per row (a backup
# inserts ~100 k: half the time of executemany, and it overlaps the scan).
_INSERT_BLOBS = """
WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < ?2)
INSERT OR IGNORE INTO blobs SELECT substr(?1, i * 32 + 1, 32), ?3 FROM k"""
_UNINDEXED = ""  # index_id of a run's pack until its index object is staged
RUN_SET_MAX = 100_000  # about 14 MiB of Python set (hex ids); beyond, the filter, then SQLite
RUN_FILTER_BITS = 1 << 24  # 2 MiB; about 6 % false positives at a million blobs
BUSY_TIMEOUT_S = 60.0


def _filter_position(key: bytes) -> tuple[int, int]:
    """Byte index and bit mask of a blob id in the run filter (ids are uniform hashes)."""
    n = int.from_bytes(key[:3], "big")
    return n >> 3, 1 << (n & 7)


@dataclass(frozen=True)
class BlobRef:
    """Where a blob is stored."""

    pack_id: str


class IndexCache:
    """A local SQLite mirror of every index object in one repository.

    A backup run writes its packs into the cache as it seals them, inside one write
    transaction that ``commit_run`` commits once the run's index objects are in the
    repository (and ``abort_run`` rolls back; a crash loses it with the process). So the
    rows are trusted within the run only, as they must be: until then those packs may never
    reach the repository. The inserts, the most expensive part of keeping the cache, run while
    the scan workers read files instead of after the scan. Readers in other processes (WAL)
    are not blocked; another run on the same ``state_dir`` waits for this one.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        try:
            self._db = _connect(path)
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise _busy_error(path) from None
            # A cache damaged by a crash is rebuilt from the repository's index objects.
            log.warning("index cache unreadable; rebuilding it", path=str(path))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self._db = _connect(path)
        self.damage: list[str] = []  # index objects that could not be read (``sync``)
        self._in_run = False
        self._reading = False  # a read transaction is open for lookups
        # Blob ids of the open run, the first RUN_SET_MAX of them: dedup within a run without
        # a query (a first backup asks for every file).
        self._run_set: set[str] = set()
        self._run_set_room = RUN_SET_MAX
        self._run_filter = bytearray(RUN_FILTER_BITS // 8)
        self._spilled = False  # whether blobs of this run are in the filter, not the set
        # A run's packs are written from a background thread while lookups go on.
        self._lock = threading.Lock()
        self._empty = self._no_blobs()
        self._any_damaged = self._has_damaged()

    @classmethod
    def for_repository(cls, repo: Repository, path: Path) -> IndexCache:
        """The cache of ``repo`` in the SQLite file ``path``, brought up to date with its index
        objects."""
        cache = cls(path)
        cache.sync(repo)
        return cache

    def close(self) -> None:
        if self._in_run:
            self.abort_run()
        self._end_read()
        self._db.close()

    def _end_read(self) -> None:
        if self._reading:
            self._reading = False
            self._db.execute("COMMIT")

    @property
    def epoch(self) -> str:
        """Changes whenever blobs leave the index (index objects removed, a pack found
        damaged) and when the cache is made anew: whatever vouched for blobs under another
        epoch (the stat cache) must not be believed (statcache.py)."""
        row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row is None:
            with self._transaction():
                self._new_epoch()
            return self.epoch
        return str(row[0])

    def _new_epoch(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)",
                         (secrets.token_hex(8),))

    def carry_epoch(self, epoch: str) -> None:
        """Go back to ``epoch`` after a reset that lost no blob anything vouched for under it.

        Only a prune may claim that (``actions/prune.py``): it removed index objects, which
        resets the cache, but every blob of every snapshot it kept, the newest included
        (whose stat cache is the only one a backup reads), is still indexed. Without this,
        every prune would make the next backup read the whole volume."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))

    def sync(self, repo: Repository) -> None:
        """Load index objects not seen yet; start over when one disappeared (pruned or
        repaired); then apply the repository's damage records (``damaged/``)."""
        stored = set(repo.list_ids("index"))
        loaded = {row[0] for row in self._db.execute("SELECT index_id FROM loaded")}
        if loaded - stored:
            log.info("index cache reset: index objects were removed", removed=len(loaded - stored))
            with self._transaction():
                for table in ("blobs", "packs", "loaded"):
                    self._db.execute(f"DELETE FROM {table}")
                self._new_epoch()
            loaded = set()
        for index_id in sorted(stored - loaded):
            self._load_index(repo, index_id)
        for pack_id in damaged_pack_ids(repo):
            self.mark_damaged(pack_id)
        self._empty = self._no_blobs()

    def mark_damaged(self, pack_id: str) -> bool:
        """Stop offering ``pack_id``'s blobs for dedup (a restore still finds them there when
        no other pack holds them); whether the pack was known and sound until now."""
        if self._db.execute("SELECT 1 FROM packs WHERE id=? AND damaged=0",
                            (pack_id,)).fetchone() is None:
            return False
        with self._transaction():
            self._db.execute("UPDATE packs SET damaged=1 WHERE id=?", (pack_id,))
            self._new_epoch()
        self._any_damaged = True
        log.warning("pack marked damaged in the index cache: its blobs are stored again by "
                    "the next backup", pack=pack_id)
        return True

    def mark_sound(self, pack_id: str) -> None:
        """``pack_id`` was stored again whole (the same content gives the same id): its
        blobs are a dedup target again."""
        with self._transaction():
            self._db.execute("UPDATE packs SET damaged=0 WHERE id=?", (pack_id,))
        self._any_damaged = self._has_damaged()

    def damaged_packs(self) -> list[str]:
        """Packs marked damaged (``mark_damaged``), sorted."""
        return [row[0] for row in
                self._db.execute("SELECT id FROM packs WHERE damaged=1 ORDER BY id")]

    def _has_damaged(self) -> bool:
        return self._db.execute("SELECT 1 FROM packs WHERE damaged=1 LIMIT 1").fetchone() \
            is not None

    def _load_index(self, repo: Repository, index_id: str) -> None:
        """One index object into the cache; a damaged one is left out (its blobs are then in
        no index: a backup stores them again, a restore of a snapshot that needs them says
        so, every other restore works) and named in ``damage``. It is not marked loaded, so
        a repaired object is read next time."""
        try:
            self.add_index(index_id, repo.load("index", index_id))
        except (IntegrityError, NotFoundError) as exc:
            log.error("index object unreadable; left out of the index cache",
                      index=index_id, error=exc.one_line())
            self.damage.append(f"index object {index_id}: {exc.one_line()}")

    def add_index(self, index_id: str, plaintext: bytes) -> None:
        """Record an index object (its plaintext) read from the repository."""
        records = parse_index(index_id, plaintext)
        with self._transaction():
            for record in records:
                self._insert_pack(record, index_id)
            self._db.execute("INSERT OR IGNORE INTO loaded VALUES (?)", (index_id,))
        self._empty = self._empty and not any(r.blob_ids for r in records)

    # --- a backup run ------------------------------------------------------------------

    def begin_run(self) -> None:
        """Open the run's write transaction (see the class docstring)."""
        self._begin()
        self._in_run = True

    def note_run_blobs(self, blob_ids: Iterable[str]) -> None:
        """Blobs in a pack this run sealed: ``has`` answers True for them from now on, also
        while ``stage_pack`` for their pack is still to come (up to RUN_SET_MAX blobs; past
        it, ``has`` asks the table, and a blob whose row is not in yet may be stored twice:
        wasted space, never a wrong answer to a reader)."""
        if self._run_set_room > 0:
            self._run_set.update(blob_ids)
            self._run_set_room = RUN_SET_MAX - len(self._run_set)
            return
        # Past the set: a one-hash bit filter, so that in a first backup (empty cache) most
        # blobs are still known to be new without a query (a million files would cost
        # seconds of queries otherwise).
        self._spilled = True
        for key in map(bytes.fromhex, blob_ids):
            byte, bit = _filter_position(key)
            self._run_filter[byte] |= bit

    def stage_pack(self, record: PackRecord) -> None:
        """A pack this run sealed: its rows, trusted for the rest of the run (any thread)."""
        with self._lock:
            self._insert_pack(record, _UNINDEXED)

    def stage_index(self, index_id: str, pack_ids: list[str]) -> None:
        """Index object ``index_id`` describes these staged packs (any thread)."""
        with self._lock:
            self._db.executemany("UPDATE packs SET index_id=? WHERE id=? AND index_id=?",
                                 [(index_id, pack_id, _UNINDEXED) for pack_id in pack_ids])
            self._db.execute("INSERT OR IGNORE INTO loaded VALUES (?)", (index_id,))

    def commit_run(self) -> None:
        """The run's index objects are in the repository: keep its packs and blobs."""
        with self._lock:
            self._db.execute("COMMIT")
        self._end_run()

    def abort_run(self) -> None:
        """Forget the run's packs: they never reached the repository (no-op after commit)."""
        if self._in_run:
            with self._lock:
                self._db.execute("ROLLBACK")
            self._end_run()

    def _end_run(self) -> None:
        self._in_run = False
        self._run_set.clear()
        self._run_set_room = RUN_SET_MAX
        self._run_filter = bytearray(RUN_FILTER_BITS // 8)
        self._spilled = False
        self._empty = self._no_blobs()

    def _insert_pack(self, record: PackRecord, index_id: str) -> None:
        cursor = self._db.execute("INSERT OR IGNORE INTO packs (id, raw_size, stored_size, "
                                  "index_id) VALUES (?,?,?,?)",
                                  (record.pack_id, record.raw_size, record.stored_size,
                                   index_id))
        number = cursor.lastrowid if cursor.rowcount else self._pack_number(record.pack_id)
        if not record.blob_ids:
            return
        # Sorted by blob id, the inserts walk the B-tree left to right instead of at random
        # pages: about twice as fast.
        ids = sorted(record.blob_ids)
        try:
            if not all(len(blob_id) == 64 for blob_id in ids):
                raise ValueError
            keys = bytes.fromhex("".join(ids))
        except ValueError:
            raise IntegrityError(f"pack {record.pack_id}: malformed blob id") from None
        self._db.execute(_INSERT_BLOBS, (keys, len(ids), number))

    def _pack_number(self, pack_id: str) -> int:
        return int(self._db.execute("SELECT n FROM packs WHERE id=?", (pack_id,)).fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._begin()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _begin(self) -> None:
        self._end_read()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise _busy_error(self._path) from None
            raise

    # --- lookups -------------------------------------------------------------------------

    def lookup(self, blob_id: str) -> BlobRef | None:
        """Where ``blob_id`` is stored, or None.

        Lookups share one read transaction (until a write or ``close``): in autocommit mode
        every query would take and drop SQLite's shared lock and stat the file, three system
        calls per restored file."""
        if not self._reading and not self._in_run:
            self._db.execute("BEGIN")
            self._reading = True
        # A sound copy first: a blob stored again after its pack was found damaged.
        row = self._db.execute("SELECT p.id FROM blobs b JOIN packs p ON p.n = b.pack "
                               "WHERE b.id=? ORDER BY p.damaged LIMIT 1",
                               (bytes.fromhex(blob_id),)).fetchone()
        return BlobRef(row[0]) if row else None

    def has_none(self, blob_ids: list[str]) -> bool:
        """Whether none of ``blob_ids`` is held: set arithmetic while the cache is empty (a
        first backup asks this for every batch of files), one ``has`` per id otherwise."""
        if not self._run_set.isdisjoint(blob_ids):
            return False
        return (self._empty and not self._spilled) or not any(map(self.has, blob_ids))

    def has(self, blob_id: str) -> bool:
        """Whether the repository (or this run) already holds ``blob_id``."""
        if blob_id in self._run_set:
            return True
        if self._empty:  # a first backup asks ~100 k times; skip the queries
            if not self._spilled:
                return False
            byte, bit = _filter_position(bytes.fromhex(blob_id))
            if not self._run_filter[byte] & bit:
                return False  # not in this run either; the cache was empty before it
        query = _HAS_SOUND_QUERY if self._any_damaged else _HAS_QUERY
        with self._lock:
            return self._db.execute(query, (bytes.fromhex(blob_id),)).fetchone() is not None

    def _no_blobs(self) -> bool:
        return self._db.execute("SELECT 1 FROM blobs LIMIT 1").fetchone() is None

    def pack_raw_size(self, pack_id: str) -> int | None:
        """The plaintext size of a pack, the bound for decompressing it."""
        row = self._db.execute("SELECT raw_size FROM packs WHERE id=?", (pack_id,)).fetchone()
        return int(row[0]) if row else None


def _is_busy(exc: sqlite3.DatabaseError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _busy_error(path: Path) -> LockedError:
    return LockedError(f"the index cache {path} stayed locked for {BUSY_TIMEOUT_S:g} s: another "
                       "wicked-dr backup on this host uses the same state_dir; wait for it to "
                       "finish")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                         check_same_thread=False)  # IndexCache serializes access
    db.execute("PRAGMA journal_mode=WAL")
    # A cache, rebuilt from the repository when lost: durability buys nothing here.
    db.execute("PRAGMA synchronous=OFF")
    # 16 MiB of page cache: the ~100 k inserts of a 20 k-user backup stay in memory until
    # the commit; more only raises the peak memory of a million-file backup.
    db.execute("PRAGMA cache_size=-16384")
    if _current(db):
        return db  # no write transaction: a restore must not wait for a running backup
    # One transaction, so two processes opening a new cache at once cannot drop each other's
    # tables.
    db.execute("BEGIN IMMEDIATE")
    if db.execute("PRAGMA user_version").fetchone()[0] != CACHE_VERSION:
        # Another layout (an older wicked-dr): start over; sync() reloads every index object.
        for table in ("blobs", "packs", "loaded", "meta"):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"PRAGMA user_version={CACHE_VERSION}")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("COMMIT")
    return db


def _current(db: sqlite3.Connection) -> bool:
    """Whether the cache has this version's layout (reads only)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return (db.execute("PRAGMA user_version").fetchone()[0] == CACHE_VERSION
            and {"blobs", "packs", "loaded", "meta"} <= tables)


def read_index(repo: Repository, index_id: str) -> list[PackRecord]:
    """The packs an index object describes."""
    return parse_index(index_id, repo.load("index", index_id))


def parse_index(index_id: str, plaintext: bytes) -> list[PackRecord]:
    """The packs described by an index object's plaintext."""
    try:
        return [PackRecord.from_json(p) for p in json.loads(plaintext)["packs"]]
    except (KeyError, TypeError, ValueError, IndexError):
        raise IntegrityError(f"index object {index_id} is malformed") from None


def index_document(packs: list[PackRecord]) -> bytes:
    """The plaintext of an index object: compact JSON, keys sorted. Formatted by hand (ids
    are hex, sizes integers: nothing to escape) because a backup writes ~100 k blob rows."""
    return ('{"packs":[' + ",".join(_pack_json(p) for p in packs) + "]}").encode()


def _pack_json(pack: PackRecord) -> str:
    blobs = blob_rows_json(pack.blob_ids, pack.offsets, pack.lengths)
    return (f'{{"blobs":[{blobs}],"id":"{pack.pack_id}","raw_size":{pack.raw_size},'
            f'"stored_size":{pack.stored_size}}}')
