"""Checking a repository: structure always, pack contents on request. Never stops at the first
problem: every problem found is collected and reported.

Cancellable between snapshots and between packs: a check only reads, so ``Interrupted`` just
ends it without a report (a partial report would read like a clean one)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.blobs import DamageHook, load_pack, pack_bound, size_possible
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.progress import Progress
from wicked_dr.repository.damage import damaged_pack_ids, load_damage
from wicked_dr.repository.index import read_index
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.repository.packs import PackRecord
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot


@dataclass(frozen=True)
class Problem:
    """One problem: the object it is about (``pack <id>``, ``index <id>``, ``snapshot <id>``)
    and what is wrong with it."""

    object: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"object": self.object, "message": self.message}


@dataclass
class CheckReport:
    """What ``check`` looked at and every problem it found."""

    snapshots: int = 0
    indexes: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_referenced: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Told of every pack found damaged now (not of those recorded before): ``engine/damage``.
    on_damaged: DamageHook | None = None
    recorded_damaged: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, object_id: str, message: str) -> None:
        """Record a problem of object ``<kind> <object_id>``; a message that repeats the
        object's name at its start loses it (errors raised deeper name it already)."""
        name = f"{kind} {object_id}"
        self.problems.append(Problem(name, message.removeprefix(f"{name}: ")))

    def damaged_pack(self, pack_id: str, message: str) -> None:
        """A problem of pack ``pack_id`` that makes its blobs unreadable: also recorded, so
        the next backup stores that data again (unless recorded already)."""
        self.problem("pack", pack_id, message)
        if self.on_damaged is not None and pack_id not in self.recorded_damaged:
            self.recorded_damaged.add(pack_id)
            self.on_damaged(pack_id, self.problems[-1].message)


def check_repository(repo: Repository, *, read_fraction: float = 0.0,
                     progress: Progress | None = None, scratch: Path | None = None,
                     seed: int | None = None,
                     cancel: CancelToken = NOT_CANCELLED,
                     on_damaged: DamageHook | None = None) -> CheckReport:
    """Check every snapshot's references; read ``read_fraction`` of the packs (0..1); tell
    ``on_damaged`` of every pack newly found damaged (missing, wrong size, unreadable).
    ``Interrupted`` at the next snapshot or pack once ``cancel`` is cancelled."""
    report = CheckReport(on_damaged=on_damaged)
    _report_damage_records(repo, report)
    packs = _load_indexes(repo, report)
    stored = dict(repo.list_objects("data"))
    _check_packs_exist(packs, stored, report)
    blob_to_pack = _blob_map(packs)
    _check_snapshots(repo, blob_to_pack, set(stored), report, cancel)
    if read_fraction > 0:
        _read_packs(repo, packs, stored, read_fraction, report, progress, seed, cancel)
    return report


def _report_damage_records(repo: Repository, report: CheckReport) -> None:
    """Packs recorded damaged before: problems until ``repair packs`` drops them."""
    for pack_id in damaged_pack_ids(repo):
        record = load_damage(repo, pack_id)
        report.recorded_damaged.add(pack_id)
        report.problem("pack", pack_id, f"recorded damaged by {record.found_by} at "
                                        f"{record.time} ({record.reason}); run 'wicked-dr "
                                        "repair packs'")


def _load_indexes(repo: Repository, report: CheckReport) -> dict[str, PackRecord]:
    packs: dict[str, PackRecord] = {}
    for index_id in repo.list_ids("index"):
        report.indexes += 1
        try:
            for pack in read_index(repo, index_id):
                packs[pack.pack_id] = pack
        except (IntegrityError, NotFoundError) as exc:
            report.problem("index", index_id, exc.one_line())
    report.packs = len(packs)
    return packs


def _check_packs_exist(packs: dict[str, PackRecord], stored: dict[str, int],
                       report: CheckReport) -> None:
    for pack_id, pack in sorted(packs.items()):
        try:
            pack_bound(pack_id, pack.raw_size)
        except IntegrityError as exc:  # never read (see _read_packs): reported once, here
            report.damaged_pack(pack_id, exc.one_line())
        if pack_id not in stored:
            report.damaged_pack(pack_id, "listed in an index but missing")
        elif stored[pack_id] != pack.stored_size:
            report.damaged_pack(pack_id, f"size {stored[pack_id]}, index says "
                                         f"{pack.stored_size}")
    orphans = set(stored) - set(packs)
    if orphans:
        report.warnings.append(f"{len(orphans)} pack(s) referenced by no index (left by an "
                               "interrupted backup; harmless)")


def _blob_map(packs: dict[str, PackRecord]) -> dict[str, tuple[str, int]]:
    """Blob id -> (pack id, length) as the index says."""
    return {blob.blob_id: (pack.pack_id, blob.length) for pack in packs.values()
            for blob in pack.blobs}


def _check_snapshots(repo: Repository, blobs: dict[str, tuple[str, int]], stored: set[str],
                     report: CheckReport, cancel: CancelToken) -> None:
    for snapshot_id in snapshot_ids(repo):
        cancel.check()
        report.snapshots += 1
        try:
            snapshot = load_snapshot(repo, snapshot_id)
            missing, packs = _references(repo, snapshot, blobs, report)
        except (IntegrityError, NotFoundError) as exc:
            report.problem("snapshot", snapshot_id, exc.one_line())
            continue
        if missing:
            report.problem("snapshot", snapshot_id, f"{len(missing)} blob(s) in no pack, e.g. "
                                                    f"{sorted(missing)[0]}")
        lost = sorted(packs - stored)
        if lost:
            report.problem("snapshot", snapshot_id, f"needs {len(lost)} missing pack(s), "
                                                    f"e.g. pack {lost[0]}")


def _references(repo: Repository, snapshot: Snapshot, blobs: dict[str, tuple[str, int]],
                report: CheckReport) -> tuple[set[str], set[str]]:
    """The snapshot's blobs that are in no index, and the packs holding all the others;
    every entry breaking the manifest rules (``EntryRules``, as restore applies them), and
    every file whose blobs (their lengths in the index) hold more or less than its declared
    size, is reported as a problem of the snapshot."""
    missing: set[str] = set()
    packs: set[str] = set()

    def note(blob_id: str) -> int | None:
        found = blobs.get(blob_id)
        if found is None:
            missing.add(blob_id)
            return None
        packs.add(found[0])
        return found[1]

    def bad_entry(message: str) -> None:  # every offending entry, not just the first
        report.problem("snapshot", snapshot.id, message)

    for entry in iter_entries(repo, snapshot, on_problem=bad_entry, check_modes=True):
        known = [note(blob_id) for blob_id in entry.blobs]
        report.blobs_referenced += len(known)
        lengths = [n for n in known if n is not None]
        if entry.type == "file" and len(lengths) == len(known) and sum(lengths) != entry.size:
            bad_entry(f"manifest entry {entry.path!r}: its blobs hold {sum(lengths)} bytes, "
                      f"not its declared size of {entry.size}")
    for record in snapshot.sources.values():
        for blob_id in record.stream.blobs if record.stream else ():
            note(blob_id)
    return missing, packs


def _read_packs(repo: Repository, packs: dict[str, PackRecord], stored: dict[str, int],
                fraction: float, report: CheckReport, progress: Progress | None,
                seed: int | None, cancel: CancelToken) -> None:
    candidates = sorted(p for p in packs if p in stored and size_possible(packs[p]))
    count = len(candidates) if fraction >= 1 else max(1, round(len(candidates) * fraction))
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    for pack_id in sorted(chosen):
        cancel.check()
        try:
            blobs = load_pack(repo, pack_id, packs[pack_id].raw_size)
            expected = {b.blob_id for b in packs[pack_id].blobs}
            if set(blobs) != expected:
                report.damaged_pack(pack_id, "holds other blobs than its index says")
        except (IntegrityError, NotFoundError) as exc:
            report.damaged_pack(pack_id, exc.one_line())
        report.packs_read += 1
        if progress:
            progress("read", packs[pack_id].stored_size)
