"""Repairing a damaged repository: the index rebuilt from the packs, damaged packs dropped,
snapshots whose data is gone listed and, when asked, forgotten.

Every repair writes what replaces an object before it deletes the object (new index objects
before the old ones go, the pack's index entries before the pack, the pack before its damage
record), so a repair killed at any point leaves the repository no worse than before: at
worst an index object too many (the union of index objects is the index; a blob listed twice
is the same bytes) or an unindexed pack, and running the repair again finishes the job.
The caller holds the exclusive repository lock. With ``dry_run`` nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.blobs import open_pack, size_possible
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.engine.snapshot_writer import INDEX_BLOBS_PER_OBJECT
from wicked_dr.errors import IntegrityError, NotFoundError, RefusedError
from wicked_dr.log import get_logger
from wicked_dr.progress import Progress
from wicked_dr.repository.damage import damaged_pack_ids, forget_damage
from wicked_dr.repository.index import index_document, read_index
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.repository.packs import PackRecord, iter_verified
from wicked_dr.repository.repo import Repository, content_id
from wicked_dr.repository.snapshot import Snapshot

log = get_logger(__name__)
LOST_FILES_SHOWN = 20  # per snapshot, in a report: the count is always complete


@dataclass
class IndexState:
    """The index as the repository holds it: every readable index object's packs, and the
    index objects that could not be read."""

    packs: dict[str, PackRecord] = field(default_factory=dict)
    index_ids: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    by_index: dict[str, list[PackRecord]] = field(default_factory=dict)  # readable ones

    @classmethod
    def load(cls, repo: Repository) -> IndexState:
        state = cls()
        for index_id in repo.list_ids("index"):
            state.index_ids.append(index_id)
            try:
                state.by_index[index_id] = read_index(repo, index_id)
            except (IntegrityError, NotFoundError) as exc:
                log.warning("index object unreadable", index=index_id, error=exc.one_line())
                state.unreadable.append(index_id)
                continue
            for record in state.by_index[index_id]:
                state.packs.setdefault(record.pack_id, record)
        return state

    def blob_packs(self, excluding: Iterable[str] = ()) -> dict[str, str]:
        """Which pack holds each blob, leaving out the packs ``excluding``."""
        left_out = set(excluding)
        return {blob_id: pack.pack_id for pack in self.packs.values()
                if pack.pack_id not in left_out for blob_id in pack.blob_ids}


# --- repair index ----------------------------------------------------------------------------


@dataclass
class IndexRepair:
    """What ``repair index`` found and did."""

    dry_run: bool
    packs_indexed: int = 0
    packs_read: int = 0
    packs_added: list[str] = field(default_factory=list)  # stored packs no index listed
    packs_dropped: list[str] = field(default_factory=list)  # listed, but missing or unreadable
    index_objects_unreadable: list[str] = field(default_factory=list)
    index_objects_written: int = 0
    index_objects_removed: int = 0
    changed: bool = False


def repair_index(repo: Repository, *, dry_run: bool, read_all: bool = False,
                 progress: Progress | None = None,
                 cancel: CancelToken = NOT_CANCELLED) -> IndexRepair:
    """Make the index describe exactly the packs that are stored and readable: a pack an
    index object lists with its stored size is trusted as listed (every pack is read with
    ``read_all``); any other stored pack is read, verified, and indexed from its own header
    (packs are self-describing); a listed pack that is missing or unreadable is left out."""
    state = IndexState.load(repo)
    stored = dict(repo.list_objects("data"))
    report = IndexRepair(dry_run, index_objects_unreadable=list(state.unreadable))
    kept: list[PackRecord] = []
    for pack_id, size in sorted(stored.items()):
        cancel.check()
        listed = state.packs.get(pack_id)
        if listed is not None and not read_all and _listed_as_stored(listed, size):
            kept.append(listed)
            continue
        record = _read_pack(repo, pack_id, size, report, progress)
        if record is not None:
            kept.append(record)
            if listed is None:
                report.packs_added.append(pack_id)
    report.packs_dropped = sorted(set(state.packs) - {r.pack_id for r in kept})
    report.packs_indexed = len(kept)
    report.changed = bool(report.packs_added or report.packs_dropped or state.unreadable
                          or _differs(state, kept))
    if report.changed and not dry_run:
        _replace_index(repo, state.index_ids, kept, report)
    return report


def _listed_as_stored(record: PackRecord, stored_size: int) -> bool:
    return record.stored_size == stored_size and size_possible(record)


def _differs(state: IndexState, kept: list[PackRecord]) -> bool:
    """Whether index entries would change (a pack read again whose record differs)."""
    return any(state.packs.get(r.pack_id) != r for r in kept)


def _read_pack(repo: Repository, pack_id: str, stored_size: int, report: IndexRepair,
               progress: Progress | None) -> PackRecord | None:
    """A stored pack's record from its own header, every blob verified; None when it is
    damaged (logged)."""
    report.packs_read += 1
    try:
        record = read_pack_record(repo, pack_id, stored_size)
    except (IntegrityError, NotFoundError) as exc:
        log.error("pack unreadable; left out of the index", pack=pack_id, error=exc.one_line())
        return None
    finally:
        if progress:
            progress("read", stored_size)
    return record


def read_pack_record(repo: Repository, pack_id: str, stored_size: int) -> PackRecord:
    """Fetch and verify a pack, and describe it as an index does."""
    plaintext = open_pack(repo, pack_id, None)
    locations = [location for location, _ in iter_verified(pack_id, plaintext)]
    return PackRecord.of(pack_id, len(plaintext), stored_size, locations)


def _replace_index(repo: Repository, old_ids: list[str], records: list[PackRecord],
                   report: IndexRepair) -> None:
    """New index objects first, then the old ones go (see the module docstring)."""
    new_ids = [save_index(repo, chunk) for chunk in index_chunks(records)]
    report.index_objects_written = len(new_ids)
    for index_id in old_ids:
        if index_id not in new_ids:
            repo.backend.delete(object_name("index", index_id))
            report.index_objects_removed += 1
    log.info("index rebuilt", packs=len(records), written=len(new_ids),
             removed=report.index_objects_removed)


def index_chunks(records: list[PackRecord]) -> Iterator[list[PackRecord]]:
    """Index objects of about INDEX_BLOBS_PER_OBJECT blobs each, as backups write them."""
    chunk: list[PackRecord] = []
    blobs = 0
    for record in records:
        chunk.append(record)
        blobs += len(record.blob_ids)
        if blobs >= INDEX_BLOBS_PER_OBJECT:
            yield chunk
            chunk, blobs = [], 0
    if chunk:
        yield chunk


def save_index(repo: Repository, records: list[PackRecord]) -> str:
    plaintext = index_document(records)
    index_id = content_id(plaintext)
    repo.save("index", index_id, plaintext)
    repo.backend.sync()
    return index_id


# --- snapshots whose data is gone ------------------------------------------------------------


@dataclass
class SnapshotDamage:
    """A snapshot that cannot be restored whole, and why."""

    snapshot: str
    reason: str
    files_lost: int = 0
    files: list[str] = field(default_factory=list)  # the first LOST_FILES_SHOWN of them

    def to_json(self) -> dict[str, object]:
        return {"snapshot": self.snapshot, "reason": self.reason,
                "files_lost": self.files_lost, "files": self.files}


def damaged_snapshots(repo: Repository, *, unusable_packs: Iterable[str] = (),
                      cancel: CancelToken = NOT_CANCELLED,
                      state: IndexState | None = None) -> list[SnapshotDamage]:
    """Every snapshot whose data is not all there: unreadable, a tree gone, a blob in no
    index, in a missing pack, or only in one of ``unusable_packs`` (damaged, or about to be
    dropped). Intact snapshots are not listed. ``state``: the index, if loaded already."""
    state = state or IndexState.load(repo)
    stored = {pack_id for pack_id, _ in repo.list_objects("data")}
    unusable = set(unusable_packs) | (set(state.packs) - stored)
    where = state.blob_packs(excluding=unusable)
    found = []
    for snapshot_id in snapshot_ids(repo):
        cancel.check()
        damage = _snapshot_damage(repo, snapshot_id, where)
        if damage is not None:
            found.append(damage)
    return found


def _snapshot_damage(repo: Repository, snapshot_id: str,
                     where: dict[str, str]) -> SnapshotDamage | None:
    try:
        snapshot = load_snapshot(repo, snapshot_id)
        return _lost_files(repo, snapshot, where)
    except (IntegrityError, NotFoundError) as exc:
        return SnapshotDamage(snapshot_id, exc.one_line())


def _lost_files(repo: Repository, snapshot: Snapshot,
                where: dict[str, str]) -> SnapshotDamage | None:
    damage = SnapshotDamage(snapshot.id, "")
    for entry in iter_entries(repo, snapshot, on_problem=lambda _: None):
        if any(blob_id not in where for blob_id in entry.blobs):
            damage.files_lost += 1
            if len(damage.files) < LOST_FILES_SHOWN:
                damage.files.append(entry.path)
    streams = [name for name, record in snapshot.sources.items()
               if record.stream and any(b not in where for b in record.stream.blobs)]
    if not damage.files_lost and not streams:
        return None
    parts = [f"{damage.files_lost} file(s) lost"] if damage.files_lost else []
    parts += [f"the {name} stream lost" for name in streams]
    damage.reason = ", ".join(parts)
    return damage


def forget_snapshots(repo: Repository, damaged: list[SnapshotDamage]) -> None:
    """Remove these snapshot objects (and their verification records, now meaningless)."""
    for damage in damaged:
        repo.backend.delete(object_name("snapshot", damage.snapshot))
        if repo.has("verification", damage.snapshot):
            repo.backend.delete(object_name("verification", damage.snapshot))
        log.warning("snapshot forgotten: its data is gone", snapshot=damage.snapshot,
                    reason=damage.reason)


# --- repair packs ----------------------------------------------------------------------------


@dataclass
class PackRepair:
    """What ``repair packs`` found and did."""

    dry_run: bool
    packs: list[str] = field(default_factory=list)
    records_cleared: list[str] = field(default_factory=list)  # the pack read intact
    index_objects_rewritten: int = 0
    snapshots_losing_data: list[SnapshotDamage] = field(default_factory=list)


@dataclass(frozen=True)
class PackChoice:
    """The packs ``repair packs`` drops, and the damage records found wrong (the pack reads
    intact: a record is advisory, and whoever can write the bucket can forge one)."""

    damaged: list[str]
    wrongly_recorded: list[str]


def choose_packs(repo: Repository, named: list[str]) -> PackChoice:
    """The packs named, or every pack with a damage record, each read to confirm it is
    damaged or gone: an intact pack is never dropped, and naming one is refused."""
    recorded = damaged_pack_ids(repo)
    candidates = sorted(set(named)) if named else recorded
    damaged: list[str] = []
    intact: list[str] = []
    for pack_id in candidates:
        (intact if reads_intact(repo, pack_id) else damaged).append(pack_id)
    named_intact = [p for p in intact if p in named]
    if named_intact:
        raise RefusedError(f"pack {named_intact[0]} reads intact; it is not dropped (name only "
                           "packs that check --read-data reports damaged)")
    return PackChoice(damaged, [p for p in intact if p in recorded])


def confirmed_damaged(repo: Repository) -> list[str]:
    """The packs with a damage record that indeed read damaged, or are gone."""
    return [p for p in damaged_pack_ids(repo) if not reads_intact(repo, p)]


def reads_intact(repo: Repository, pack_id: str) -> bool:
    """Whether the pack is stored and every byte of it verifies."""
    try:
        size = repo.backend.stat(object_name("data", pack_id)).size
        read_pack_record(repo, pack_id, size)
    except (IntegrityError, NotFoundError):
        return False
    return True


def repair_packs(repo: Repository, choice: PackChoice, *, dry_run: bool,
                 cancel: CancelToken = NOT_CANCELLED) -> PackRepair:
    """Drop damaged packs: out of the index (each index object listing one is replaced by
    one without it), then the pack objects, then their damage records. A pack is one sealed
    zstd frame, so none of its blobs is salvaged; the report lists the files of every
    snapshot that are lost with them (the next backup stores again what the volume holds)."""
    pack_ids = choice.damaged
    report = PackRepair(dry_run, packs=sorted(pack_ids),
                        records_cleared=list(choice.wrongly_recorded))
    if not dry_run:
        for pack_id in choice.wrongly_recorded:
            forget_damage(repo, pack_id)
            log.warning("damage record removed: the pack reads intact", pack=pack_id)
    if not pack_ids:
        return report
    state = IndexState.load(repo)
    report.snapshots_losing_data = damaged_snapshots(repo, unusable_packs=pack_ids,
                                                     cancel=cancel, state=state)
    if dry_run:
        return report
    dropped = set(pack_ids)
    report.index_objects_rewritten = _drop_from_index(repo, state, dropped)
    for pack_id in sorted(dropped):
        cancel.check()
        repo.backend.delete(object_name("data", pack_id))
        forget_damage(repo, pack_id)
        log.warning("damaged pack dropped", pack=pack_id)
    return report


def _drop_from_index(repo: Repository, state: IndexState, dropped: set[str]) -> int:
    """Replace every index object listing a dropped pack; how many were replaced. An
    unreadable index object is left for ``repair index``."""
    rewritten = 0
    for index_id, records in state.by_index.items():
        if not dropped & {r.pack_id for r in records}:
            continue
        left = [r for r in records if r.pack_id not in dropped]
        if left:
            save_index(repo, left)
        repo.backend.delete(object_name("index", index_id))
        rewritten += 1
    return rewritten
