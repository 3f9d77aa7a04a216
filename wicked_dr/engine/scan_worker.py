"""Scanning one batch of a directory: ``lstat`` each entry, read and hash what changed, and
write the entries' manifest and stat-cache lines.

``scan_batch`` is the whole job. The tree scan runs it in worker processes
(``python -m wicked_dr.engine.scan_worker``), which is why this module imports only the
standard library and two tiny modules of the format: a worker is up within tens of
milliseconds. Per file the work is a few system calls, a SHA-256 and two formatted lines,
which one Python process cannot spread over two cores; worker processes can.

What crosses the pipes is kept small, because pickling it is work too. A job carries each
name's stat key from the previous snapshot (not its cached lines); an unchanged file comes
back as part of a ``ReuseItem`` range (not as text), and the main process reuses the cached
lines it already holds. New content comes back as one ``Segment`` per run.

Wire protocol (stdin to stdout, in order): frames of a 4-byte big-endian length and a pickle.
A job is ``Job``'s fields as a tuple; the answer is ``scan_batch``'s list. End of input ends
the worker.

The workers are plain ``python -S -m`` children with their own pipes, not multiprocessing's,
because they must start without forking the backup's multi-threaded process: started by
multiprocessing's forkserver instead, the same batches of a 20 000-user volume took 3.9-4.7 s
(full) and 2.7-4.2 s (unchanged) against 1.1-2.0 s and 0.5-1.4 s (``bench/bench_mechanisms.py``,
medians of 3).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import signal
import stat
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, NamedTuple

from wicked_dr.repository.entry_lines import (
    dir_line,
    file_line,
    stat_key,
    stat_line,
    symlink_line,
)
from wicked_dr.repository.segments import Segment

# A file this large (or one that grew past its stat size) is left to the main process, which
# streams it in chunks: an answer frame must stay small. Below the blob size (4 MiB), so an
# inline file is always exactly one blob.
INLINE_MAX = 1 << 20
# Inline content per batch; past it, files are left to the main process as well.
BATCH_BYTES = 8 << 20
FRAME = struct.Struct(">I")
NICENESS = 5  # scheduling priority of a worker, relative to the main process
GC_THRESHOLD = 50_000  # container allocations between collections while scanning
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_sha256 = hashlib.sha256


class Job(NamedTuple):
    """One batch: names of one directory (ascending) and what the stat cache knows of them."""

    directory: str  # absolute path
    rel_dir: str  # path in the snapshot ("" for the root)
    names: list[str]
    cached_keys: list[str | None]  # per name, its stat key in the previous snapshot, or None
    racy_from_ns: int  # files modified at or after this are re-read even when they match


@dataclass
class Run:
    """Consecutive entries the worker formatted completely, in manifest order."""

    manifest: list[str] = field(default_factory=list)
    stat: list[str] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)  # new content: length by id, in order
    contents: list[bytes] = field(default_factory=list)
    subdirs: list[str] = field(default_factory=list)
    dirs: int = 0
    symlinks: int = 0
    bytes_read: int = 0  # every file of a run was read (the unchanged are ReuseItems)


class RunItem(NamedTuple):
    """Consecutive entries formatted completely by the worker."""

    manifest: str  # their manifest lines
    stat: str  # the stat-cache lines of their files
    entries: int
    blobs: Segment  # their new content, each blob once
    subdirs: list[str]  # names of the directories among them
    files: int
    dirs: int
    symlinks: int
    bytes_total: int
    bytes_read: int


class BigItem(NamedTuple):
    """A file for the main process to stream (too big for an answer, or it grew)."""

    name: str
    meta: tuple[int, int, int, int, int, int, int]  # mode uid gid size mtime ctime inode


class ErrorItem(NamedTuple):
    """An entry that could not be read: reported, not recorded."""

    name: str
    message: str


class ReuseItem(NamedTuple):
    """``names[start:stop]`` of the job are unchanged files: their cached lines stand."""

    start: int
    stop: int
    bytes_total: int


Item = RunItem | BigItem | ErrorItem | ReuseItem  # an answer: these, in manifest order


def scan_batch(job: Job) -> list[Item]:
    """Scan one batch: its entries as items, in manifest order."""
    return _BatchScanner(job).scan()


class _BatchScanner:
    def __init__(self, job: Job) -> None:
        self._job = job
        self._prefix = f"{job.rel_dir}/" if job.rel_dir else ""
        self._items: list[Item] = []
        self._run = Run()
        self._budget = BATCH_BYTES
        self._reuse_start = -1  # start of the open range of unchanged files, or -1
        self._reuse_bytes = 0

    def scan(self) -> list[Item]:
        # The loop runs once per file of the volume: locals, and the unchanged file (by far
        # the most common in an incremental backup) handled inline.
        job = self._job
        directory, racy_from_ns, lstat = job.directory, job.racy_from_ns, os.lstat
        for i, (name, cached_key) in enumerate(zip(job.names, job.cached_keys, strict=True)):
            path = f"{directory}/{name}"
            try:
                st = lstat(path)
            except OSError as exc:
                self._close_reuse(i)
                self._item(ErrorItem(name, _message(exc)))
                continue
            if (cached_key is not None and st.st_mtime_ns < racy_from_ns
                    and stat.S_ISREG(st.st_mode)
                    and cached_key == stat_key(st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                               st.st_ino)):
                # Same size, mtime, ctime and inode: same content, mode and owner (chmod and
                # chown change ctime). Both cached lines stand.
                if self._reuse_start < 0:
                    self._close_run()
                    self._reuse_start = i
                self._reuse_bytes += st.st_size
                continue
            self._close_reuse(i)
            if stat.S_ISREG(st.st_mode):
                self._changed(name, path, st)
            else:
                self._other(name, path, st)
        self._close_run()
        self._close_reuse(len(job.names))
        return self._items

    def _close_reuse(self, stop: int) -> None:
        """End the open range of unchanged files before ``names[stop]``."""
        if self._reuse_start >= 0:
            self._items.append(ReuseItem(self._reuse_start, stop, self._reuse_bytes))
            self._reuse_start, self._reuse_bytes = -1, 0

    def _other(self, name: str, path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            self._run.manifest.append(dir_line(self._prefix + name, stat.S_IMODE(st.st_mode),
                                               st.st_uid, st.st_gid, st.st_mtime_ns))
            self._run.subdirs.append(name)
            self._run.dirs += 1
        elif stat.S_ISLNK(st.st_mode):
            self._symlink(name, path, st)
        else:
            self._item(ErrorItem(name, "not a regular file, directory or symlink; skipped"))

    def _changed(self, name: str, path: str, st: os.stat_result) -> None:
        if st.st_size > min(INLINE_MAX, self._budget):
            self._big(name, st)
            return
        content = _read_small(path, st.st_size)
        if isinstance(content, str):
            self._item(ErrorItem(name, content))
            return
        if content is None:
            self._big(name, st)  # it grew since the lstat
            return
        run = self._run
        size = len(content)  # a file that shrank since the lstat is recorded as read
        sha = _sha256(content).hexdigest() if content else EMPTY_SHA256
        mtime_ns = st.st_mtime_ns
        line = file_line(self._prefix + name, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         mtime_ns, size, sha)
        run.manifest.append(line)
        run.stat.append(stat_line(name, stat_key(size, mtime_ns, st.st_ctime_ns, st.st_ino),
                                  line))
        if content and sha not in run.blobs:  # each blob once, however many files have it
            run.blobs[sha] = size
            run.contents.append(content)
        run.bytes_read += size
        self._budget -= size

    def _symlink(self, name: str, path: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(path)
        except OSError as exc:
            self._item(ErrorItem(name, _message(exc)))
            return
        self._run.manifest.append(symlink_line(self._prefix + name, stat.S_IMODE(st.st_mode),
                                               st.st_uid, st.st_gid, st.st_mtime_ns, target))
        self._run.symlinks += 1

    def _big(self, name: str, st: os.stat_result) -> None:
        self._item(BigItem(name, (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                  st.st_mtime_ns, st.st_ctime_ns, st.st_ino)))

    def _item(self, item: Item) -> None:
        """An item the main process handles itself: close the open run first (order)."""
        self._close_run()
        self._items.append(item)

    def _close_run(self) -> None:
        run = self._run
        if run.manifest:
            blobs = Segment(list(run.blobs), list(run.blobs.values()), b"".join(run.contents))
            entries = len(run.manifest)
            self._items.append(RunItem("".join(run.manifest), "".join(run.stat), entries,
                                       blobs, run.subdirs, entries - run.dirs - run.symlinks,
                                       run.dirs, run.symlinks, run.bytes_read,
                                       run.bytes_read))
            self._run = Run()


def _read_small(path: str, size: int) -> bytes | str | None:
    """The content; None when the file is larger than ``size`` now; a message on error."""
    try:
        # O_NOFOLLOW: never read through a symlink swapped in after the lstat.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            # One byte more than stat said, so a file that grew meanwhile is noticed.
            content = os.read(fd, size + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        return _message(exc)
    return None if len(content) > size else content


def _message(exc: OSError) -> str:
    return exc.strerror or str(exc)


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame's payload, or None at a clean end of input."""
    header = stream.read(FRAME.size)
    if not header:
        return None
    if len(header) < FRAME.size:
        raise EOFError("truncated frame header")
    (length,) = FRAME.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        raise EOFError("truncated frame")
    return payload


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def serve(jobs: IO[bytes], answers: IO[bytes]) -> None:
    """Answer jobs until end of input."""
    with fewer_collections():
        while (payload := read_frame(jobs)) is not None:
            job = Job(*pickle.loads(payload))  # from our parent only
            write_frame(answers, pickle.dumps(scan_batch(job), protocol=5))


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Rarer garbage collections during a scan: every answer and batch makes thousands of
    container objects but no reference cycles, and the collector's passes over them took
    ~5 % of an incremental backup. The objects alive before are frozen (never scanned
    again) until the end."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], GC_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the main process, which hands out the jobs, packs and seals: with more workers
    # than CPUs it must never wait for one (measured: full backup -11 %, incremental -4 %).
    # It also makes a backup yield to portal-api on a busy host.
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    # A broken pipe or a cut frame: the parent is gone, nobody waits for an answer.
    with contextlib.suppress(BrokenPipeError, EOFError):
        serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    # Run the copy imported under the module's real name: answers are pickled by class
    # path, and the parent knows these classes as wicked_dr.engine.scan_worker.*, not __main__.
    from wicked_dr.engine.scan_worker import main as module_main

    module_main()
