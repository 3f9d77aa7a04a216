"""Scanning a directory tree into a snapshot, in manifest order (docs/format.md section 7).

One directory block at a time: list and sort the directory, cut its names into batches, give
each batch the stat keys the previous snapshot recorded for its names, and let the scan
workers ``lstat``, read, hash and format. Answers come back in order; runs of finished
entries go to the snapshot writer whole, ranges of unchanged files take their lines from the
stat cache here, big files are streamed here, subdirectories are scanned after their
parent's block, smallest first.

The scan is cancellable between directories and between answers (a batch of up to
``BATCH_NAMES`` entries): ``Interrupted`` then leaves the writer with a part of the tree,
which the caller drops (``SnapshotWriter.abort``).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, Protocol

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.scan_pool import ScanPool
from wicked_dr.engine.scan_worker import (
    BigItem,
    Item,
    Job,
    ReuseItem,
    RunItem,
    fewer_collections,
)
from wicked_dr.repository.entry_lines import unfield

# A batch: few enough names that an answer stays a few MiB, enough that the per-batch cost
# (two pickles, a pipe round trip) is small per file.
BATCH_NAMES = 1024
READ_CHUNK = 4 * 1024 * 1024
Meta = tuple[int, int, int, int, int, int, int]  # mode, uid, gid, size, mtime, ctime, inode


class ScanTarget(Protocol):
    """What the scan feeds: the snapshot writer (or, re-statting under wicked's lock, the
    collector of what changed: ``tree_recheck.py``)."""

    def enter_dir(self, rel_dir: str, names: list[str]) -> None: ...

    def cached_lines(self, last_name: str) -> list[str]: ...

    def add_run(self, run: RunItem) -> None: ...

    def add_reused(self, manifest: str, stat: str, entries: int, bytes_total: int) -> None: ...

    def add_big_file(self, rel: str, meta: Meta, chunks: Iterable[bytes]) -> None: ...

    def add_error(self, rel: str, error: str) -> None: ...


class _Cached(NamedTuple):
    """A batch's stat-cache lines, aligned with its names (key None, lines empty, where a
    name has none)."""

    keys: list[str | None]
    lines: list[str]
    manifests: list[str]


Settle = Callable[[str, list[str]], bool]


class Watch(Protocol):
    """What the scan tells a change watch (``change_watch.ChangeWatch``)."""

    def add(self, directory: str, rel_dir: str) -> None: ...


def scan_tree(root: str, target: ScanTarget, pool: ScanPool, *,
              exclude: Callable[[str], object], racy_from_ns: int,
              settle: Settle | None = None, cancel: CancelToken = NOT_CANCELLED,
              watch: Watch | None = None) -> None:
    """Every entry under ``root`` (``exclude``d names left out) into ``target``;
    ``settle`` sees each full listing first (see ``TreeSink.add_tree``); ``watch``, when
    given, watches each directory from just before it is listed, so any change to an entry
    after the scan saw it is an event there. ``Interrupted`` at the next directory or answer
    once ``cancel`` is cancelled."""
    pending = [("", root)]
    with fewer_collections():
        while pending:
            cancel.check()
            rel_dir, directory = pending.pop()
            if watch is not None:
                watch.add(directory, rel_dir)
            subdirs = _scan_dir(directory, rel_dir, target, pool, exclude, settle,
                                racy_from_ns, cancel)
            pending.extend(reversed(subdirs))  # the smallest name is scanned next


def _scan_dir(directory: str, rel_dir: str, target: ScanTarget, pool: ScanPool,
              exclude: Callable[[str], object], settle: Settle | None,
              racy_from_ns: int, cancel: CancelToken) -> list[tuple[str, str]]:
    # Plain names, not DirEntry objects: wicked keeps 200 k files in one folder at 200 k
    # users, and a sorted list of DirEntry objects costs three times the memory.
    try:
        listing = os.listdir(directory)
        while settle is not None and settle(directory, listing):
            listing = os.listdir(directory)  # writes finished meanwhile: see their results
    except OSError as exc:
        target.add_error(rel_dir or ".", exc.strerror or str(exc))
        return []
    names = sorted(itertools.filterfalse(exclude, listing))
    del listing
    target.enter_dir(rel_dir, names)
    prefix = f"{rel_dir}/" if rel_dir else ""
    in_flight: deque[_Cached] = deque()  # of the jobs sent and not answered yet, in order

    def jobs() -> Iterator[Job]:
        for batch in _batches(names):
            cached = _align(batch, target.cached_lines(batch[-1]))
            in_flight.append(cached)
            yield Job(directory, rel_dir, batch, cached.keys, racy_from_ns)

    subdirs: list[tuple[str, str]] = []
    for answer in pool.map(jobs()):
        cached = in_flight.popleft()
        for item in answer:
            _handle(item, directory, prefix, target, subdirs, cached)
        cancel.check()  # the jobs still out are dropped with the pool (writer.abort)
    return subdirs


def _align(names: list[str], lines: list[str]) -> _Cached:
    """The stat-cache lines of one batch, by position in ``names``."""
    parts = [line.split("\t", 2) for line in lines]
    if [p[0] for p in parts] == names:  # the usual case: the same names, none quoted
        return _Cached([p[1] for p in parts], lines, [p[2] for p in parts])
    by_name = {unfield(p[0]): (p, line) for p, line in zip(parts, lines, strict=True)}
    found = [by_name.get(name) for name in names]
    return _Cached([f[0][1] if f else None for f in found], [f[1] if f else "" for f in found],
                   [f[0][2] if f else "" for f in found])


def _batches(names: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(names), BATCH_NAMES):
        yield names[start:start + BATCH_NAMES]


def _handle(item: Item, directory: str, prefix: str, target: ScanTarget,
            subdirs: list[tuple[str, str]], cached: _Cached) -> None:
    if isinstance(item, ReuseItem):
        target.add_reused("".join(cached.manifests[item.start:item.stop]),
                          "".join(cached.lines[item.start:item.stop]),
                          item.stop - item.start, item.bytes_total)
    elif isinstance(item, RunItem):
        target.add_run(item)
        subdirs.extend((prefix + name, f"{directory}/{name}") for name in item.subdirs)
    elif isinstance(item, BigItem):
        rel = prefix + item.name
        try:
            target.add_big_file(rel, item.meta, read_chunks(f"{directory}/{item.name}",
                                                            item.meta[3]))
        except OSError as exc:
            target.add_error(rel, exc.strerror or str(exc))
    else:
        target.add_error(prefix + item.name, item.message)


def read_chunks(path: str, size_hint: int) -> Iterator[bytes]:
    """A file's bytes in chunks, never following a symlink swapped in after the ``lstat``.

    The first read asks for the size ``stat`` reported plus one byte (``os.read`` allocates
    what it is asked for); a file of exactly that size ends there, one that changed size
    since is read on until end of file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunk = os.read(fd, min(size_hint + 1, READ_CHUNK))
        if chunk:
            yield chunk
        if len(chunk) == size_hint < READ_CHUNK:
            return
        while chunk := os.read(fd, READ_CHUNK):
            yield chunk
    finally:
        os.close(fd)
