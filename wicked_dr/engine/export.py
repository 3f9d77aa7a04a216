"""The way out of our format: a snapshot as a plain tar stream (contents hash-verified).

A reader of the stream (``| tar -t``) may close it as soon as it has read the end-of-archive
blocks, while the record padding after them is still being written: that is success. A reader
that closes before the end-of-archive blocks did not get the whole tar: ``ReaderClosedError``.

A cancelled export stops between entries with ``Interrupted``; what was written so far lacks
the end-of-archive blocks, so no tar reader takes it for a whole archive (and the action
removes a partial file).
"""

from __future__ import annotations

import hashlib
import io
import select
import tarfile
from dataclasses import dataclass
from typing import IO, Any

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.restore import size_error
from wicked_dr.errors import IntegrityError, OperationError
from wicked_dr.repository.manifest import PERMISSION_BITS, Entry, depth_first_order, iter_entries
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot


class _BlobStream(io.RawIOBase):
    """A file's content read blob by blob, never beyond the size its entry declares.

    tarfile reads exactly the declared size; the stream fills each read across blobs, and
    once that many bytes are fetched (before the last of them is handed out) checks that no
    blob holds more and that the whole SHA-256 matches. ``finish`` does the same for what
    tarfile never reads (an empty file): ``IntegrityError`` naming the entry."""

    def __init__(self, reader: BlobReader, entry: Entry) -> None:
        self._reader = reader
        self._entry = entry
        self._blobs = iter(entry.blobs)
        self._buffer = memoryview(b"")
        self._fetched = 0
        self._digest = hashlib.sha256()
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = 0
        while n < len(out):
            if not self._buffer and not self._fetch():
                break
            take = min(len(out) - n, len(self._buffer))
            out[n:n + take] = self._buffer[:take]
            self._buffer = self._buffer[take:]
            n += take
        return n

    def _fetch(self) -> bool:
        """The next blob into the buffer; False at the declared size (all checked)."""
        if self._fetched == self._entry.size:
            self.finish()
            return False
        blob_id = next(self._blobs, None)
        if blob_id is None:
            raise size_error(self._entry, "less", "export stopped")
        data = self._reader.get(blob_id)
        if self._fetched + len(data) > self._entry.size:
            raise size_error(self._entry, "more", "export stopped")
        self._digest.update(data)
        self._fetched += len(data)
        self._buffer = memoryview(data)
        if self._fetched == self._entry.size:
            self.finish()  # before the last bytes go out
        return True

    def finish(self) -> None:
        """Check the rest: no further data, the declared size reached, the whole SHA-256."""
        if self._finished:
            return
        for blob_id in self._blobs:
            if self._reader.get(blob_id):
                raise size_error(self._entry, "more", "export stopped")
        if self._fetched != self._entry.size:
            raise size_error(self._entry, "less", "export stopped")
        if self._digest.hexdigest() != self._entry.sha256:
            raise IntegrityError(f"{self._entry.path}: content does not match its SHA-256")
        self._finished = True


def read_entry(reader: BlobReader, entry: Entry) -> bytes:
    """A (small) file's whole content, every blob and the whole SHA-256 verified."""
    stream = _BlobStream(reader, entry)
    data = stream.read()
    stream.finish()
    return bytes(data or b"")


class ReaderClosedError(OperationError):
    """The reader of the tar stream closed it before the end of the archive."""

    def __init__(self, out_name: str, delivered: int) -> None:
        self.delivered = delivered
        super().__init__(f"export: the reader closed {out_name} after {delivered} bytes, "
                         "before the end of the tar")


@dataclass(frozen=True)
class TarStats:
    """What an export wrote: entries, bytes the reader took, and whether it closed the
    stream after the end of the archive (then ``out`` is a broken pipe)."""

    entries: int
    bytes_written: int
    reader_closed: bool


class _CountingWriter(io.RawIOBase):
    """Every byte to ``out``, counting what the reader accepted (exactly, when ``out`` is
    unbuffered: each short write is counted). Once the reader has gone (EPIPE), further
    writes are dropped: tarfile still flushes its buffer while unwinding."""

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self._out = out
        self.written = 0
        self.broken = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.broken:
            return len(data)
        view = memoryview(data)
        while view:
            try:
                n = self._out.write(view)
            except BrokenPipeError:
                self.broken = True
                raise
            if n is None:  # a non-blocking output that is full: wait until it takes more
                select.select([], [self._out], [])
                continue
            self.written += n
            view = view[n:]
        return len(data)


def export_tar(repo: Repository, reader: BlobReader, snapshot: Snapshot,
               out: IO[bytes], *, out_name: str = "the output",
               cancel: CancelToken = NOT_CANCELLED,
               owner: tuple[int, int] | None = None) -> TarStats:
    """Write ``snapshot`` as a tar stream to ``out`` (best unbuffered: the byte count at a
    closed reader is then exact). A reader closing ``out`` after the end-of-archive blocks is
    success; before them, ``ReaderClosedError`` naming ``out_name``. ``Interrupted`` before
    the next entry once ``cancel`` is cancelled. Entries carry the owner the snapshot
    records, or ``owner`` (uid, gid) when given (a restore never gives the recorded one
    back: the scratch volumes of ``verify`` are filled from this tar)."""
    counted = _CountingWriter(out)
    count = 0
    end_of_archive: int | None = None
    try:
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            entries = iter_entries(repo, snapshot)
            for entry in depth_first_order(entries, snapshot.version):
                cancel.check("interrupted before the end of the tar")
                if entry.type == "file":
                    content = _BlobStream(reader, entry)
                    tar.addfile(_tarinfo(entry, owner), content)
                    content.finish()
                else:
                    tar.addfile(_tarinfo(entry, owner))
                count += 1
            # The two zero blocks that end the archive; only record padding follows them.
            end_of_archive = int(tar.offset) + 2 * tarfile.BLOCKSIZE
    except BrokenPipeError:
        if end_of_archive is None or counted.written < end_of_archive:
            raise ReaderClosedError(out_name, counted.written) from None
    return TarStats(count, counted.written, counted.broken)


def _tarinfo(entry: Entry, owner: tuple[int, int] | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode & PERMISSION_BITS  # docs/format.md section 7
    info.uid, info.gid = owner or (entry.uid, entry.gid)
    info.mtime = entry.mtime_ns // 10**9
    # PAX keeps the nanoseconds a float would round away.
    info.pax_headers = {"mtime": f"{entry.mtime_ns // 10**9}.{entry.mtime_ns % 10**9:09d}"}
    if entry.type == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.type == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target or ""
    else:
        info.size = entry.size
    return info

