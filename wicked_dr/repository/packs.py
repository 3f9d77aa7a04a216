"""Packs: many blobs in one object, so a backup of many small files costs few PUTs.

Plaintext layout (then zstd-compressed and sealed as one envelope, see crypto.py)::

    b"WDRPACK\\x01"  u32 big-endian header length  header JSON  blob bytes...

The header is ``{"blobs": [[blob_id, offset, length], ...]}`` with offsets relative to the
first byte after the header. The pack id is the SHA-256 of the whole plaintext.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from wicked_dr.errors import IntegrityError
from wicked_dr.repository.crypto import Sealer
from wicked_dr.repository.layout import BLOB_SIZE, object_name
from wicked_dr.repository.segments import Segment

PACK_MAGIC = b"WDRPACK\x01"
# A pack is also cut at this many blobs: tiny files (wicked's index entries can be tens of
# bytes) would otherwise put 100 k+ blobs into one 8 MiB pack, with a header of megabytes
# and as many ids held in memory until it is sealed.
PACK_BLOBS_MAX = 20_000
_HEADER_LEN = struct.Struct(">I")


class BlobLocation(NamedTuple):
    """Where a blob sits inside a pack's data section (a tuple: ~100 k are made per backup)."""

    blob_id: str
    offset: int
    length: int


@dataclass(frozen=True)
class PackRecord:
    """A finished pack: what the index says about it.

    Blobs are three parallel sequences rather than a tuple per blob: a backup makes ~100 k
    of them, and the writer never needs them one by one (see ``blobs`` for readers)."""

    pack_id: str
    raw_size: int
    stored_size: int
    blob_ids: tuple[str, ...]
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    @classmethod
    def of(cls, pack_id: str, raw_size: int, stored_size: int,
           blobs: Iterable[BlobLocation]) -> PackRecord:
        """A record from one location per blob."""
        located = tuple(blobs)
        return cls(pack_id, raw_size, stored_size, tuple(b.blob_id for b in located),
                   tuple(b.offset for b in located), tuple(b.length for b in located))

    @property
    def blobs(self) -> tuple[BlobLocation, ...]:
        return tuple(map(BlobLocation, self.blob_ids, self.offsets, self.lengths))

    def to_json(self) -> dict[str, object]:
        return {"id": self.pack_id, "raw_size": self.raw_size, "stored_size": self.stored_size,
                "blobs": [list(b) for b in zip(self.blob_ids, self.offsets, self.lengths,
                                               strict=True)]}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> PackRecord:
        blobs = (BlobLocation(str(b[0]), int(b[1]), int(b[2]))
                 for b in doc["blobs"])  # type: ignore[attr-defined]
        return cls.of(str(doc["id"]), int(doc["raw_size"]),  # type: ignore[call-overload]
                      int(doc["stored_size"]), blobs)  # type: ignore[call-overload]


class PackBuilder:
    """Accumulates blobs; a full pack is sealed (compressed, encrypted, written to staging)
    by a background thread while the caller goes on reading files.

    zstd, AES-GCM, SHA-256 and file writes release the GIL, so sealing runs on another core.
    At most one pack waits for the sealer, so memory holds about three packs at most.
    A pack is cut between segments, so it may pass the target by one segment.
    ``on_pack`` always runs in the caller's thread, in pack order.
    """

    def __init__(self, sealer: Sealer, staging: Path, target_size: int,
                 on_pack: Callable[[PackRecord, Path], None]) -> None:
        self._sealer = sealer
        self._staging = staging
        self._target = target_size
        self._on_pack = on_pack
        self._segments: list[Segment] = []
        self._pending: set[str] = set()  # added, not yet reported through on_pack
        self._size = 0
        self._blobs = 0
        self._todo: queue.Queue[list[Segment] | None] = queue.Queue(maxsize=1)
        self._done: queue.Queue[_Sealed | BaseException] = queue.Queue()
        self._in_flight = 0
        self._thread: threading.Thread | None = None

    def is_pending(self, blob_id: str) -> bool:
        """Whether ``blob_id`` was added but its pack is not reported yet."""
        return blob_id in self._pending

    def none_pending(self, blob_ids: Iterable[str]) -> bool:
        """Whether none of ``blob_ids`` was added and is still unreported."""
        return self._pending.isdisjoint(blob_ids)

    def add(self, blob_id: str, data: bytes) -> None:
        """Append one blob."""
        self.add_segment(Segment([blob_id], [len(data)], data))

    def add_segment(self, segment: Segment) -> None:
        """Append blobs (distinct, none pending); hand the pack to the sealer once it
        reaches the target size."""
        self._pending.update(segment.blob_ids)
        self._segments.append(segment)
        self._size += len(segment.data)
        self._blobs += len(segment.blob_ids)
        if self._size >= self._target or self._blobs >= PACK_BLOBS_MAX:
            self._submit()
            self._report(block=False)

    def flush(self) -> None:
        """Seal whatever is pending and wait until every pack is reported."""
        self._submit()
        while self._in_flight:
            self._report(block=True)

    def close(self) -> None:
        """Stop the sealer thread (after ``flush``, or to abandon the run)."""
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join()
            self._thread = None

    def _submit(self) -> None:
        if not self._segments:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._seal_loop, name="pack-sealer",
                                            daemon=True)
            self._thread.start()
        segments, self._segments, self._size, self._blobs = self._segments, [], 0, 0
        self._in_flight += 1
        self._todo.put(segments)

    def _report(self, *, block: bool) -> None:
        while self._in_flight:
            try:
                sealed = self._done.get(block=block)
            except queue.Empty:
                return
            self._in_flight -= 1
            if isinstance(sealed, BaseException):
                raise sealed
            self._on_pack(sealed.record, sealed.path)
            self._pending.difference_update(sealed.record.blob_ids)
            block = False

    def _seal_loop(self) -> None:
        while (segments := self._todo.get()) is not None:
            try:
                self._done.put(self._seal(segments))
            except BaseException as exc:  # re-raised in the caller's thread
                self._done.put(exc)

    def _seal(self, segments: list[Segment]) -> _Sealed:
        blob_ids = [i for s in segments for i in s.blob_ids]
        lengths = [n for s in segments for n in s.lengths]
        offsets = [0, *itertools.accumulate(lengths)][:-1]
        # The plaintext in parts, never joined: a pack is not held twice in memory.
        parts = pack_parts(blob_ids, offsets, lengths, [s.data for s in segments])
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        pack_id = digest.hexdigest()
        envelope = self._sealer.seal_parts("data", object_name("data", pack_id), parts)
        path = self._staging / pack_id
        path.write_bytes(envelope)
        return _Sealed(PackRecord(pack_id, sum(map(len, parts)), len(envelope),
                                  tuple(blob_ids), tuple(offsets), tuple(lengths)), path)


@dataclass(frozen=True)
class _Sealed:
    record: PackRecord
    path: Path


def encode_pack(blob_ids: Sequence[str], offsets: Sequence[int], lengths: Sequence[int],
                chunks: list[bytes]) -> bytes:
    """The pack plaintext for blobs whose bytes are ``chunks`` (back to back)."""
    return b"".join(pack_parts(blob_ids, offsets, lengths, chunks))


def pack_parts(blob_ids: Sequence[str], offsets: Sequence[int], lengths: Sequence[int],
               chunks: list[bytes]) -> list[bytes]:
    """The pack plaintext as consecutive parts: magic, header length, header, blob bytes."""
    header = ('{"blobs":[' + blob_rows_json(blob_ids, offsets, lengths) + "]}").encode()
    return [PACK_MAGIC, _HEADER_LEN.pack(len(header)), header, *chunks]


def blob_rows_json(blob_ids: Sequence[str], offsets: Sequence[int],
                   lengths: Sequence[int]) -> str:
    """``["id",offset,length]`` per blob, comma-separated: compact JSON, formatted by hand
    (ids are hex, the rest integers: nothing to escape) because a backup writes ~100 k of
    them twice, in pack headers and index objects; json.dumps takes 60 % longer."""
    return ",".join(map('["%s",%d,%d]'.__mod__, zip(blob_ids, offsets, lengths, strict=True)))


def decode_pack(pack_id: str, plaintext: bytes, *, verify: bool = True) -> dict[str, bytes]:
    """Every blob in a pack by id, each checked against its SHA-256 when ``verify``."""
    blobs = iter_verified(pack_id, plaintext) if verify else iter_pack(pack_id, plaintext)
    return {location.blob_id: data for location, data in blobs}


def iter_verified(pack_id: str, plaintext: bytes) -> Iterator[tuple[BlobLocation, bytes]]:
    """``iter_pack``, with the pack checked against its id first and every blob against its
    own before it is handed out: IntegrityError otherwise."""
    if hashlib.sha256(plaintext).hexdigest() != pack_id:
        raise IntegrityError(f"pack {pack_id}: content does not match its id")
    for location, data in iter_pack(pack_id, plaintext):
        if hashlib.sha256(data).hexdigest() != location.blob_id:
            raise IntegrityError(f"pack {pack_id}: blob {location.blob_id} is corrupt")
        yield location, data


def iter_pack(pack_id: str, plaintext: bytes) -> Iterator[tuple[BlobLocation, bytes]]:
    """The blobs of a pack in storage order, without verification; IntegrityError for a
    header whose blobs do not lie within the plaintext or are larger than ``BLOB_SIZE``."""
    if plaintext[:8] != PACK_MAGIC or len(plaintext) < 12:
        raise IntegrityError(f"pack {pack_id}: bad magic")
    (header_len,) = _HEADER_LEN.unpack_from(plaintext, 8)
    if 12 + header_len > len(plaintext):
        raise IntegrityError(f"pack {pack_id}: header runs past the end")
    try:
        header = json.loads(plaintext[12:12 + header_len])
        locations = [BlobLocation(str(i), int(o), int(n)) for i, o, n in header["blobs"]]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"pack {pack_id}: unreadable header") from None
    data = memoryview(plaintext)[12 + header_len:]
    for location in locations:
        if not (location.offset >= 0 and 0 <= location.length <= BLOB_SIZE):
            raise IntegrityError(f"pack {pack_id}: blob {location.blob_id} has offset "
                                 f"{location.offset} and length {location.length} (a blob "
                                 f"holds 0 to {BLOB_SIZE} bytes)")
        end = location.offset + location.length
        if end > len(data):
            raise IntegrityError(f"pack {pack_id}: blob {location.blob_id} runs past the end")
        yield location, bytes(data[location.offset:end])
