"""Reading blobs back: pack fetches through a small LRU, every byte checked against its hash.

Streams and exports read blob by blob through ``BlobReader.get``; a file tree's restore
plans its fetches by pack instead (``engine/restore_plan.py``) through the same reader's
``pack_of``, ``pack_job`` and ``opened``, so that a missing or damaged pack is reported, and
counted, the same way on both paths."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable

from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.layout import MAX_PACK, object_name
from wicked_dr.repository.packs import PackRecord, decode_pack
from wicked_dr.repository.repo import Repository

PACKS_IN_MEMORY = 4
# Told of a pack that failed verification (its id and the one-line reason): the caller
# records it so that the pack stops being a dedup target (``engine/damage.py``).
DamageHook = Callable[[str, str], None]
# Fetches, opens and verifies one pack (``BlobReader.pack_job``).
PackJob = Callable[[], dict[str, bytes]]


class BlobReader:
    """Fetches blobs by id; keeps the last few decoded packs, since restores read in order."""

    def __init__(self, repo: Repository, index: IndexCache, *,
                 snapshot_id: str | None = None, on_damaged: DamageHook | None = None) -> None:
        self._repo = repo
        self._on_damaged = on_damaged
        self._index = index
        self._packs: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        # Errors name the snapshot being read: the one a missing object makes unrestorable.
        self._of = f"snapshot {snapshot_id}: " if snapshot_id else ""
        self.packs_fetched = 0
        self.bytes_fetched = 0

    def get(self, blob_id: str) -> bytes:
        """The blob's bytes, verified; IntegrityError when missing or corrupt (a snapshot that
        references an object the repository lacks is damage, not "not found")."""
        pack_id = self.pack_of(blob_id)
        blobs = self._pack(pack_id)
        data = blobs.get(blob_id)
        if data is None:
            raise self.not_held(pack_id, blob_id)
        return data

    def pack_of(self, blob_id: str) -> str:
        """The id of the pack holding ``blob_id``; IntegrityError when no index names one."""
        ref = self._index.lookup(blob_id)
        if ref is None:
            raise IntegrityError(f"{self._of}blob {blob_id} is in no index: the repository is "
                                 "damaged (run 'wicked-dr check')")
        return ref.pack_id

    def not_held(self, pack_id: str, blob_id: str) -> IntegrityError:
        """The error for a pack that lacks a blob its index says it holds."""
        return IntegrityError(f"{self._of}pack {pack_id} does not hold blob {blob_id}")

    def pack_job(self, pack_id: str) -> PackJob:
        """What fetches, opens and verifies ``pack_id``: safe to run on another thread (the
        index is asked here, on the caller's), its outcome handed to ``opened``."""
        return functools.partial(load_pack, self._repo, pack_id,
                                 self._index.pack_raw_size(pack_id))

    def opened(self, pack_id: str, outcome: PackJob) -> dict[str, bytes]:
        """The blobs of a pack whose ``pack_job`` ran, ``outcome`` returning them (or raising
        what the job raised): a missing pack becomes damage naming the snapshot, and a pack
        that fails verification is told to ``on_damaged`` before its IntegrityError goes on.
        Counted in ``packs_fetched``; call it on one thread."""
        try:
            blobs = outcome()
        except NotFoundError:
            raise IntegrityError(f"{self._of}pack {pack_id} is missing from the repository "
                                 "(run 'wicked-dr check')") from None
        except IntegrityError as exc:
            if self._on_damaged is not None:
                self._on_damaged(pack_id, exc.one_line())
            raise
        self.packs_fetched += 1
        return blobs

    def _pack(self, pack_id: str) -> dict[str, bytes]:
        if pack_id in self._packs:
            self._packs.move_to_end(pack_id)
            return self._packs[pack_id]
        blobs = self.opened(pack_id, self.pack_job(pack_id))
        self._packs[pack_id] = blobs
        if len(self._packs) > PACKS_IN_MEMORY:
            self._packs.popitem(last=False)
        return blobs


def load_pack(repo: Repository, pack_id: str, raw_size: int | None) -> dict[str, bytes]:
    """Fetch, open and verify one pack: its blobs by id."""
    return decode_pack(pack_id, open_pack(repo, pack_id, raw_size))


def open_pack(repo: Repository, pack_id: str, raw_size: int | None) -> bytes:
    """Fetch and open one pack: its plaintext, not verified yet.

    Decompression is bounded by the reader, never by the repository: ``raw_size`` (the
    index's word, which whoever can write the repository controls) may only lower the
    format's bound ``MAX_PACK``, and the pack must then hold exactly that many bytes."""
    bound = pack_bound(pack_id, raw_size)
    name = object_name("data", pack_id)
    envelope = repo.backend.get(name)
    plaintext = repo.sealer.open("data", name, envelope, max_size=bound)
    if raw_size is not None and len(plaintext) != raw_size:
        raise IntegrityError(f"pack {pack_id}: holds {len(plaintext)} bytes, its index says "
                             f"{raw_size}")
    return plaintext


def pack_bound(pack_id: str, raw_size: int | None) -> int:
    """The most bytes a pack may decompress to: the format's ``MAX_PACK``, or less when the
    index gives its size; IntegrityError for an index size no pack can have."""
    if raw_size is None:
        return MAX_PACK
    if raw_size > MAX_PACK:
        raise IntegrityError(f"pack {pack_id}: its index gives it {raw_size} bytes, more than "
                             f"the {MAX_PACK} a pack may hold")
    if raw_size <= 0:
        raise IntegrityError(f"pack {pack_id}: its index gives it {raw_size} bytes")
    return raw_size


def size_possible(record: PackRecord) -> bool:
    """Whether the index gives the pack a size it may have (``pack_bound``): one that does
    not is never read."""
    try:
        pack_bound(record.pack_id, record.raw_size)
    except IntegrityError:
        return False
    return True
