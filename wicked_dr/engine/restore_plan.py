"""Writing a snapshot's files pack by pack: each pack the files need is fetched once, whole.

Restoring entry by entry through ``BlobReader`` fetched a pack again whenever it had fallen
out of its small LRU: after incremental backups a directory's files are spread over many
packs (each backup packs only what changed), so a 96 k-file volume after 12 incrementals of
1 % made 8,152 fetches of its 18 packs (165 s, against 7 fetches and 4.7 s for the first
snapshot), and 10 k files on S3 made 3,540 GETs for 37 packs. Like restic's restorer, the
restore is planned instead:

1. ``restore.py`` collects the file entries in manifest order (directories are created as
   they come, before any file), at most ``PlanLimits.files_per_plan`` at a time.
2. ``plan`` maps every blob to its pack (the index cache) and numbers the packs in order
   of first use. A file is *complete* at the highest-numbered pack it needs; ``done_at[k]``
   lists, in manifest order, the files complete at pack ``k``. A blob that a file complete
   at a later pack also needs is *held* until then.
3. ``write_planned`` fetches the packs in that order on a small thread pool
   (``packs_ahead`` at a time: at most that many fetched-but-unconsumed packs in memory,
   plus the one being written and the one before it, until the next is handed over), and
   as pack ``k`` arrives writes every file of ``done_at[k]``, then forgets the held blobs
   nobody needs after ``k``. Held blobs stay in memory up to ``memory_bytes``; beyond that
   they go to an unlinked scratch file (``scratch``: the state directory's
   ``restore-scratch/``) and are verified against their SHA-256 again when read back.

Most wicked files are one small blob, so the common case holds nothing: a pack arrives and
its files are written. A pack is fetched once per plan, so once for any volume of up to
``files_per_plan`` files; a larger volume is planned in slices, and a pack shared by two
slices is fetched once per slice (memory stays bounded by the slice: the plan keeps each
file's entry and one dictionary entry per blob, ~0.5 KiB a file).

Measured (``bench/README.md``, "Restore planned by pack"), 20 000 users (96 k files), 12
incrementals of 1 %, restoring into a tmpfs: 19 packs fetched once each, 4.8-5.2 s, against
4.5-5.5 s for the first snapshot (7 packs) and 112-117 s with 7 908 fetches before; peak RSS
~178 MiB, ~24 MiB above the old restore's (the plan's file entries).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from wicked_dr.engine.blobs import BlobReader
from wicked_dr.errors import IntegrityError, OperationError
from wicked_dr.repository.manifest import Entry

MIB = 1024 * 1024
# Writes one file from its blobs (``restore._restore_file`` with the run's state), each blob
# fetched through the getter it is handed.
FileWriter = Callable[[Entry, Callable[[str], bytes]], None]


@dataclass(frozen=True)
class PlanLimits:
    """How much a planned restore may hold: ``packs_ahead`` packs fetched in parallel and
    waiting (S3 latency hides behind the writing of the pack before; two do that, and each
    more cost ~20 MiB of peak memory with 8 MiB packs and gained nothing measurable:
    ``bench/README.md``), ``memory_bytes`` of blobs held in memory for
    files further on (the rest spills into ``scratch``, the system's temporary directory
    when None), ``files_per_plan`` file entries planned at once."""

    packs_ahead: int = 2
    memory_bytes: int = 64 * MIB
    files_per_plan: int = 200_000
    scratch: Path | None = None


@dataclass
class Plan:
    """Which packs a slice of files needs, in order, and what to do as each arrives (files
    by their index in the slice)."""

    packs: list[str] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)  # files that need no pack (no blobs)
    done_at: list[list[int]] = field(default_factory=list)
    pack_of_blob: dict[str, int] = field(default_factory=dict)
    held_until: dict[str, int] = field(default_factory=dict)  # only blobs held past their pack
    release_at: list[list[str]] = field(default_factory=list)


def plan(files: list[Entry], reader: BlobReader) -> Plan:
    """The plan for ``files`` (manifest order); IntegrityError for a blob in no index."""
    result = Plan()
    numbers: dict[str, int] = {}
    for index, entry in enumerate(files):
        complete = -1
        for blob_id in entry.blobs:
            number = result.pack_of_blob.get(blob_id)
            if number is None:
                number = numbers.setdefault(reader.pack_of(blob_id), len(numbers))
                result.pack_of_blob[blob_id] = number
            complete = max(complete, number)
        if complete < 0:
            result.empty.append(index)
            continue
        while len(result.done_at) <= complete:
            result.done_at.append([])
        result.done_at[complete].append(index)
        for blob_id in entry.blobs:
            if result.pack_of_blob[blob_id] < complete:
                result.held_until[blob_id] = max(result.held_until.get(blob_id, 0), complete)
    result.packs = list(numbers)
    result.release_at = [[] for _ in result.packs]
    for blob_id, until in result.held_until.items():
        result.release_at[until].append(blob_id)
    return result


def write_planned(files: list[Entry], reader: BlobReader, write: FileWriter,
                  limits: PlanLimits, between_files: Callable[[], None]) -> int:
    """Write ``files`` with ``write``, fetching each pack they need once (see the module);
    ``between_files`` runs before each file: the cancellation point. Returns the bytes that
    went to the scratch file."""
    the_plan = plan(files, reader)
    for index in the_plan.empty:
        between_files()
        write(files[index], _no_blob)
    fetched = _fetched(reader, the_plan.packs, limits.packs_ahead)
    # Closed at once on an error or a cancel, not when a traceback lets go of it: the
    # queued fetches are dropped and the running ones awaited before the error goes on.
    with _Held(limits.memory_bytes, limits.scratch) as held, contextlib.closing(fetched):
        for number, blobs in enumerate(fetched):
            _keep(the_plan, number, blobs, held)
            for index in the_plan.done_at[number]:
                between_files()
                write(files[index], _getter(the_plan, number, blobs, held, reader))
            for blob_id in the_plan.release_at[number]:
                held.drop(blob_id)
        return held.spilled_bytes


def _no_blob(blob_id: str) -> bytes:
    raise AssertionError(f"a file without blobs asked for blob {blob_id}")


def _keep(the_plan: Plan, number: int, blobs: dict[str, bytes], held: _Held) -> None:
    """Hold the blobs of pack ``number`` that files complete at a later pack need."""
    for blob_id, data in blobs.items():
        if blob_id in the_plan.held_until and the_plan.pack_of_blob[blob_id] == number:
            held.put(blob_id, data)


def _getter(the_plan: Plan, number: int, blobs: dict[str, bytes], held: _Held,
            reader: BlobReader) -> Callable[[str], bytes]:
    """The blobs of a file complete at pack ``number``: from that pack, or held from an
    earlier one."""
    def get(blob_id: str) -> bytes:
        own = the_plan.pack_of_blob[blob_id]
        data = blobs.get(blob_id) if own == number else held.get(blob_id)
        if data is None:  # the pack its index names lacks it
            raise reader.not_held(the_plan.packs[own], blob_id)
        return data

    return get


def _fetched(reader: BlobReader, packs: list[str],
             ahead: int) -> Generator[dict[str, bytes], None, None]:
    """Each pack's blobs in order, fetched on ``ahead`` threads, at most ``ahead`` fetched
    but not yet consumed; the queued fetches are cancelled when the consumer stops early."""
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="restore-fetch") as pool:
        pending: deque[Future[dict[str, bytes]]] = deque()
        upcoming = iter(packs)
        try:
            for pack_id in packs:
                while len(pending) < ahead:
                    following = next(upcoming, None)
                    if following is None:
                        break
                    pending.append(pool.submit(reader.pack_job(following)))
                yield reader.opened(pack_id, pending.popleft().result)
        finally:
            for future in pending:
                future.cancel()


class _Held:
    """Blobs kept for files complete at a later pack: in memory up to ``budget`` bytes, then
    in an unlinked scratch file (gone with the process, whatever happens), read back and
    verified again."""

    def __init__(self, budget: int, scratch: Path | None) -> None:
        self._budget = budget
        self._scratch = scratch
        self._memory: dict[str, bytes] = {}
        self._in_memory = 0
        self._spilled: dict[str, tuple[int, int]] = {}
        self._file: BinaryIO | None = None
        self.spilled_bytes = 0

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()

    def put(self, blob_id: str, data: bytes) -> None:
        if blob_id in self._memory or blob_id in self._spilled:
            return
        if self._in_memory + len(data) <= self._budget:
            self._memory[blob_id] = data
            self._in_memory += len(data)
            return
        spill = self._spill_file()
        offset = spill.seek(0, os.SEEK_END)
        try:
            spill.write(data)
        except OSError as exc:  # not the target's disk: NoSpaceError would name the wrong one
            where = self._scratch or tempfile.gettempdir()
            raise OperationError(f"restore: cannot write blobs waiting for later files to the "
                                 f"scratch directory {where}: {exc.strerror}") from None
        self._spilled[blob_id] = (offset, len(data))
        self.spilled_bytes += len(data)

    def get(self, blob_id: str) -> bytes | None:
        """The held blob, None when it was never put (its pack lacked it)."""
        data = self._memory.get(blob_id)
        if data is not None or blob_id not in self._spilled:
            return data
        offset, length = self._spilled[blob_id]
        spill = self._spill_file()
        spill.seek(offset)
        data = spill.read(length)
        if hashlib.sha256(data).hexdigest() != blob_id:
            raise IntegrityError(f"blob {blob_id} read back from the restore's scratch file "
                                 f"{self._scratch} does not match its SHA-256")
        return data

    def drop(self, blob_id: str) -> None:
        """No file needs ``blob_id`` any more (its spilled bytes stay until the end)."""
        data = self._memory.pop(blob_id, None)
        if data is not None:
            self._in_memory -= len(data)
        self._spilled.pop(blob_id, None)

    def _spill_file(self) -> BinaryIO:
        if self._file is None:
            # Closed by __exit__; unlinked at once, so a crash leaves nothing behind.
            self._file = tempfile.TemporaryFile(dir=self._scratch, prefix="restore-")  # noqa: SIM115
        return self._file
