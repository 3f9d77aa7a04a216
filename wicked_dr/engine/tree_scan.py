"""Scanning a directory tree into a snapshot, in manifest order (docs/format.md section 7).

One directory block at a time: list and sort the directory, cut its names into batches, give
each batch the stat-cache lines the previous snapshot recorded for its names (as one text),
and let the scan workers ``lstat``, read, hash and format. Answers come back in order: runs
of finished entries go to the snapshot writer whole, ranges of unchanged files take their
stat-cache lines from that text by position, big files are streamed here, subdirectories
are scanned after their parent's block, smallest first.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from wicked_dr.engine.scan_pool import ScanPool
from wicked_dr.engine.scan_worker import (
    BigItem,
    Item,
    Job,
    ReuseItem,
    RunItem,
    fewer_collections,
)

# A batch: few enough names that an answer stays a few MiB, enough that the per-batch cost
# (two pickles, a pipe round trip) is small per file.
BATCH_NAMES = 1024
READ_CHUNK = 4 * 1024 * 1024
Meta = tuple[int, int, int, int, int, int, int]  # mode, uid, gid, size, mtime, ctime, inode


class ScanTarget(Protocol):
    """What the scan feeds: the snapshot writer."""

    def enter_dir(self, rel_dir: str) -> None: ...

    def cached_lines(self, last_name: str) -> list[str]: ...

    def add_run(self, run: RunItem) -> None: ...

    def add_reused(self, manifest: str, stat: str, entries: int, bytes_total: int) -> None: ...

    def add_big_file(self, rel: str, meta: Meta, chunks: Iterable[bytes]) -> None: ...

    def add_error(self, rel: str, error: str) -> None: ...


Settle = Callable[[str, list[str]], bool]


def scan_tree(root: str, target: ScanTarget, pool: ScanPool, *,
              exclude: Callable[[str], object], racy_from_ns: int,
              settle: Settle | None = None) -> None:
    """Every entry under ``root`` (``exclude``d names left out) into ``target``;
    ``settle`` sees each full listing first (see ``TreeSink.add_tree``)."""
    pending = [("", root)]
    with fewer_collections():
        while pending:
            rel_dir, directory = pending.pop()
            subdirs = _scan_dir(directory, rel_dir, target, pool, exclude, settle,
                                racy_from_ns)
            pending.extend(reversed(subdirs))  # the smallest name is scanned next


def _scan_dir(directory: str, rel_dir: str, target: ScanTarget, pool: ScanPool,
              exclude: Callable[[str], object], settle: Settle | None,
              racy_from_ns: int) -> list[tuple[str, str]]:
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
    target.enter_dir(rel_dir)
    prefix = f"{rel_dir}/" if rel_dir else ""
    in_flight: deque[str] = deque()  # cache texts of the jobs sent, not answered yet

    def jobs() -> Iterator[Job]:
        for batch in _batches(names):
            cache_text = "".join(target.cached_lines(batch[-1]))
            in_flight.append(cache_text)
            yield Job(directory, rel_dir, batch, cache_text, racy_from_ns)

    subdirs: list[tuple[str, str]] = []
    for answer in pool.map(jobs()):
        cache_text = in_flight.popleft()
        for item in answer:
            _handle(item, directory, prefix, target, subdirs, cache_text)
    return subdirs


def _batches(names: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(names), BATCH_NAMES):
        yield names[start:start + BATCH_NAMES]


def _handle(item: Item, directory: str, prefix: str, target: ScanTarget,
            subdirs: list[tuple[str, str]], cache_text: str) -> None:
    if isinstance(item, ReuseItem):
        target.add_reused(item.manifest, cache_text[item.text_from:item.text_to],
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
