"""What every action needs: the repository opened from the config, and the index cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wicked_dr.backends import open_backend
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.errors import NotFoundError, RefusedError
from wicked_dr.repository.crypto import Key, load_key
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.repo import Repository

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class RunOptions:
    """Options of the command line that every action may honour. ``cancel`` stops the
    action at its next safe point (a signal at the CLI, the daemon stopping a job); by
    default a token of its own that nobody cancels."""

    lock_wait_s: float = 0.0
    progress: Progress | None = None
    cancel: CancelToken = field(default_factory=CancelToken)


def configured_key(config: Config) -> Key | None:
    """The repository key, when one is configured."""
    path = config.repository.encryption_key_file
    return load_key(path) if path else None


def open_repository(config: Config) -> Repository:
    """The configured repository, which must exist (``wicked-dr init`` creates it)."""
    return Repository.open(open_backend(config.repository), configured_key(config))


def init_repository(config: Config, *, create_bucket: bool = False) -> tuple[Repository, bool]:
    """The configured repository, created where its location holds no object at all;
    ``(repository, created)``. A local directory is made on demand, a bucket only when
    ``create_bucket``."""
    create_location = create_bucket or not config.repository.url.startswith("s3://")
    return Repository.init(open_backend(config.repository), configured_key(config),
                           create_location=create_location)


def open_or_create_repository(config: Config) -> Repository:
    """What a backup writes to: the repository, or a new one in an empty location unless
    this machine's ``state_dir`` remembers another repository there (a wiped bucket or a
    changed ``repository.url`` needs a person, not a silent fresh start)."""
    try:
        return open_repository(config)
    except NotFoundError:
        known = known_repository_ids(config)
        if known:
            raise RefusedError(
                f"no repository at {config.repository.url}, but state_dir {config.state_dir} "
                f"holds the cache of repository {known[0]}: the repository was wiped or moved, "
                "or repository.url changed; restore or point to it, or run 'wicked-dr init' "
                "to start a new repository there on purpose") from None
        return init_repository(config)[0]


def known_repository_ids(config: Config) -> list[str]:
    """Ids of the repositories whose caches this machine keeps (newest cache first)."""
    cache_root = config.state_dir / "cache"
    if not cache_root.is_dir():
        return []
    caches = sorted((p for p in cache_root.iterdir() if p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in caches]


def index_cache(repo: Repository, config: Config) -> IndexCache:
    """The local index cache of ``repo``, synchronised."""
    return IndexCache.for_repository(repo, config.state_dir)


def stat_cache_dir(repo: Repository, config: Config) -> Path:
    """Where this machine keeps the stat caches of ``repo``."""
    return config.state_dir / "cache" / repo.repo_id / "stat"
