"""``wicked-dr backup``: one snapshot of the volume (and Kong's tokens when configured)."""

from __future__ import annotations

import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from wicked_dr import __version__
from wicked_dr.actions.common import (
    RunOptions,
    index_cache,
    open_or_create_repository,
    stat_cache_dir,
)
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids, snapshot_time
from wicked_dr.engine.snapshot_writer import SnapshotWriter, WriteStats
from wicked_dr.errors import RefusedError
from wicked_dr.log import get_logger
from wicked_dr.repository.locks import locked
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.statcache import StatCacheReader
from wicked_dr.sources.volume import VolumeSource

log = get_logger(__name__)
MAX_ERRORS_RECORDED = 1000
SNAPSHOT_VERSION = 2  # 2: the manifest comes in directory blocks (docs/format.md section 7)


@dataclass(frozen=True)
class BackupResult:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_backup(config: Config, *, force: bool = False,
               options: RunOptions | None = None) -> BackupResult:
    """Take a snapshot: guard, lock, read, stage, upload, manifest last."""
    options = options or RunOptions()
    started = time.monotonic()
    source = VolumeSource(config.volume)
    if force:
        source.check_exists()
    else:
        source.check_looks_like_wicked()
    repo = open_or_create_repository(config)
    with locked(repo, exclusive=False, operation="backup", wait_s=options.lock_wait_s,
                expiry_s=config.repository.lock_expiry_s, cancel=options.cancel) as lock:
        previous = _previous_snapshot(repo)
        writer = _writer(repo, config, previous, options.cancel)
        try:
            sources = _read_sources(config, source, writer, previous, force=force,
                                    lock_wait_s=options.lock_wait_s)
            writer.seal()
            lock.check()
            doc = _snapshot_doc(writer, previous, sources, started)
            writer.commit(doc, options.progress)
        except BaseException:
            writer.abort()
            raise
    result = _result(writer.snapshot_id, writer.stats, sources, started)
    log.info("backup done", **result.to_dict())
    return result


def _previous_snapshot(repo: Repository) -> dict[str, Any] | None:
    ids = snapshot_ids(repo)
    return load_snapshot(repo, ids[-1]) if ids else None


def _writer(repo: Repository, config: Config, previous: dict[str, Any] | None,
            cancel: CancelToken) -> SnapshotWriter:
    snapshot_id = new_snapshot_id(after=previous["id"] if previous else None)
    staging_root = config.state_dir / "staging"
    _remove_stale_staging(staging_root)
    stat_dir = stat_cache_dir(repo, config)
    prev_stat = StatCacheReader.latest(stat_dir, previous["id"] if previous else None)
    return SnapshotWriter(repo, index_cache(repo, config), staging_root / snapshot_id,
                          snapshot_id=snapshot_id,
                          pack_size=config.repository.pack_size_mib * 1024 * 1024,
                          stat_dir=stat_dir, previous=prev_stat, scan_start_ns=time.time_ns(),
                          scan_workers=config.volume.workers(),
                          known_trees=previous.get("trees", []) if previous else (),
                          cancel=cancel)


def _remove_stale_staging(staging_root: Path) -> None:
    """A crashed run leaves its staging directory; nothing in it was ever referenced."""
    if not staging_root.is_dir():
        return
    for leftover in staging_root.iterdir():
        if time.time() - leftover.stat().st_mtime > 3600:
            shutil.rmtree(leftover, ignore_errors=True)


def _read_sources(config: Config, source: VolumeSource, writer: SnapshotWriter,
                  previous: dict[str, Any] | None, *, force: bool,
                  lock_wait_s: float = 0.0) -> dict[str, Any]:
    sources: dict[str, Any] = {"volume": source.backup(writer, lock_wait_s=lock_wait_s,
                                                       cancel=writer.cancel)}
    if not force:
        _guard_shrink(config, writer.stats, previous)
    if config.kong_tokens.dsn is not None:
        from wicked_dr.sources.kong_tokens import KongTokensSource

        # writer.cancel is checked between the stream's blobs (issue #10: the COPY loop
        # itself is wired to it in sources/kong_tokens later).
        sources["kong_tokens"] = KongTokensSource(config.kong_tokens).backup(writer)
    return sources


def _guard_shrink(config: Config, stats: WriteStats, previous: dict[str, Any] | None) -> None:
    """A half-deleted volume must not become the newest snapshot and push good ones out."""
    if previous is None:
        return
    before = int(previous.get("summary", {}).get("files", 0))
    limit = config.volume.max_shrink_percent
    if before and stats.files < before * (1 - limit / 100):
        raise RefusedError(
            f"the volume shrank from {before} to {stats.files} files (more than "
            f"volume.max_shrink_percent={limit:g}%) since snapshot {previous['id']}; "
            "refusing to snapshot it (pass --force if the deletion is intended)")


def _snapshot_doc(writer: SnapshotWriter, previous: dict[str, Any] | None,
                  sources: dict[str, Any], started: float) -> dict[str, Any]:
    stats = writer.stats
    return {
        "version": SNAPSHOT_VERSION,
        "id": writer.snapshot_id,
        "time": _id_time(writer.snapshot_id),
        "end_time": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 3),
        "host": socket.gethostname(),
        "tool_version": __version__,
        "parent": previous["id"] if previous else None,
        "sources": sources,
        "summary": {"files": stats.files, "dirs": stats.dirs, "symlinks": stats.symlinks,
                    "bytes": stats.bytes_total, "bytes_read": stats.bytes_read,
                    "bytes_new": stats.bytes_new, "files_unchanged": stats.files_unchanged,
                    "errors": len(stats.errors)},
        "errors": stats.errors[:MAX_ERRORS_RECORDED],
    }


def _result(snapshot_id: str, stats: WriteStats, sources: dict[str, Any],
            started: float) -> BackupResult:
    return BackupResult(snapshot_id, stats.files, stats.bytes_read, stats.bytes_new,
                        round(time.monotonic() - started, 3),
                        float(sources["volume"]["lock_window_s"]), stats.files_unchanged,
                        stats.objects_written, len(stats.errors))


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
