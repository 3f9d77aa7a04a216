"""Writing one snapshot: content addressing, packing, staging, and the write order.

While a source reads, sealed packs, trees and index objects go to a local staging directory
only, so wicked's lock window never includes uploads. A file tree is read twice over
(``add_tree``): first in full without wicked's lock, then, under it, only what may have
changed since (``tree_recheck.py``); the corrections are merged into the first manifest
after the lock is released (``manifest_merge.py``).
``commit`` then uploads in the order the format demands: packs, then index objects, then
trees, then the snapshot object last. A crash at any point leaves earlier snapshots intact
and at worst some unreferenced objects, which readers ignore.

A cancelled run (``cancel``) stops the same way, at a safe point: between scan answers,
between the blobs of a stream or a big file, between uploads. Up to the snapshot object
nothing is visible; the caller's ``abort`` removes staging. Once the snapshot object is
being written, the run finishes.
"""

from __future__ import annotations

import hashlib
import shutil
import stat as statmod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.background import Background
from wicked_dr.engine.change_watch import ChangeWatch, open_watch
from wicked_dr.engine.manifest_merge import DeltaMerge, SortKey, TreeDelta, key_of
from wicked_dr.engine.scan_pool import ScanPool
from wicked_dr.engine.scan_worker import RunItem
from wicked_dr.engine.tree_recheck import (
    GONE,
    FirstRead,
    Restructured,
    recheck_by_stat,
    recheck_by_watch,
)
from wicked_dr.engine.tree_scan import Meta, scan_tree
from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.progress import Progress
from wicked_dr.repository.crypto import sha256_hex
from wicked_dr.repository.entry_lines import stat_key, stat_line
from wicked_dr.repository.index import IndexCache, index_document
from wicked_dr.repository.layout import BLOB_SIZE, MAX_METADATA_OBJECT, object_name
from wicked_dr.repository.manifest import TREE_CHUNK_ENTRIES, Entry, encode_entry
from wicked_dr.repository.packs import PackBuilder, PackRecord
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.segments import Segment
from wicked_dr.repository.snapshot import Snapshot, StreamRef
from wicked_dr.repository.statcache import RACY_WINDOW_NS, StatCacheReader, StatCacheWriter
from wicked_dr.sources.base import HeldLock, HoldLock, TreeCounts

log = get_logger(__name__)
INDEX_BLOBS_PER_OBJECT = 20_000


@dataclass
class WriteStats:
    """Counters a backup reports."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    blobs_new: int = 0
    files_unchanged: int = 0
    packs: int = 0
    objects_written: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


class SnapshotWriter:
    """Collects one snapshot's content into staging, then commits it to the repository."""

    def __init__(self, repo: Repository, cache: IndexCache, staging: Path, *,
                 snapshot_id: str, pack_size: int, stat_dir: Path,
                 previous: StatCacheReader | None, scan_start_ns: int,
                 scan_workers: int = 0,
                 cancel: CancelToken = NOT_CANCELLED) -> None:
        """``previous`` must have been written under ``cache.epoch`` (statcache.py): the
        caller drops it otherwise."""
        self.repo = repo
        self.snapshot_id = snapshot_id
        # The run's token, also for the sources writing into this sink (stream blobs).
        self.cancel = cancel
        self.stats = WriteStats()
        self._cache = cache
        index_epoch = cache.epoch
        cache.begin_run()
        self._staging = staging
        staging.mkdir(parents=True, exist_ok=True)
        self._packs = PackBuilder(repo.sealer, staging, pack_size, self._on_pack)
        self._pending_index: list[PackRecord] = []
        self._pending_index_blobs = 0
        self._staged_packs: list[Path] = []
        self.pack_ids: list[str] = []  # the packs this run stores (known once sealed)
        self._staged_indexes: list[tuple[str, Path]] = []
        self._tree_lines: list[str] = []  # manifest text of the open tree object
        self._tree_count = 0  # its entries
        self._trees: list[str] = []
        self._tree_last_lines: list[str] = []  # per tree staged, its last manifest line
        self._first: FirstRead | None = None  # set while the unlocked first read runs
        self._scan_start_ns = scan_start_ns
        self._previous = previous
        self.damage: list[str] = []  # damaged objects met and repaired on the way
        # Started now, before a source takes wicked's lock: start-up is not lock time.
        self._pool = ScanPool(scan_workers)
        # Trees, index objects and the stat cache are compressed and written, and the index
        # cache filled, on one thread of their own, in order: zstd, SHA-256 and SQLite
        # release the GIL, so that work overlaps the scan instead of holding up the answers
        # of the scan workers.
        self._background = Background("snapshot-metadata")
        self._stat_out = StatCacheWriter(stat_dir, snapshot_id, scan_start_ns,
                                         defer=self._background.submit,
                                         index_epoch=index_epoch)

    # --- content -------------------------------------------------------------------------

    def store(self, chunks: Iterable[bytes], *,
              boundaries: bool = False) -> tuple[str, tuple[str, ...], int]:
        """Store content given as chunks; return (sha256, blob ids, size). With
        ``boundaries`` an empty chunk ends the blob being filled (streams: see add_stream)."""
        whole = hashlib.sha256()
        blobs: list[str] = []
        size = 0
        for chunk in _rechunk(chunks, BLOB_SIZE, boundaries=boundaries):
            # A safe point of every stream (Kong's tokens: the source closes its COPY when
            # the sink raises) and of every big file, one blob at a time.
            self.cancel.check()
            whole.update(chunk)
            size += len(chunk)
            blobs.append(self._store_blob(chunk))
        self.stats.bytes_read += size
        return whole.hexdigest(), tuple(blobs), size

    def _store_blob(self, data: bytes) -> str:
        blob_id = sha256_hex(data)
        self._store_segment(Segment([blob_id], [len(data)], data))
        return blob_id

    def _store_segment(self, segment: Segment) -> None:
        """A scan worker's new blobs (distinct within the segment), packed in one piece
        after dropping those stored already."""
        known = self._known(segment.blob_ids)
        if known:
            segment = _without(segment, known)
        if segment.blob_ids:
            self._packs.add_segment(segment)
            self.stats.bytes_new += len(segment.data)
            self.stats.blobs_new += len(segment.blob_ids)

    def _known(self, blob_ids: list[str]) -> set[str]:
        """Those of ``blob_ids`` this run or the repository stores already."""
        if self._packs.none_pending(blob_ids) and self._cache.has_none(blob_ids):
            return set()  # set arithmetic only: the usual answer in a first backup
        return {b for b in blob_ids if self._packs.is_pending(b) or self._cache.has(b)}

    def _on_pack(self, record: PackRecord, path: Path) -> None:
        self._cache.note_run_blobs(record.blob_ids)  # now: it answers has() from here on
        self._background.submit(self._cache.stage_pack, record)
        self._staged_packs.append(path)
        self.pack_ids.append(record.pack_id)
        self._pending_index.append(record)
        self._pending_index_blobs += len(record.blob_ids)
        self.stats.packs += 1
        if self._pending_index_blobs >= INDEX_BLOBS_PER_OBJECT:
            self._stage_index()

    def _stage_index(self) -> None:
        if self._pending_index:
            self._background.submit(self._write_index, self._pending_index)
            self._pending_index, self._pending_index_blobs = [], 0

    def _write_index(self, records: list[PackRecord]) -> None:
        """Format, seal and stage one index object (on the background thread)."""
        plaintext = index_document(records)
        index_id = sha256_hex(plaintext)
        path = self._staging / f"index-{index_id}"
        path.write_bytes(self.repo.sealer.seal("index", object_name("index", index_id),
                                               plaintext))
        self._staged_indexes.append((index_id, path))
        self._cache.stage_index(index_id, [r.pack_id for r in records])

    # --- the sink side: a file tree ---------------------------------------------------------

    def add_tree(self, root: Path, exclude: Callable[[str], object],
                 hold: HoldLock | None = None, *, watch: bool = True) -> TreeCounts:
        """Scan the tree under ``root`` into this snapshot (see tree_scan.py); how many files
        and bytes it holds (a snapshot has one file tree).

        The whole tree is read first without ``hold``. Then, inside ``hold()`` (wicked's
        lock), only what may have changed since is read again: what the scan's change watch
        names when ``watch`` is on and the watch is complete, else every file re-statted;
        the corrections are merged in after ``hold`` is left. Without ``hold`` the first
        read is the snapshot."""
        first = FirstRead(str(root), self._scan_start_ns)
        change_watch, why_not = (open_watch(root) if hold is not None and watch
                                 else (None, "volume.watch is false"))
        if hold is not None and change_watch is None:
            log.info("no change watch; files are re-statted under the lock", reason=why_not)
        try:
            self._first = first
            scan_tree(str(root), self, self._pool, exclude=exclude,
                      settle=first.left_out_recorder(exclude), racy_from_ns=self._racy_from(),
                      watch=change_watch, cancel=self.cancel)
            self._first = None
            if hold is None:
                return self._counts("none", 0)
            # The first read's trees and stat lines are written before the lock is taken:
            # the lock window is for re-reading only.
            self._background.wait()
            self._stat_out.finish()
            with hold() as held:
                how, delta = self._recheck(first, change_watch, held, exclude)
        finally:
            self._first = None
            if change_watch is not None:
                change_watch.close()
        if delta:
            self._merge(delta)
        return self._counts(how, delta.reread)

    def _racy_from(self) -> int:
        return (self._previous.scan_start_ns - RACY_WINDOW_NS
                if self._previous is not None else 0)

    def _counts(self, how: str, reread: int) -> TreeCounts:
        return TreeCounts(self.stats.files, self.stats.bytes_total, recheck=how, reread=reread)

    def _recheck(self, first: FirstRead, change_watch: ChangeWatch | None, held: HeldLock,
                 exclude: Callable[[str], object]) -> tuple[str, TreeDelta]:
        """What changed since the first read (under the lock): by the watch, else by
        re-statting; a changed directory structure means a full scan under the lock."""
        try:
            if change_watch is not None:
                delta = recheck_by_watch(first, change_watch, held, self, exclude, self.cancel)
                if delta is not None:
                    return "watch", delta
            first_stat = StatCacheReader(self._stat_out.path)
            try:
                return "stat", recheck_by_stat(first, first_stat, held, self, self._pool,
                                               exclude, self.cancel)
            finally:
                first_stat.close()
        except Restructured as exc:
            log.info("directories changed while the volume was read; scanning it again "
                     "under the lock", change=str(exc))
            return "rescan", self._rescan(first, held, exclude)

    def _rescan(self, first: FirstRead, held: HeldLock,
                exclude: Callable[[str], object]) -> TreeDelta:
        """The whole tree again, under the lock, into a new manifest (the first read's
        stat lines make its unchanged files cheap; its stat cache stays the one kept)."""
        held.wait_grace()
        self._background.wait()
        self._trees.clear()
        self._tree_last_lines.clear()
        self._tree_lines, self._tree_count = [], 0
        stats = self.stats
        stats.files = stats.dirs = stats.symlinks = stats.bytes_total = 0
        stats.files_unchanged = 0
        stats.errors.clear()
        reader = StatCacheReader(self._stat_out.path)
        kept = self._previous, self._stat_out
        self._previous, self._stat_out = reader, _NoStatCache()  # type: ignore[assignment]
        try:
            scan_tree(first.root, self, self._pool, exclude=exclude, settle=held.settle,
                      racy_from_ns=first.scan_start_ns - RACY_WINDOW_NS, cancel=self.cancel)
        finally:
            self._previous, self._stat_out = kept
            reader.close()
        delta = TreeDelta()
        delta.reread = stats.files - stats.files_unchanged
        return delta

    # --- the locked phase's side (tree_recheck.RecheckSink) ------------------------------

    def store_segment(self, segment: Segment, bytes_read: int) -> None:
        """Content re-read under the lock."""
        if segment.blob_ids:
            self._store_segment(segment)
        self.stats.bytes_read += bytes_read

    def big_file_line(self, rel: str, meta: Meta, chunks: Iterable[bytes]) -> str:
        """A big file re-read under the lock: stored, and its manifest line."""
        mode, uid, gid, _, mtime_ns, _, _ = meta
        sha, blobs, size = self.store(chunks)
        return encode_entry(Entry(rel, "file", statmod.S_IMODE(mode), uid, gid, mtime_ns, size,
                                  sha, blobs))

    # --- merging the corrections -----------------------------------------------------------

    def _merge(self, delta: TreeDelta) -> None:
        """The first manifest with ``delta`` applied: tree objects before the first change
        are kept as they are; from there on the lines are merged and cut again."""
        self._background.wait()
        trees, lasts = list(self._trees), list(self._tree_last_lines)
        tail, tail_count = self._tree_lines, self._tree_count
        self._trees.clear()
        self._tree_last_lines.clear()
        self._tree_lines, self._tree_count = [], 0
        merge = DeltaMerge(delta)
        after: SortKey | None = None
        for tree_id, last in zip(trees, lasts, strict=True):
            upto = key_of(last)
            if merge.touches(after, upto):
                self._add_merged(merge.merge(self._staged_tree_lines(tree_id)))
            elif self._tree_count == 0 and not merge.shifted:
                self._keep_tree(tree_id, last)
            else:
                self._add_lines(self._staged_tree_text(tree_id), TREE_CHUNK_ENTRIES)
            after = upto
        if tail_count:
            self._add_merged(merge.merge("".join(tail).splitlines(keepends=True)))
        self._add_merged(merge.rest())
        self._adjust(merge, delta)

    def _add_merged(self, lines: list[str]) -> None:
        if lines:
            self._add_lines("".join(lines), len(lines))

    def _keep_tree(self, tree_id: str, last: str) -> None:
        """An unchanged tree object of the first manifest, at an unchanged boundary."""
        self._tree_last_lines.append(last)
        self._background.submit(self._trees.append, tree_id)  # in order with _write_tree

    def _staged_tree_text(self, tree_id: str) -> str:
        envelope = (self._staging / f"tree-{tree_id}").read_bytes()
        return self.repo.sealer.open("tree", object_name("tree", tree_id), envelope,
                                     max_size=MAX_METADATA_OBJECT).decode()

    def _staged_tree_lines(self, tree_id: str) -> list[str]:
        return self._staged_tree_text(tree_id).splitlines(keepends=True)

    def _adjust(self, merge: DeltaMerge, delta: TreeDelta) -> None:
        """Counts and errors as the merged manifest has them."""
        stats, adjust = self.stats, merge.adjust
        stats.files += adjust.files
        stats.dirs += adjust.dirs
        stats.symlinks += adjust.symlinks
        stats.bytes_total += adjust.bytes_total
        read_now = {path for path, line in delta.lines.items() if line is not None}
        errors = {error["path"]: error for error in stats.errors}  # the last word per path
        stats.errors[:] = [e for path, e in errors.items() if path not in read_now]

    def enter_dir(self, rel_dir: str, names: list[str]) -> None:
        """A directory's block starts: position both stat caches."""
        if self._first is not None:
            self._first.note_listing(rel_dir, names)
        self._stat_out.enter_dir(rel_dir)
        if self._previous is not None:
            self._previous.enter_dir(rel_dir)

    def cached_lines(self, last_name: str) -> list[str]:
        """The previous stat-cache lines of the open directory up to ``last_name``."""
        return self._previous.take_until(last_name) if self._previous is not None else []

    def add_run(self, run: RunItem) -> None:
        """Entries a scan worker finished: their lines as they are, their new blobs packed."""
        if run.blobs.blob_ids:
            self._store_segment(run.blobs)
        if self._first is not None:
            self._first.note_run(run)
        stats = self.stats
        stats.files += run.files
        stats.dirs += run.dirs
        stats.symlinks += run.symlinks
        stats.bytes_total += run.bytes_total
        stats.bytes_read += run.bytes_read
        self._stat_out.add(run.stat)
        self._add_lines(run.manifest, run.entries)

    def add_reused(self, manifest: str, stat: str, entries: int, bytes_total: int) -> None:
        """Unchanged files: their lines from the previous snapshot's stat cache, as they are.
        The cache belongs to the parent snapshot, which exists: its blobs are referenced, so
        no correct prune removed them and a file it vouches for needs no blob lookup."""
        self.stats.files += entries
        self.stats.files_unchanged += entries
        self.stats.bytes_total += bytes_total
        self._stat_out.add(stat)
        self._add_lines(manifest, entries)

    def add_big_file(self, rel: str, meta: tuple[int, ...], chunks: Iterable[bytes]) -> None:
        """A file the workers left to us: streamed in blobs."""
        mode, uid, gid, _, mtime_ns, ctime_ns, inode = meta
        sha, blobs, size = self.store(chunks)
        self.stats.files += 1
        self.stats.bytes_total += size
        line = encode_entry(Entry(rel, "file", statmod.S_IMODE(mode), uid, gid, mtime_ns, size,
                                  sha, blobs))
        name = rel.rpartition("/")[2]
        self._stat_out.add(stat_line(name, stat_key(size, mtime_ns, ctime_ns, inode), line))
        self._add_lines(line, 1)

    def add_error(self, rel: str, error: str) -> None:
        """Count a file that could not be read; the manifest does not claim it. A file gone
        during the unlocked first read is a change the locked phase sees, not an error."""
        if self._first is not None and error == GONE:
            return
        log.warning("file skipped", path=rel, error=error)
        self.stats.errors.append({"path": rel, "error": error})

    def add_stream(self, name: str, chunks: Iterable[bytes]) -> StreamRef:
        """Store a named byte stream (e.g. Kong's tokens) in this snapshot; the caller records
        the reference in its source's record. An empty chunk is a boundary: the next bytes
        start a new blob, so a part of the stream that did not change since the last backup
        (one table of wicked's database) is the same blobs again and is not stored twice."""
        sha, blobs, size = self.store(chunks, boundaries=True)
        log.debug("stream stored", stream=name, size=size, blobs=len(blobs))
        return StreamRef(size, sha, blobs)

    def _add_lines(self, text: str, entries: int) -> None:
        """Append manifest lines; a tree is cut after exactly TREE_CHUNK_ENTRIES entries, so
        its boundaries depend on the manifest alone, not on how the scan grouped the lines:
        an unchanged stretch of the volume gives the very same tree objects (no upload)."""
        while self._tree_count + entries >= TREE_CHUNK_ENTRIES:
            room = TREE_CHUNK_ENTRIES - self._tree_count
            cut = _after_lines(text, room)
            self._tree_lines.append(text[:cut])
            self._tree_count += room
            self._stage_tree()
            text, entries = text[cut:], entries - room
        if entries:
            self._tree_lines.append(text)
            self._tree_count += entries

    def _stage_tree(self) -> None:
        if self._tree_lines:
            self._tree_last_lines.append(_last_line(self._tree_lines[-1]))
            self._background.submit(self._write_tree, self._tree_lines)
            self._tree_lines, self._tree_count = [], 0

    def _write_tree(self, lines: list[str]) -> None:
        """Hash, seal and stage one tree object (on the background thread, in order)."""
        plaintext = "".join(lines).encode()
        tree_id = sha256_hex(plaintext)
        self._trees.append(tree_id)
        # Sealed even when the repository should hold this chunk already: a stored copy that
        # turns out damaged at commit is replaced by this one.
        path = self._staging / f"tree-{tree_id}"
        path.write_bytes(self.repo.sealer.seal("tree", object_name("tree", tree_id), plaintext))

    # --- finishing -------------------------------------------------------------------------

    def seal(self) -> None:
        """Flush the open pack, index and tree into staging (end of reading)."""
        self._pool.close()
        self._packs.flush()
        self._packs.close()
        self._stage_index()
        self._stage_tree()
        self._background.wait()

    @property
    def trees(self) -> tuple[str, ...]:
        """The file tree's manifest objects, in order (complete once ``seal`` returned)."""
        return tuple(self._trees)

    def commit(self, snapshot: Snapshot, progress: Progress | None = None) -> None:
        """Upload packs, then indexes, then trees, then the snapshot object last."""
        backend = self.repo.backend
        for path in self._staged_packs:
            self._upload(object_name("data", path.name), path, progress)
        for index_id, path in self._staged_indexes:
            self._upload(object_name("index", index_id), path, progress)
        for tree_id in dict.fromkeys(self._trees):
            if self._stored_tree_sound(tree_id):
                continue  # content-addressed: an unchanged chunk costs no PUT
            self._upload(object_name("tree", tree_id), self._staging / f"tree-{tree_id}",
                         progress)
        backend.sync()  # everything the snapshot references is durable before it exists
        self.repo.save_json("snapshot", self.snapshot_id, snapshot.to_json())
        backend.sync()
        self.stats.objects_written += 1
        self._cache.commit_run()  # the index objects are stored: the cache may trust them
        self._background.close()
        self._stat_out.commit()
        self.cleanup()

    def _stored_tree_sound(self, tree_id: str) -> bool:
        """Whether the repository holds tree ``tree_id`` intact (read and verified: a stored
        chunk the new snapshot reuses must restore, or the damage would spread into it); a
        damaged one is named in ``damage`` and replaced by this run's copy."""
        try:
            self.repo.load("tree", tree_id)
        except NotFoundError:
            return False
        except IntegrityError as exc:
            self.damage.append(f"tree object {tree_id}: {exc.one_line()}; stored again by "
                               "this backup")
            return False
        return True

    def _upload(self, name: str, path: Path, progress: Progress | None) -> None:
        self.cancel.check()
        self.repo.backend.put_file(name, path)
        self._count_upload(progress, path)

    def _count_upload(self, progress: Progress | None, path: Path) -> None:
        self.stats.objects_written += 1
        if progress:
            progress("upload", path.stat().st_size)

    def abort(self) -> None:
        """Drop everything staged; the repository is untouched."""
        self._pool.close()
        self._packs.close()
        self._background.close()
        self._cache.abort_run()
        self._stat_out.abort()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)


def _last_line(text: str) -> str:
    """The last line of ``text`` (which ends with a newline)."""
    return text[text.rfind("\n", 0, len(text) - 1) + 1:]


class _NoStatCache:
    """Where stat lines go while the volume is scanned again under the lock (the first
    read's stat cache is the one kept)."""

    def enter_dir(self, rel_dir: str) -> None:
        """Nothing is written."""

    def add(self, text: str) -> None:
        """Nothing is written."""


def _after_lines(text: str, count: int) -> int:
    """The index just after the first ``count`` lines of ``text``."""
    end = 0
    for _ in range(count):
        end = text.index("\n", end) + 1
    return end


def _without(segment: Segment, known: set[str]) -> Segment:
    """``segment`` less the blobs in ``known``."""
    data = memoryview(segment.data)
    kept = Segment([], [], b"")
    parts: list[memoryview] = []
    start = 0
    for blob_id, length in zip(segment.blob_ids, segment.lengths, strict=True):
        if blob_id not in known:
            kept.blob_ids.append(blob_id)
            kept.lengths.append(length)
            parts.append(data[start:start + length])
        start += length
    return kept._replace(data=b"".join(parts))


def _rechunk(chunks: Iterable[bytes], size: int, *,
             boundaries: bool = False) -> Iterator[bytes]:
    """Re-cut a chunk stream into pieces of exactly ``size`` bytes (the last may be
    shorter); with ``boundaries``, an empty chunk also ends the piece being filled."""
    buffer = bytearray()
    for chunk in chunks:
        if boundaries and not chunk and buffer:
            yield bytes(buffer)
            buffer.clear()
            continue
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)

