"""``wicked-dr prune``: apply the retention policy, then remove the data nobody uses.

Under the exclusive repository lock: guards first (verification where it is scheduled, the
shrink guard, a policy that keeps something), then the plan (``engine/prune.py``), which a
dry run only reports, then the crash-safe deletion. The daemon calls ``run_prune``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from wicked_dr.actions.common import Result, RunOptions, index_cache, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.catalog import load_snapshot, newest_verified_id, snapshot_ids
from wicked_dr.engine.prune import (
    RECENT,
    PruneOutcome,
    PrunePlan,
    decide,
    execute,
    guard_prune_shrink,
    guard_verification,
    plan_prune,
)
from wicked_dr.engine.retention import check_policy
from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.repository.locks import locked
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot

log = get_logger(__name__)


@dataclass(frozen=True)
class PruneResult(Result):
    """What ``prune --json`` prints (with ``dry_run``: what a prune would do)."""

    kept: tuple[str, ...]
    removed: tuple[str, ...]
    reasons: dict[str, list[str]]  # kept snapshot -> the rules that keep it
    packs_deleted: int
    packs_repacked: int
    bytes_deleted: int
    duration_s: float
    dry_run: bool
    packs_written: int = 0
    bytes_written: int = 0
    trees_deleted: int = 0
    index_objects_written: int = 0
    index_objects_removed: int = 0
    newest_verified: str | None = None


def run_prune(config: Config, *, dry_run: bool = False, options: RunOptions | None = None,
              now: datetime | None = None) -> PruneResult:
    """Forget what the retention policy lets go and delete the packs and trees only those
    snapshots used (repacking packs whose used share fell below
    ``retention.repack_below_percent``); RefusedError (nothing deleted) when a guard
    fires. ``now`` is when verification staleness is judged (default: the clock)."""
    options = options or RunOptions()
    now = now or datetime.now(UTC)
    started = time.monotonic()
    check_policy(config.retention)
    repo = open_repository(config)
    with locked(repo, exclusive=True, operation="prune", wait_s=options.lock_wait_s,
                expiry_s=config.repository.lock_expiry_s, cancel=options.cancel) as lock:
        ids = snapshot_ids(repo)
        verified = newest_verified_id(repo, ids)
        guard_verification(repo, config, now)
        guard_prune_shrink(config, _guarded(repo, ids, verified), verified)
        options.cancel.check()
        plan = plan_prune(repo, config, decide(repo, config, verified), options.cancel)
        if dry_run:
            outcome = _would_do(plan)
        else:
            outcome = _carry_out(repo, config, plan, lock.check, options)
    result = _result(plan, outcome, verified, dry_run, started)
    log.info("prune done" if not dry_run else "prune planned (dry run)",
             kept=len(result.kept), removed=len(result.removed),
             packs_deleted=result.packs_deleted, packs_repacked=result.packs_repacked,
             bytes_deleted=result.bytes_deleted)
    return result


def _guarded(repo: Repository, ids: list[str], verified: str | None) -> list[Snapshot]:
    """The snapshots the shrink guard looks at, oldest first: the recent ones, and every one
    from the newest verified on (its reference, and forced snapshots newer than it)."""
    wanted = set(ids[-RECENT:])
    if verified is not None:
        wanted.update(i for i in ids if i >= verified)
    loaded = []
    for snapshot_id in sorted(wanted):
        try:
            loaded.append(load_snapshot(repo, snapshot_id))
        except (IntegrityError, NotFoundError) as exc:
            log.error("unreadable snapshot left out of the shrink guard",
                      snapshot=snapshot_id, error=exc.one_line())
    return loaded


def _carry_out(repo: Repository, config: Config, plan: PrunePlan, check_lock: Callable[[], None],
               options: RunOptions) -> PruneOutcome:
    """Execute the plan; then keep this host's stat cache usable (see ``_keep_epoch``)."""
    cache = index_cache(repo, config)
    epoch, damaged = cache.epoch, set(cache.damaged_packs())
    cache.close()
    outcome = execute(repo, plan, pack_size=config.repository.pack_size_mib * 1024 * 1024,
                      check_lock=check_lock, cancel=options.cancel, progress=options.progress)
    _keep_epoch(repo, config, epoch, damaged)
    return outcome


def _keep_epoch(repo: Repository, config: Config, epoch: str, damaged: set[str]) -> None:
    """Removing index objects resets the local index cache to a new epoch, which would make
    the next backup distrust its stat cache and read the whole volume. That stat cache
    vouches only for the newest snapshot's blobs, which a prune keeps indexed (the newest
    snapshot is always kept, repacked blobs are indexed before their old packs go), so the
    old epoch is carried over; unless a pack was found damaged meanwhile (then the new epoch
    stands, and the backup stores that data again)."""
    cache = index_cache(repo, config)
    try:
        if cache.epoch != epoch and set(cache.damaged_packs()) <= damaged:
            cache.carry_epoch(epoch)
    finally:
        cache.close()


def _would_do(plan: PrunePlan) -> PruneOutcome:
    """A dry run's figures: what would be deleted (written bytes are not estimated)."""
    return PruneOutcome(
        packs_deleted=len(plan.packs_delete) + len(plan.packs_repack)
        + len(plan.packs_leftover),
        packs_repacked=len(plan.packs_repack), bytes_deleted=plan.bytes_delete,
        trees_deleted=len(plan.trees_delete))


def _result(plan: PrunePlan, outcome: PruneOutcome, verified: str | None, dry_run: bool,
            started: float) -> PruneResult:
    reasons = {d.id: list(d.reasons) for d in plan.decisions if d.keep}
    return PruneResult(
        kept=tuple(plan.kept), removed=tuple(plan.forget), reasons=reasons,
        packs_deleted=outcome.packs_deleted, packs_repacked=outcome.packs_repacked,
        bytes_deleted=outcome.bytes_deleted, duration_s=round(time.monotonic() - started, 3),
        dry_run=dry_run, packs_written=outcome.packs_written,
        bytes_written=outcome.bytes_written, trees_deleted=outcome.trees_deleted,
        index_objects_written=outcome.index_written,
        index_objects_removed=outcome.index_removed, newest_verified=verified)
