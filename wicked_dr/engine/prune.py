"""Prune: forget the snapshots the retention policy lets go, then remove the data only they
used, in an order that keeps every kept snapshot readable at every instant (docs/format.md,
"Prune"):

1. snapshot objects of forgotten snapshots (each then its verification record);
2. new packs holding the still-used blobs of packs being repacked;
3. new index objects: the new packs, and every index object that lists a pack going away,
   rewritten without it;
4. the replaced index objects;
5. the packs no index lists any more (unused, repacked, and unindexed leftovers of crashed
   runs), then their damage records;
6. tree objects no remaining snapshot names.

A kill at any point leaves at worst a pack or tree nobody needs, or a blob listed twice (the
union of index objects is the index); the next prune removes them. Everything that would be
deleted is decided before the first write (``plan_prune``), so a dry run shows exactly that.
The caller holds the exclusive repository lock; nothing else writes meanwhile.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.config import Config
from wicked_dr.cron import period_s
from wicked_dr.engine.blobs import load_pack
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids, snapshot_time
from wicked_dr.engine.repair import IndexState, index_chunks, save_index
from wicked_dr.engine.retention import Candidate, Decision, apply_policy
from wicked_dr.errors import IntegrityError, NotFoundError, RefusedError
from wicked_dr.log import get_logger
from wicked_dr.progress import Progress
from wicked_dr.repository.damage import damaged_pack_ids, forget_damage
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.manifest import decode_tree
from wicked_dr.repository.packs import PACK_BLOBS_MAX, PackRecord, encode_pack
from wicked_dr.repository.repo import Repository, content_id
from wicked_dr.repository.shrink import Counts, guard_shrink, is_forced, largest_references
from wicked_dr.repository.snapshot import Snapshot
from wicked_dr.repository.verification import (
    VerificationRecord,
    load_verification,
)

log = get_logger(__name__)
RECENT = 10  # snapshots the shrink guard compares with when verify is not scheduled
# Tests only: ``WDR_TEST_PRUNE_FAILPOINT=<step>`` makes a prune announce the step on stderr
# and block there, so a test can kill -9 it at that very point (no timing involved).
FAILPOINT_ENV = "WDR_TEST_PRUNE_FAILPOINT"  # not WICKED_DR_*: that prefix is config
STEPS = ("snapshots-forgotten", "packs-written", "index-written", "index-removed",
         "packs-deleting", "packs-deleted")


def failpoint(step: str) -> None:
    """Block forever at ``step`` when the test hook names it (see FAILPOINT_ENV)."""
    if os.environ.get(FAILPOINT_ENV) == step:
        sys.stderr.write(f"wicked-dr: prune failpoint {step}\n")
        sys.stderr.flush()
        threading.Event().wait()


# --- guards ----------------------------------------------------------------------------------


def newest_verification(repo: Repository) -> tuple[VerificationRecord, datetime] | None:
    """The most recent verification record of all (by its ``time``), and that time."""
    found: list[tuple[datetime, VerificationRecord]] = []
    for snapshot_id in repo.list_ids("verification"):
        record = load_verification(repo, snapshot_id)
        when = _parse_time(record.time) if record is not None else None
        if record is not None and when is not None:
            found.append((when, record))
    if not found:
        return None
    when, record = max(found, key=lambda pair: (pair[0], pair[1].snapshot))
    return record, when


def _parse_time(text: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def guard_verification(repo: Repository, config: Config, now: datetime) -> None:
    """Where verification is scheduled, prune only while it works: judged by the newest
    verification (the newest snapshot is always unverified at prune time with the default
    schedules), which must exist, have passed and be younger than two verify periods."""
    expression = config.schedule.verify
    if not expression:
        return
    newest = newest_verification(repo)
    if newest is None:
        raise RefusedError("refusing to prune: schedule.verify is set but no snapshot has a "
                           "verification record; run 'wicked-dr verify' first")
    record, when = newest
    if not record.ok:
        first = next((p for probe in record.probes for p in probe.problems), "no probe ran")
        raise RefusedError(f"refusing to prune: the newest verification (snapshot "
                           f"{record.snapshot}, {record.time}) failed ({first}); fix the cause "
                           "and run 'wicked-dr verify' until it passes")
    limit = 2 * period_s(expression, config.schedule.timezone, now)
    age = (now - when).total_seconds()
    if age > limit:
        raise RefusedError(f"refusing to prune: the newest verification (snapshot "
                           f"{record.snapshot}, {record.time}) is {age / 3600:.1f} h old, "
                           f"older than two verify periods ({limit / 3600:.1f} h); is the "
                           "verify job running? run 'wicked-dr verify'")


def guard_prune_shrink(config: Config, snapshots: Sequence[Snapshot],
                       verified: str | None) -> None:
    """The shrink guard (``repository/shrink.py``) on the newest snapshot: against the newest
    verified snapshot (or a forced one newer than it: the loss it accepted), where verify is
    scheduled; against the largest recent snapshot, like backup, where it is not."""
    if not snapshots:
        return
    candidate = snapshots[-1]
    by_id = {s.id: s for s in snapshots}
    if config.schedule.verify and verified in by_id:
        assert verified is not None
        reference = by_id[verified]
        forced = [s for s in snapshots if s.id > verified and is_forced(s)]
        if forced:
            reference = forced[-1]
        references: dict[str, Snapshot | None] = {"files": reference, "bytes": reference}
    else:
        references = largest_references(snapshots[-RECENT:])
    guard_shrink(Counts.of(candidate), references, config.volume.max_shrink_percent,
                 refusing="refusing to prune (nothing was deleted): check the volume; if the "
                 "loss is intended, take a snapshot with 'wicked-dr backup --force', which "
                 "becomes the new reference")


# --- the plan --------------------------------------------------------------------------------


@dataclass
class PrunePlan:
    """Everything a prune removes and rewrites, decided before its first write."""

    decisions: list[Decision]
    kept: list[str]
    forget: list[str]
    packs_delete: list[str] = field(default_factory=list)   # indexed, no blob used
    packs_repack: list[str] = field(default_factory=list)   # partly used, below the share
    packs_leftover: list[str] = field(default_factory=list)  # stored, in no index
    trees_delete: list[str] = field(default_factory=list)
    needed: dict[str, list[str]] = field(default_factory=dict)  # repacked pack -> blobs kept
    bytes_delete: int = 0  # stored bytes of the packs (repacked ones included) and trees
    tree_sizes: dict[str, int] = field(default_factory=dict)  # stored bytes of each tree
    state: IndexState = field(default_factory=IndexState)


def decide(repo: Repository, config: Config, verified: str | None) -> list[Decision]:
    """The retention decisions over every snapshot id (times from the ids)."""
    candidates = []
    for snapshot_id in snapshot_ids(repo):
        try:
            candidates.append(Candidate(snapshot_id, snapshot_time(snapshot_id)))
        except IntegrityError as exc:
            raise RefusedError(f"refusing to prune: {exc.one_line()}; remove it with "
                               "'wicked-dr repair snapshots --forget'") from None
    return apply_policy(candidates, config.retention, config.schedule.timezone, verified)


def plan_prune(repo: Repository, config: Config, decisions: list[Decision],
               cancel: CancelToken = NOT_CANCELLED) -> PrunePlan:
    """What goes: forgotten snapshots, packs and trees only they used, packs to repack."""
    kept = sorted(d.id for d in decisions if d.keep)
    plan = PrunePlan(decisions, kept, sorted(d.id for d in decisions if not d.keep))
    live_trees, live_blobs = _references(repo, kept, cancel)
    plan.state = state = IndexState.load(repo)
    if state.unreadable:
        raise RefusedError(f"refusing to prune: index object {state.unreadable[0]} is "
                           "unreadable (its packs would look unused); run 'wicked-dr repair "
                           "index' first")
    stored = dict(repo.list_objects("data"))
    damaged = set(damaged_pack_ids(repo))
    share = config.retention.repack_below_percent / 100
    for pack in sorted(state.packs.values(), key=lambda p: p.pack_id):
        used = [(b, n) for b, n in zip(pack.blob_ids, pack.lengths, strict=True)
                if b in live_blobs]
        total = sum(pack.lengths)
        if not used:
            plan.packs_delete.append(pack.pack_id)
        elif (pack.pack_id in stored and pack.pack_id not in damaged
              and sum(n for _, n in used) < share * total):
            plan.packs_repack.append(pack.pack_id)
    plan.packs_leftover = sorted(set(stored) - set(state.packs))
    _needed_blobs(plan, live_blobs)
    going = [*plan.packs_delete, *plan.packs_repack, *plan.packs_leftover]
    trees = dict(repo.list_objects("tree"))
    plan.trees_delete = sorted(set(trees) - live_trees)
    plan.bytes_delete = (sum(stored.get(p, 0) for p in going)
                         + sum(trees[t] for t in plan.trees_delete))
    plan.tree_sizes = {t: trees[t] for t in plan.trees_delete}
    return plan


def _references(repo: Repository, kept: Sequence[str],
                cancel: CancelToken) -> tuple[set[str], set[str]]:
    """The trees and blobs the kept snapshots use; a kept snapshot that cannot be read
    whole is refused (what it needs would look unused)."""
    trees: set[str] = set()
    blobs: set[str] = set()
    for snapshot_id in kept:
        cancel.check()
        try:
            snapshot = load_snapshot(repo, snapshot_id)
        except (IntegrityError, NotFoundError) as exc:
            raise RefusedError(f"refusing to prune: kept snapshot {snapshot_id} is unreadable "
                               f"({exc.one_line()}); run 'wicked-dr repair snapshots'") from None
        for record in snapshot.sources.values():
            blobs.update(record.stream.blobs if record.stream else ())
        for tree_id in snapshot.trees:
            if tree_id in trees:
                continue  # unchanged chunks are shared between snapshots: read once
            try:
                plaintext = repo.load("tree", tree_id)
                entries = decode_tree(tree_id, plaintext, snapshot_id)
            except (IntegrityError, NotFoundError) as exc:
                raise RefusedError(f"refusing to prune: kept snapshot {snapshot_id}: tree "
                                   f"{tree_id} unreadable ({exc.one_line()}); run 'wicked-dr "
                                   "check'") from None
            trees.add(tree_id)
            for entry in entries:
                blobs.update(entry.blobs)
    return trees, blobs


def _needed_blobs(plan: PrunePlan, live: set[str]) -> None:
    """For each pack to repack, its used blobs that no pack staying holds already (a blob
    stored twice is copied once, or not at all)."""
    going = set(plan.packs_delete) | set(plan.packs_repack)
    held = {b for p in plan.state.packs.values() if p.pack_id not in going for b in p.blob_ids}
    for pack_id in plan.packs_repack:
        pack = plan.state.packs[pack_id]
        wanted = [b for b in dict.fromkeys(pack.blob_ids) if b in live and b not in held]
        held.update(wanted)
        plan.needed[pack_id] = wanted


# --- doing it --------------------------------------------------------------------------------


@dataclass
class PruneOutcome:
    """What a prune did."""

    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_deleted: int = 0
    bytes_written: int = 0
    index_written: int = 0
    index_removed: int = 0
    trees_deleted: int = 0


def execute(repo: Repository, plan: PrunePlan, *, pack_size: int,
            check_lock: Callable[[], None], cancel: CancelToken = NOT_CANCELLED,
            progress: Progress | None = None) -> PruneOutcome:
    """Carry ``plan`` out in the crash-safe order of the module docstring."""
    outcome = PruneOutcome()
    check_lock()
    for snapshot_id in plan.forget:
        repo.backend.delete(object_name("snapshot", snapshot_id))
        repo.backend.delete(object_name("verification", snapshot_id))
        log.info("snapshot forgotten", snapshot=snapshot_id)
    repo.backend.sync()
    failpoint("snapshots-forgotten")
    cancel.check()
    written, repacked = _repack(repo, plan, pack_size, cancel, progress, outcome)
    failpoint("packs-written")
    gone = set(plan.packs_delete) | set(repacked)
    _rewrite_index(repo, plan.state, gone, written, check_lock, outcome)
    stored = dict(repo.list_objects("data"))
    # A pack just written is never doomed, even when it was a leftover: a run killed after
    # writing it left the very same pack (same blobs, same id), which this run re-used.
    fresh = {record.pack_id for record in written}
    check_lock()  # from here on, a lost lock could mean a backup reusing what goes
    doomed = sorted((gone | set(plan.packs_leftover)) & set(stored) - fresh)
    damaged = set(damaged_pack_ids(repo))
    for number, pack_id in enumerate(doomed):
        repo.backend.delete(object_name("data", pack_id))
        if pack_id in damaged:
            forget_damage(repo, pack_id)
        outcome.packs_deleted += 1
        outcome.bytes_deleted += stored[pack_id]
        if number == 0:
            failpoint("packs-deleting")
    failpoint("packs-deleted")
    check_lock()
    for tree_id in plan.trees_delete:
        repo.backend.delete(object_name("tree", tree_id))
        outcome.trees_deleted += 1
        outcome.bytes_deleted += plan.tree_sizes.get(tree_id, 0)
    repo.backend.sync()
    return outcome


def _repack(repo: Repository, plan: PrunePlan, pack_size: int, cancel: CancelToken,
            progress: Progress | None, outcome: PruneOutcome) -> tuple[list[PackRecord],
                                                                      list[str]]:
    """New packs with the needed blobs of the packs to repack; the records written, and the
    packs whose blobs are now held elsewhere (a pack that cannot be read stays as it is)."""
    writer = _PackWriter(repo, pack_size)
    repacked = []
    for pack_id in plan.packs_repack:
        cancel.check()
        record = plan.state.packs[pack_id]
        try:
            blobs = load_pack(repo, pack_id, record.raw_size)
        except (IntegrityError, NotFoundError) as exc:
            log.error("pack unreadable; not repacked (check --read-data, repair packs)",
                      pack=pack_id, error=exc.one_line())
            continue
        if progress:
            progress("read", record.stored_size)
        absent = [b for b in plan.needed[pack_id] if b not in blobs]
        if absent:  # the index lists a blob the pack does not hold: leave it to check
            log.error("pack lacks a blob its index lists; not repacked", pack=pack_id,
                      blob=absent[0])
            continue
        for blob_id in plan.needed[pack_id]:
            writer.add(blob_id, blobs[blob_id])
        repacked.append(pack_id)
    writer.flush()
    repo.backend.sync()  # the new packs are durable before any index names them
    outcome.packs_repacked = len(repacked)
    outcome.packs_written = len(writer.records)
    outcome.bytes_written = sum(r.stored_size for r in writer.records)
    return writer.records, repacked


class _PackWriter:
    """Packs of about ``pack_size`` bytes (or PACK_BLOBS_MAX blobs), sealed and stored."""

    def __init__(self, repo: Repository, pack_size: int) -> None:
        self._repo = repo
        self._target = pack_size
        self._ids: list[str] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self.records: list[PackRecord] = []

    def add(self, blob_id: str, data: bytes) -> None:
        self._ids.append(blob_id)
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._target or len(self._ids) >= PACK_BLOBS_MAX:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        lengths = [len(c) for c in self._chunks]
        offsets = list(_accumulate(lengths))
        plaintext = encode_pack(self._ids, offsets, lengths, self._chunks)
        pack_id = content_id(plaintext)
        name = object_name("data", pack_id)
        envelope = self._repo.sealer.seal("data", name, plaintext)
        self._repo.backend.put(name, envelope)
        self.records.append(PackRecord(pack_id, len(plaintext), len(envelope),
                                       tuple(self._ids), tuple(offsets), tuple(lengths)))
        log.info("pack written by repack", pack=pack_id, blobs=len(self._ids))
        self._ids, self._chunks, self._size = [], [], 0


def _accumulate(lengths: Iterable[int]) -> Iterator[int]:
    """Offsets of blobs stored back to back."""
    offset = 0
    for length in lengths:
        yield offset
        offset += length


def _rewrite_index(repo: Repository, state: IndexState, gone: set[str],
                   written: list[PackRecord], check_lock: Callable[[], None],
                   outcome: PruneOutcome) -> None:
    """New index objects (the new packs, and every index object listing a pack that goes,
    without it) first, made durable; then the replaced ones are deleted."""
    affected = [i for i, records in state.by_index.items()
                if any(r.pack_id in gone for r in records)]
    staying = [r for i in affected for r in state.by_index[i] if r.pack_id not in gone]
    records = list({r.pack_id: r for r in [*staying, *written]}.values())
    check_lock()
    new_ids = [save_index(repo, chunk) for chunk in index_chunks(records)]
    outcome.index_written = len(new_ids)
    failpoint("index-written")
    check_lock()
    for index_id in affected:
        if index_id not in new_ids:
            repo.backend.delete(object_name("index", index_id))
            outcome.index_removed += 1
    repo.backend.sync()
    failpoint("index-removed")
