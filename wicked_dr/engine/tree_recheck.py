"""The locked phase of a file-tree backup: re-read only what may have changed.

A backup reads the whole volume *without* wicked's ``global.lock`` (writers may be busy; a
file may be read half-written), then takes the lock, waits for the writes in flight, and
re-reads here what may have changed since that first read. The result is a ``TreeDelta``
the snapshot writer merges into the first manifest after the lock is released
(``manifest_merge.py``). Every file of the snapshot is then as it stood at one instant
inside the lock window.

Two ways to know what may have changed:

``recheck_by_watch``
    The scan's inotify watch (``change_watch.py``) names every entry touched since its
    directory was listed. The lock window costs in proportion to the change: drain the
    events, wait for the ``<file>.lock`` files among them (and those the first read saw),
    re-read the touched entries, and drain again until a drain finds nothing new. That last
    empty drain is the snapshot's instant: a writer that started after it created its
    ``<file>.lock`` after it, and so wrote nothing before it. No grace period is needed: a
    writer that checked for ``global.lock`` just before it existed is an event too.

``recheck_by_stat``
    Without a complete watch (a one-shot ``volume.watch: off``, a queue overflow, a network
    file system): every directory is listed again (waiting for its writes in flight, as a
    locked scan always did) and every file ``lstat``-ed by the scan workers against the key
    the first read recorded (its stat cache). A file re-read is one whose key differs, or
    whose mtime is not safely older than the first read's start (the racy-timestamp rule of
    ``statcache.py``: a write within the same timestamp tick changes no key). A directory
    whose names differ from the first read's (a digest per directory) is named with its
    new names, so entries that went away are dropped.

A directory that appeared or vanished in between (wicked creates its folders once, at its
first start) raises ``Restructured``: the caller then scans the whole volume again, under
the lock, the way every backup did before.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.change_watch import ChangeWatch
from wicked_dr.engine.manifest_merge import TreeDelta, path_of
from wicked_dr.engine.scan_pool import ScanPool
from wicked_dr.engine.scan_worker import BigItem, Item, Job, ReuseItem, RunItem, scan_batch
from wicked_dr.engine.tree_scan import Meta, read_chunks, scan_tree
from wicked_dr.errors import OperationError
from wicked_dr.repository.segments import Segment
from wicked_dr.repository.statcache import RACY_WINDOW_NS, StatCacheReader
from wicked_dr.sources.base import HeldLock

GONE = os.strerror(errno.ENOENT)  # a scan error that is a change, not a problem
_DIR_MARK = '"type":"dir"'
MAX_ROUNDS = 200  # drains that keep finding changes: a writer ignores wicked's lock


class Restructured(Exception):
    """A directory appeared or vanished since the first read: scan everything again."""


class RecheckSink(Protocol):
    """What the locked phase stores re-read content into (the snapshot writer)."""

    def store_segment(self, segment: Segment, bytes_read: int) -> None: ...

    def big_file_line(self, rel: str, meta: Meta, chunks: Iterable[bytes]) -> str: ...

    def add_error(self, rel: str, error: str) -> None: ...


@dataclass
class FirstRead:
    """What the unlocked scan saw, for the locked phase to compare with."""

    root: str
    scan_start_ns: int
    digests: dict[str, bytes] = field(default_factory=dict)  # directory -> its names' digest
    dir_lines: dict[str, str] = field(default_factory=dict)  # directory path -> its line
    left_out: dict[str, list[str]] = field(default_factory=dict)  # directory -> excluded names

    def note_listing(self, rel_dir: str, names: list[str]) -> None:
        self.digests[rel_dir] = names_digest(names)

    def note_run(self, run: RunItem) -> None:
        if run.dirs:
            for line in run.manifest.splitlines(keepends=True):
                if _DIR_MARK in line:
                    self.dir_lines[path_of(line)] = line

    def left_out_recorder(self, exclude: Callable[[str], object]) -> Callable[[str, list[str]],
                                                                              bool]:
        """A ``settle`` for the unlocked scan: it only remembers the names ``exclude`` left
        out of each listing (``<file>.lock`` files among them), so the locked phase can wait
        for those writes without listing every directory again."""
        def record(directory: str, listing: list[str]) -> bool:
            left = list(filter(exclude, listing))  # no Python frame per name
            if left:
                self.left_out[directory] = left
            return False
        return record

    def absolute(self, rel_dir: str) -> str:
        return f"{self.root}/{rel_dir}" if rel_dir else self.root


def names_digest(names: list[str]) -> bytes:
    """A directory's (sorted) names, in 16 bytes: equal digests, equal sets of entries."""
    text = "\0".join(names).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(text, digest_size=16).digest()


# --- with the watch ------------------------------------------------------------------------


def recheck_by_watch(first: FirstRead, watch: ChangeWatch, held: HeldLock, sink: RecheckSink,
                     exclude: Callable[[str], object],
                     cancel: CancelToken = NOT_CANCELLED) -> TreeDelta | None:
    """The delta from the watch's events; None when the watch cannot vouch (the caller
    re-stats instead)."""
    for directory, left_out in first.left_out.items():
        held.settle(directory, left_out)
    delta = TreeDelta()
    # Every directory's own line is read again: its mtime moves when an entry is created or
    # removed in it, which its parent's watch does not report (a dozen lstat calls).
    dirty: dict[str, set[str]] = {}
    for path in first.dir_lines:
        _mark_dir(dirty, path)
    for _ in range(MAX_ROUNDS):
        cancel.check()
        changes = watch.drain()
        if not changes.complete:
            return None
        if not changes:
            if not dirty:
                return delta
            _reread(first, dirty, delta, sink)
            dirty = {}
            continue  # anything touched while re-reading is drained next
        for rel_dir, names in changes.touched.items():
            if rel_dir:
                _mark_dir(dirty, rel_dir)  # entries came or went: its mtime may have moved
            writes = sorted(name for name in names if exclude(name))
            if writes:  # <file>.lock files among them: wait for those writes
                held.settle(first.absolute(rel_dir), writes)
            kept = {name for name in names if not exclude(name)}
            if kept:
                dirty.setdefault(rel_dir, set()).update(kept)
    example = next((f"{d}/{n}" for d, names in dirty.items() for n in names), "?")
    raise OperationError(f"files keep changing under wicked's global.lock (e.g. {example}): "
                         "something writes to the volume without wicked's lock protocol")


def _mark_dir(dirty: dict[str, set[str]], path: str) -> None:
    """Have directory ``path``'s own line read again (it is an entry of its parent)."""
    parent, _, name = path.rpartition("/")
    dirty.setdefault(parent, set()).add(name)


def _reread(first: FirstRead, dirty: dict[str, set[str]], delta: TreeDelta,
            sink: RecheckSink) -> None:
    """The touched entries read again, in this process (they are few)."""
    for rel_dir in sorted(dirty):
        names = sorted(dirty[rel_dir])
        job = Job(first.absolute(rel_dir), rel_dir, names, [None] * len(names), 0)
        _collect(first, scan_batch(job), job, delta, sink)


# --- without it ----------------------------------------------------------------------------


def recheck_by_stat(first: FirstRead, first_stat: StatCacheReader, held: HeldLock,
                    sink: RecheckSink, pool: ScanPool, exclude: Callable[[str], object],
                    cancel: CancelToken = NOT_CANCELLED) -> TreeDelta:
    """The delta from listing every directory and ``lstat``-ing every file again."""
    held.wait_grace()
    target = _Restat(first, first_stat, sink)
    racy_from = first.scan_start_ns - RACY_WINDOW_NS
    scan_tree(first.root, target, pool, exclude=exclude, racy_from_ns=racy_from,
              settle=held.settle, cancel=cancel)
    vanished = set(first.dir_lines) - target.entered
    if vanished:
        raise Restructured(f"directory {min(vanished)} vanished")
    return target.delta


class _Restat:
    """The tree scan's target while re-statting: only what changed is kept."""

    def __init__(self, first: FirstRead, first_stat: StatCacheReader,
                 sink: RecheckSink) -> None:
        self.first = first
        self.first_stat = first_stat
        self.sink = sink
        self.delta = TreeDelta()
        self.entered: set[str] = set()
        self._prefix = ""

    def enter_dir(self, rel_dir: str, names: list[str]) -> None:
        self.entered.add(rel_dir)
        self.first_stat.enter_dir(rel_dir)
        self._prefix = f"{rel_dir}/" if rel_dir else ""
        if self.first.digests.get(rel_dir) != names_digest(names):
            self.delta.listings[rel_dir] = set(names)

    def cached_lines(self, last_name: str) -> list[str]:
        return self.first_stat.take_until(last_name)

    def add_run(self, run: RunItem) -> None:
        _collect_run(self.first, run, self.delta, self.sink)

    def add_reused(self, manifest: str, stat: str, entries: int, bytes_total: int) -> None:
        """Unchanged since the first read: its lines stand."""

    def add_big_file(self, rel: str, meta: Meta, chunks: Iterable[bytes]) -> None:
        self.delta.lines[rel] = self.sink.big_file_line(rel, meta, chunks)
        self.delta.reread += 1

    def add_error(self, rel: str, error: str) -> None:
        _collect_error(self.first, rel, error, self.delta, self.sink)


# --- what a re-read gives ------------------------------------------------------------------


def _collect(first: FirstRead, items: list[Item], job: Job, delta: TreeDelta,
             sink: RecheckSink) -> None:
    prefix = f"{job.rel_dir}/" if job.rel_dir else ""
    for item in items:
        if isinstance(item, RunItem):
            _collect_run(first, item, delta, sink)
        elif isinstance(item, BigItem):
            rel = prefix + item.name
            try:
                delta.lines[rel] = sink.big_file_line(
                    rel, item.meta, read_chunks(f"{job.directory}/{item.name}", item.meta[3]))
                delta.reread += 1
            except OSError as exc:
                _collect_error(first, rel, exc.strerror or str(exc), delta, sink)
        elif not isinstance(item, ReuseItem):
            _collect_error(first, prefix + item.name, item.message, delta, sink)


def _collect_run(first: FirstRead, run: RunItem, delta: TreeDelta, sink: RecheckSink) -> None:
    if run.blobs.blob_ids or run.bytes_read:
        sink.store_segment(run.blobs, run.bytes_read)
    delta.reread += run.files
    for line in run.manifest.splitlines(keepends=True):
        path = path_of(line)
        if _DIR_MARK in line:
            known = first.dir_lines.get(path)
            if known is None:
                raise Restructured(f"directory {path} appeared")
            if known == line:
                continue
        delta.lines[path] = line


def _collect_error(first: FirstRead, rel: str, error: str, delta: TreeDelta,
                   sink: RecheckSink) -> None:
    if rel in first.dir_lines:
        raise Restructured(f"directory {rel} vanished")
    if error != GONE:
        sink.add_error(rel, error)  # unreadable now: left out, as any scan leaves it out
    delta.lines[rel] = None
