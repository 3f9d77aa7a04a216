"""``wicked-dr repair index|snapshots|packs``: the way back from a damaged repository.

Each repair holds the exclusive repository lock (no backup, restore or prune runs meanwhile),
has ``--dry-run``, and is crash-safe (``engine/repair.py``). The usual order after
``check --read-data`` reported damage: ``repair packs`` (drop the damaged packs; the next
backup stores again what the volume still holds), then ``repair snapshots --forget`` (remove
the snapshots that stay incomplete). ``repair index`` rebuilds the index when index objects
are damaged or lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from wicked_dr.actions.common import Result, RunOptions, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.repair import (
    choose_packs,
    confirmed_damaged,
    damaged_snapshots,
    forget_snapshots,
    repair_index,
    repair_packs,
)
from wicked_dr.repository.locks import locked
from wicked_dr.repository.repo import Repository


@dataclass(frozen=True)
class IndexRepairResult(Result):
    """What ``repair index --json`` prints."""

    dry_run: bool
    changed: bool
    packs_indexed: int
    packs_read: int
    packs_added: list[str]
    packs_dropped: list[str]
    index_objects_unreadable: list[str]
    index_objects_written: int
    index_objects_removed: int
    action: str = "index"


@dataclass(frozen=True)
class SnapshotsRepairResult(Result):
    """What ``repair snapshots --json`` prints: the snapshots whose data is gone, and
    whether they were forgotten."""

    dry_run: bool
    forgotten: bool
    damaged: list[dict[str, Any]]
    damaged_packs: list[str]
    action: str = "snapshots"


@dataclass(frozen=True)
class PacksRepairResult(Result):
    """What ``repair packs --json`` prints."""

    dry_run: bool
    packs: list[str]
    records_cleared: list[str]
    index_objects_rewritten: int
    snapshots_losing_data: list[dict[str, Any]]
    next_step: str
    action: str = "packs"


@contextmanager
def _exclusive(config: Config, operation: str, options: RunOptions) -> Iterator[Repository]:
    repo = open_repository(config)
    with locked(repo, exclusive=True, operation=operation, wait_s=options.lock_wait_s,
                expiry_s=config.repository.lock_expiry_s, cancel=options.cancel):
        yield repo


def run_repair_index(config: Config, *, dry_run: bool, read_all: bool = False,
                     options: RunOptions | None = None) -> IndexRepairResult:
    """Rebuild the index from the stored packs (see ``engine.repair.repair_index``)."""
    options = options or RunOptions()
    with _exclusive(config, "repair index", options) as repo:
        report = repair_index(repo, dry_run=dry_run, read_all=read_all,
                              progress=options.progress, cancel=options.cancel)
    return IndexRepairResult(dry_run, report.changed, report.packs_indexed, report.packs_read,
                             report.packs_added, report.packs_dropped,
                             report.index_objects_unreadable, report.index_objects_written,
                             report.index_objects_removed)


def run_repair_snapshots(config: Config, *, forget: bool, dry_run: bool,
                         options: RunOptions | None = None) -> SnapshotsRepairResult:
    """List the snapshots whose data is gone (a pack with a damage record counts only when
    it indeed reads damaged); with ``forget`` (and not ``dry_run``) remove them. Intact
    snapshots are never touched."""
    options = options or RunOptions()
    with _exclusive(config, "repair snapshots", options) as repo:
        unusable = confirmed_damaged(repo)
        damaged = damaged_snapshots(repo, unusable_packs=unusable, cancel=options.cancel)
        removing = forget and not dry_run
        if removing:
            forget_snapshots(repo, damaged)
    return SnapshotsRepairResult(dry_run, removing, [d.to_json() for d in damaged], unusable)


def run_repair_packs(config: Config, pack_ids: list[str], *, dry_run: bool,
                     options: RunOptions | None = None) -> PacksRepairResult:
    """Drop the damaged packs named (default: every pack with a damage record that reads
    damaged) from the index and the repository, and list what each snapshot loses."""
    options = options or RunOptions()
    with _exclusive(config, "repair packs", options) as repo:
        choice = choose_packs(repo, pack_ids)
        report = repair_packs(repo, choice, dry_run=dry_run, cancel=options.cancel)
    return PacksRepairResult(dry_run, report.packs, report.records_cleared,
                             report.index_objects_rewritten,
                             [d.to_json() for d in report.snapshots_losing_data],
                             _next_step(report.snapshots_losing_data))


def _next_step(losing: list[Any]) -> str:
    if not losing:
        return "nothing to do"
    return ("run 'wicked-dr backup' to store again what the volume still holds, then "
            "'wicked-dr repair snapshots --forget' to remove the snapshots that stay incomplete")

