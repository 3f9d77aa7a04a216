"""``wicked-dr backup``: one snapshot of every configured source (the registry's order)."""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from wicked_dr import __version__
from wicked_dr.actions.common import (
    Result,
    RunOptions,
    index_cache,
    open_or_create_repository,
    state_dir,
)
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids, snapshot_time
from wicked_dr.engine.damage import heal
from wicked_dr.engine.snapshot_writer import SnapshotWriter, WriteStats
from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.locks import creator_gone_unless_locking, locked
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import FileError, Snapshot, SourceRecord, Summary
from wicked_dr.repository.statcache import StatCacheReader
from wicked_dr.sources import configured_sources
from wicked_dr.sources.base import BackupContext, Source, SourceBackup

log = get_logger(__name__)
MAX_ERRORS_RECORDED = 1000
RECENT = 10  # snapshots the shrink guard compares with (since the newest forced one)


@dataclass(frozen=True)
class BackupResult(Result):
    """What ``backup --json`` prints."""

    snapshot: str
    files: int
    bytes_read: int
    bytes_new: int
    duration_s: float
    lock_window_s: float
    files_unchanged: int
    objects_written: int
    errors: int
    sources: tuple[str, ...]
    # Damage met on the way (an unreadable parent, a missing tree, a damaged index object):
    # the backup went on around it and its snapshot is sound, but a person must look.
    damage: tuple[str, ...] = ()
    # How long the backup waited for the repository lock (a live restore or prune holding
    # the exclusive one); wicked's global.lock window is lock_window_s.
    lock_wait_s: float = 0.0
    # Files read again under wicked's global.lock (what changed while the volume was read).
    files_reread_under_lock: int = 0


def run_backup(config: Config, *, force: bool = False,
               options: RunOptions | None = None) -> BackupResult:
    """Take a snapshot: guard, lock, read every source, stage, upload, snapshot object last."""
    options = options or RunOptions()
    started = time.monotonic()
    sources = configured_sources(config)
    for source in sources:
        source.check_ready(force=force)
    repo = open_or_create_repository(config)
    with locked(repo, exclusive=False, operation="backup", wait_s=options.lock_wait_s,
                expiry_s=config.repository.lock_expiry_s, cancel=options.cancel) as lock:
        parent = _parent(repo)
        index = index_cache(repo, config)
        damage = (*parent.damage, *index.damage)
        previous = parent.snapshot
        writer = _writer(repo, config, parent, index, options.cancel)
        try:
            context = BackupContext(force, options.lock_wait_s, previous, parent.recent,
                                    options.progress, options.cancel,
                                    creator_gone_unless_locking(repo))
            backups = {source.name: source.backup(writer, context) for source in sources}
            writer.seal()
            lock.check()
            snapshot = _snapshot(writer, previous, _records(sources, backups, writer), started)
            writer.commit(snapshot, options.progress)
        except BaseException:
            writer.abort()
            raise
        heal(repo, index, writer.pack_ids)
    damage = (*damage, *writer.damage)
    result = _result(snapshot, writer.stats, backups, started, damage, lock.waited_s)
    for problem in damage:
        log.error("repository damage; this backup went on around it", damage=problem)
    log.info("backup done", **result.to_json())
    return result


@dataclass(frozen=True)
class _Parent:
    """What a new snapshot builds on: the newest snapshot when it is sound (its stat cache
    and trees are reused), the recent readable ones (the shrink guard's reference), the id
    the new one must sort after, and the damage found on the way."""

    snapshot: Snapshot | None
    recent: tuple[Snapshot, ...]
    newest_id: str | None
    damage: tuple[str, ...]


def _parent(repo: Repository) -> _Parent:
    """A damaged newest snapshot (unreadable, or a tree object gone) is no parent: the
    backup then reads the volume in full, so the damage never spreads into the new one."""
    ids = snapshot_ids(repo)[-RECENT:]
    loaded = {snapshot_id: _readable(repo, snapshot_id) for snapshot_id in ids}
    recent = tuple(s for s in loaded.values() if not isinstance(s, str))
    if not ids:
        return _Parent(None, recent, None, ())
    newest = loaded[ids[-1]]
    if isinstance(newest, str):
        return _Parent(None, recent, ids[-1], (f"{newest}; backed up from a clean parent",))
    missing = [tree_id for tree_id in newest.trees if not repo.has("tree", tree_id)]
    if missing:
        problem = (f"snapshot {newest.id}: {len(missing)} tree object(s) missing, e.g. "
                   f"{missing[0]}; backed up from a clean parent")
        return _Parent(None, recent, newest.id, (problem,))
    return _Parent(newest, recent, newest.id, ())


def _readable(repo: Repository, snapshot_id: str) -> Snapshot | str:
    """The snapshot, or the one-line reason it cannot be read."""
    try:
        return load_snapshot(repo, snapshot_id)
    except (IntegrityError, NotFoundError) as exc:
        return exc.one_line()


def _writer(repo: Repository, config: Config, parent: _Parent, index: IndexCache,
            cancel: CancelToken) -> SnapshotWriter:
    previous = parent.snapshot
    snapshot_id = new_snapshot_id(after=parent.newest_id)
    local = state_dir(config)
    local.remove_stale_staging()
    stat_dir = local.stat_cache(repo.repo_id)
    prev_stat = _vouching(StatCacheReader.latest(stat_dir, previous.id if previous else None),
                          index)
    return SnapshotWriter(repo, index, local.staging(snapshot_id),
                          snapshot_id=snapshot_id,
                          pack_size=config.repository.pack_size_mib * 1024 * 1024,
                          stat_dir=stat_dir, previous=prev_stat, scan_start_ns=time.time_ns(),
                          scan_workers=config.volume.workers(), cancel=cancel)


def _vouching(stat: StatCacheReader | None, index: IndexCache) -> StatCacheReader | None:
    """The parent's stat cache, if it may still vouch for its files: not when blobs left the
    index since it was written (index objects removed, a pack found damaged), since an
    unchanged file would then reference a blob the repository's index no longer lists."""
    if stat is None or stat.index_epoch == index.epoch:
        return stat
    log.warning("the index lost blobs since the last backup (index objects removed or a "
                "pack found damaged): reading the volume in full")
    stat.close()
    return None


def _records(sources: list[Source], backups: dict[str, SourceBackup],
             writer: SnapshotWriter) -> dict[str, SourceRecord]:
    """Each source's record: its metadata, and its data (the file tree, or its stream)."""
    return {source.name: SourceRecord(
        source.name, MappingProxyType(backups[source.name].metadata),
        trees=writer.trees if source.kind == "tree" else (),
        stream=backups[source.name].stream) for source in sources}


def _snapshot(writer: SnapshotWriter, previous: Snapshot | None,
              records: dict[str, SourceRecord], started: float) -> Snapshot:
    stats = writer.stats
    return Snapshot(
        id=writer.snapshot_id, time=_id_time(writer.snapshot_id),
        end_time=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - started, 3), host=socket.gethostname(),
        tool_version=__version__, parent=previous.id if previous else None,
        sources=MappingProxyType(records),
        summary=Summary(files=stats.files, dirs=stats.dirs, symlinks=stats.symlinks,
                        bytes=stats.bytes_total, bytes_read=stats.bytes_read,
                        bytes_new=stats.bytes_new, files_unchanged=stats.files_unchanged,
                        errors=len(stats.errors)),
        errors=tuple(FileError(e["path"], e["error"])
                     for e in stats.errors[:MAX_ERRORS_RECORDED]))


def _result(snapshot: Snapshot, stats: WriteStats, backups: dict[str, SourceBackup],
            started: float, damage: tuple[str, ...], lock_wait_s: float) -> BackupResult:
    return BackupResult(snapshot.id, stats.files, stats.bytes_read, stats.bytes_new,
                        round(time.monotonic() - started, 3),
                        sum(b.lock_window_s for b in backups.values()), stats.files_unchanged,
                        stats.objects_written, len(stats.errors), tuple(backups), damage,
                        lock_wait_s, sum(b.reread_under_lock for b in backups.values()))


def new_snapshot_id(after: str | None = None) -> str:
    """Ids sort by time: ``20261126T051500.123456Z-3fa2c1d0``.

    Microseconds, so two snapshots in one second still sort in the order they were taken;
    and an id always sorts after ``after`` (the newest snapshot), even when the wall clock
    stands still or stepped back, so 'latest' is always the snapshot taken last.
    """
    stamp = utc_now()
    if after is not None:
        stamp = max(stamp, snapshot_time(after) + timedelta(microseconds=1))
    return stamp.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(4)


def utc_now() -> datetime:
    """The wall clock the snapshot ids read (one place, so tests can pin it)."""
    return datetime.now(UTC)


def _id_time(snapshot_id: str) -> str:
    return snapshot_time(snapshot_id).isoformat(timespec="microseconds")
