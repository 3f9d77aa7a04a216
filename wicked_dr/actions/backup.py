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
from wicked_dr.engine.snapshot_writer import SnapshotWriter, WriteStats
from wicked_dr.errors import IntegrityError
from wicked_dr.log import get_logger
from wicked_dr.repository.locks import locked
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
        recent = _recent_snapshots(repo)
        previous = recent[-1] if recent else None
        writer = _writer(repo, config, previous, options.cancel)
        try:
            context = BackupContext(force, options.lock_wait_s, previous, recent,
                                    options.progress, options.cancel)
            backups = {source.name: source.backup(writer, context) for source in sources}
            writer.seal()
            lock.check()
            snapshot = _snapshot(writer, previous, _records(sources, backups, writer), started)
            writer.commit(snapshot, options.progress)
        except BaseException:
            writer.abort()
            raise
    result = _result(snapshot, writer.stats, backups, started)
    log.info("backup done", **result.to_json())
    return result


def _recent_snapshots(repo: Repository) -> tuple[Snapshot, ...]:
    """The newest RECENT snapshots, oldest first. The newest must be readable (it is the
    parent); an older damaged one is logged and left out of the guards' reference."""
    ids = snapshot_ids(repo)[-RECENT:]
    recent = [_readable(repo, snapshot_id) for snapshot_id in ids[:-1]]
    newest = [load_snapshot(repo, ids[-1])] if ids else []
    return tuple(s for s in [*recent, *newest] if s is not None)


def _readable(repo: Repository, snapshot_id: str) -> Snapshot | None:
    try:
        return load_snapshot(repo, snapshot_id)
    except IntegrityError as exc:
        log.error("unreadable snapshot left out of the shrink guard's reference",
                  snapshot=snapshot_id, error=exc.one_line())
        return None


def _writer(repo: Repository, config: Config, previous: Snapshot | None,
            cancel: CancelToken) -> SnapshotWriter:
    snapshot_id = new_snapshot_id(after=previous.id if previous else None)
    local = state_dir(config)
    local.remove_stale_staging()
    stat_dir = local.stat_cache(repo.repo_id)
    prev_stat = StatCacheReader.latest(stat_dir, previous.id if previous else None)
    return SnapshotWriter(repo, index_cache(repo, config), local.staging(snapshot_id),
                          snapshot_id=snapshot_id,
                          pack_size=config.repository.pack_size_mib * 1024 * 1024,
                          stat_dir=stat_dir, previous=prev_stat, scan_start_ns=time.time_ns(),
                          scan_workers=config.volume.workers(),
                          known_trees=previous.trees if previous else (), cancel=cancel)


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
            started: float) -> BackupResult:
    return BackupResult(snapshot.id, stats.files, stats.bytes_read, stats.bytes_new,
                        round(time.monotonic() - started, 3),
                        sum(b.lock_window_s for b in backups.values()), stats.files_unchanged,
                        stats.objects_written, len(stats.errors), tuple(backups))


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
