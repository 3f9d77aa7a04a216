"""``wicked-dr restore``: into a directory (--target), live (--live), or tokens only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wicked_dr.actions.common import Result, RunOptions, open_repository, snapshot_reader
from wicked_dr.config import Config
from wicked_dr.engine.catalog import resolve
from wicked_dr.engine.restore import check_target
from wicked_dr.errors import ConfigError, NotFoundError, OperationError, UsageError
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot, SourceRecord
from wicked_dr.sources import source_named
from wicked_dr.sources.base import AfterRebuildSource, DirRestore, Source

# The source --tokens-only restores (named, never imported: actions know no concrete source).
TOKENS_SOURCE = "kong_tokens"
KONG_RESTART_HINT = ("restart every Kong node, one at a time: Kong caches 'not found' lookups, "
                     "so tokens written by SQL stay invisible until then")


@dataclass(frozen=True)
class TargetRestoreResult(Result):
    """What ``restore --target`` did (or, with --dry-run, would do); the file tree's counts
    at the top, every restored source's own under ``sources``."""

    snapshot: str
    target: str
    dry_run: bool
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    packs_fetched: int = 0
    duration_s: float = 0.0
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "target"


@dataclass(frozen=True)
class TokensRestoreResult(Result):
    """What ``restore --tokens-only`` did."""

    snapshot: str
    dry_run: bool
    tokens: dict[str, Any]
    ok: bool
    kong_restarts: list[dict[str, Any]] | None = None
    next_step: str | None = None
    mode: str = "tokens-only"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if v is not None}


def run_restore_to_dir(config: Config, snapshot_ref: str, target: Path, *, force: bool,
                       dry_run: bool, before: str | None = None,
                       sources: list[str] | None = None,
                       options: RunOptions | None = None) -> TargetRestoreResult:
    """Restore the snapshot's file tree (or the ``sources`` named) under ``target``, every
    byte verified; nothing live is touched."""
    options = options or RunOptions()
    started = time.monotonic()
    repo = open_repository(config)
    snapshot = resolve(repo, snapshot_ref, before)
    selected = _selected(config, snapshot, sources)
    check_target(target, force=force)
    if dry_run:
        summary = snapshot.summary
        return TargetRestoreResult(snapshot.id, str(target), True, files=summary.files,
                                   dirs=summary.dirs, symlinks=summary.symlinks,
                                   bytes=summary.bytes,
                                   sources={s.name: _planned(snapshot, s.name) for s in selected})
    reader = snapshot_reader(repo, config, snapshot, options)
    done = [s.restore_to_dir(reader, snapshot.source(s.name), target) for s in selected]
    return _target_result(snapshot, target, done, reader.blobs.packs_fetched, started)


def _selected(config: Config, snapshot: Snapshot, names: list[str] | None) -> list[Source]:
    """The sources to restore: those named, or the snapshot's file tree."""
    if names:
        chosen = [source_named(name, config) for name in names]  # UsageError: unknown name
        for name in names:
            snapshot.source(name)  # NotFoundError when the snapshot lacks it
        return chosen
    trees = [name for name, record in snapshot.sources.items() if record.trees]
    if not trees:
        raise UsageError(f"snapshot {snapshot.id} holds no file tree; name what to restore "
                         f"with --source ({', '.join(snapshot.sources)})")
    return [source_named(name, config) for name in trees]


def _planned(snapshot: Snapshot, name: str) -> dict[str, Any]:
    """What a dry run would write for source ``name``."""
    record = snapshot.source(name)
    if record.trees:
        summary = snapshot.summary
        return {"files": summary.files, "dirs": summary.dirs, "symlinks": summary.symlinks,
                "bytes": summary.bytes}
    return {"bytes": record.stream.size if record.stream else 0}


def _target_result(snapshot: Snapshot, target: Path, done: list[DirRestore],
                   packs_fetched: int, started: float) -> TargetRestoreResult:
    tree = next((d.written for d in done if "files" in d.written), {})
    return TargetRestoreResult(
        snapshot.id, str(target), False, files=tree.get("files", 0), dirs=tree.get("dirs", 0),
        symlinks=tree.get("symlinks", 0), bytes=tree.get("bytes", 0),
        packs_fetched=packs_fetched, duration_s=round(time.monotonic() - started, 3),
        sources={d.source: {"path": d.path, **d.written} for d in done})


def run_restore_tokens(config: Config, snapshot_ref: str, *, dry_run: bool,
                       before: str | None = None) -> TokensRestoreResult:
    """Put the snapshot's Kong OAuth2 tokens back, re-attached to rebuilt credentials, then
    restart every Kong node so that Kong sees them."""
    source = _tokens_source(config)
    repo = open_repository(config)
    snapshot = resolve(repo, snapshot_ref, before)
    try:
        record = snapshot.source(source.name)
    except NotFoundError as exc:
        raise NotFoundError(f"{exc.one_line()}; was kong_tokens.dsn set when it was "
                            "taken?") from None
    report = source.restore_live(snapshot_reader(repo, config, snapshot), record,
                                 dry_run=dry_run)
    result = TokensRestoreResult(snapshot.id, dry_run, report.to_dict(), report.ok)
    if dry_run or not report.ok or not config.containers.kong:
        return replace(result, next_step=KONG_RESTART_HINT)
    return replace(result, kong_restarts=_restart_kong(config, report.to_dict()))


def run_restore_tokens_into(config: Config, repo: Repository, snapshot: Snapshot,
                            source: AfterRebuildSource, record: SourceRecord,
                            options: RunOptions) -> dict[str, Any]:
    """The live restore's token step: the tokens re-attached, then every Kong node
    restarted (or the hint to do it); OperationError when not every token is in place."""
    report = source.restore_live(snapshot_reader(repo, config, snapshot, options), record,
                                 dry_run=False)
    done = report.to_dict()
    if not report.ok:
        raise OperationError(f"not every token could be put back: {done}")
    if not config.containers.kong:
        return {**done, "next_step": KONG_RESTART_HINT}
    return {**done, "kong_restarts": _restart_kong(config, done)}


def _tokens_source(config: Config) -> AfterRebuildSource:
    """The token source, refused before any I/O when Kong's database is not configured."""
    source = source_named(TOKENS_SOURCE, config)
    if not source.configured or not isinstance(source, AfterRebuildSource):
        raise ConfigError(["kong_tokens.dsn is not set: --tokens-only writes into Kong's "
                           "database; set kong_tokens.dsn (or WICKED_DR_KONG_TOKENS__DSN)"])
    return source


def _restart_kong(config: Config, tokens: dict[str, Any]) -> list[dict[str, Any]]:
    from wicked_dr.errors import DockerError
    from wicked_dr.portal.containers import restart_kong_nodes

    try:
        return restart_kong_nodes(config.containers)
    except (DockerError, NotFoundError) as exc:
        # The tokens are committed: say so, so that nobody restores them again in a panic.
        raise type(exc)(f"tokens restored ({tokens.get('restored', 0)} new), but restarting "
                        f"Kong failed: {exc.one_line()}") from exc
