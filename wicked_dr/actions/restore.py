"""``wicked-dr restore``: into a directory (--target), live (--live), or tokens only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from wicked_dr.actions.common import RunOptions, index_cache, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.catalog import resolve
from wicked_dr.engine.restore import check_target, restore_tree
from wicked_dr.errors import NotFoundError, NotImplementedYetError
from wicked_dr.repository.repo import Repository


def run_restore_to_dir(config: Config, snapshot_ref: str, target: Path, *, force: bool,
                       dry_run: bool, before: str | None = None,
                       options: RunOptions | None = None) -> dict[str, Any]:
    """Restore the snapshot's files under ``target``, verified against their hashes."""
    options = options or RunOptions()
    started = time.monotonic()
    repo = open_repository(config)
    snapshot = resolve(repo, snapshot_ref, before)
    check_target(target, force=force)
    summary = snapshot.get("summary", {})
    report: dict[str, Any] = {"snapshot": snapshot["id"], "target": str(target),
                              "mode": "target", "dry_run": dry_run}
    if dry_run:
        report.update(files=summary.get("files", 0), bytes=summary.get("bytes", 0))
        return report
    reader = BlobReader(repo, index_cache(repo, config), snapshot_id=snapshot["id"])
    stats = restore_tree(repo, reader, snapshot, target, progress=options.progress,
                         cancel=options.cancel)
    report.update(files=stats.files, dirs=stats.dirs, symlinks=stats.symlinks,
                  bytes=stats.bytes, packs_fetched=stats.packs_fetched,
                  duration_s=round(time.monotonic() - started, 3))
    return report


def run_restore_tokens(config: Config, snapshot_ref: str, *, dry_run: bool,
                       before: str | None = None) -> dict[str, Any]:
    """Put the snapshot's Kong OAuth2 tokens back, re-attached to rebuilt credentials."""
    from wicked_dr.sources.kong_tokens import restore_tokens

    repo = open_repository(config)
    snapshot = resolve(repo, snapshot_ref, before)
    stream, metadata = _token_stream(repo, config, snapshot)
    if config.kong_tokens.dsn is None:
        raise NotFoundError("kong_tokens.dsn is not configured: set it to Kong's database")
    from wicked_dr.errors import DockerError
    from wicked_dr.portal.containers import restart_kong_nodes

    report = restore_tokens(config.kong_tokens, stream, metadata=metadata, dry_run=dry_run)
    result: dict[str, Any] = {"snapshot": snapshot["id"], "mode": "tokens-only",
                              "dry_run": dry_run, "tokens": report.to_dict(), "ok": report.ok}
    if dry_run or not report.ok or not config.containers.kong:
        result["next_step"] = ("restart every Kong node, one at a time: Kong caches 'not found' "
                               "lookups, so tokens written by SQL stay invisible until then")
        return result
    try:
        result["kong_restarts"] = restart_kong_nodes(config.containers)
    except (DockerError, NotFoundError) as exc:
        # The tokens are committed: say so, so that nobody restores them again in a panic.
        raise type(exc)(f"tokens restored ({report.restored} new), but restarting Kong "
                        f"failed: {exc.one_line()}") from exc
    return result


def _token_stream(repo: Repository, config: Config,
                  snapshot: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    stream = (snapshot.get("streams") or {}).get("kong_tokens")
    metadata = (snapshot.get("sources") or {}).get("kong_tokens")
    if not stream or metadata is None:
        raise NotFoundError(f"snapshot {snapshot['id']} holds no Kong tokens (was "
                            "kong_tokens.dsn configured when it was taken?)")
    reader = BlobReader(repo, index_cache(repo, config), snapshot_id=snapshot["id"])
    return (reader.get(blob_id) for blob_id in stream["blobs"]), metadata


def run_restore_live(config: Config, snapshot_ref: str) -> dict[str, Any]:
    """The incident restore of the live volume: part of a later milestone."""
    raise NotImplementedYetError("restore --live is not implemented yet; restore into a "
                                 "directory with --target and follow runbooks/restore.md")
