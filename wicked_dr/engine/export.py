"""The way out of our format: a snapshot as a plain tar stream (contents hash-verified)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import IO, Any

from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.restore import check_relative
from wicked_dr.errors import IntegrityError
from wicked_dr.repository.manifest import Entry, depth_first_order, iter_entries
from wicked_dr.repository.repo import Repository


class _BlobStream(io.RawIOBase):
    """A file's content read blob by blob, hash-checked at the end."""

    def __init__(self, reader: BlobReader, entry: Entry) -> None:
        self._reader = reader
        self._entry = entry
        self._blobs = iter(entry.blobs)
        self._buffer = b""
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer:
            blob_id = next(self._blobs, None)
            if blob_id is None:
                self._verify()
                return 0
            self._buffer = self._reader.get(blob_id)
            self._digest.update(self._buffer)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _verify(self) -> None:
        if self._digest.hexdigest() != self._entry.sha256:
            raise IntegrityError(f"{self._entry.path}: content does not match its SHA-256")


def export_tar(repo: Repository, reader: BlobReader, snapshot: dict[str, Any],
               out: IO[bytes]) -> int:
    """Write ``snapshot`` as a tar stream to ``out``; return the number of entries."""
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        entries = iter_entries(repo, snapshot)
        for entry in depth_first_order(entries, int(snapshot.get("version", 1))):
            check_relative(entry.path)  # tar members obey the restore path rules
            tar.addfile(_tarinfo(entry), _BlobStream(reader, entry)
                        if entry.type == "file" else None)
            count += 1
    return count


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
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

