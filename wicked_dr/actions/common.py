"""What every action needs: the repository opened from the config, and the index cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wicked_dr.backends import open_backend
from wicked_dr.config import Config
from wicked_dr.repository.crypto import Key, load_key
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.repo import Repository

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class RunOptions:
    """Options of the command line that every action may honour."""

    lock_wait_s: float = 0.0
    progress: Progress | None = None


def configured_key(config: Config) -> Key | None:
    """The repository key, when one is configured."""
    path = config.repository.encryption_key_file
    return load_key(path) if path else None


def open_repository(config: Config, *, create: bool = False) -> Repository:
    """The configured repository (created on first use when ``create``)."""
    return Repository.open(open_backend(config.repository), configured_key(config),
                           create=create)


def index_cache(repo: Repository, config: Config) -> IndexCache:
    """The local index cache of ``repo``, synchronised."""
    return IndexCache.for_repository(repo, config.state_dir)


def stat_cache_dir(repo: Repository, config: Config) -> Path:
    """Where this machine keeps the stat caches of ``repo``."""
    return config.state_dir / "cache" / repo.repo_id / "stat"
