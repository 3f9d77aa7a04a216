"""The local state directory (``state_dir``): the one module that knows its layout.

Nothing in it is backed up and all of it can be rebuilt from the repository, but it speeds
every run up and remembers which repository this machine wrote to::

    state_dir/                      0700, created on first use
      cache/<repo id>/              one per repository this machine has used
        index.sqlite                the index cache (repository/index.py)
        stat/                       the stat caches of the volume scan (repository/statcache.py)
      staging/<snapshot id>/        a running backup's packs, trees and indexes before upload;
                                    a leftover of a crashed run is never referenced by anything
      restore-scratch/              a restore's spilled blobs, in unlinked files (engine/
                                    restore_plan.py): nothing outlives the process
      live-restore/journal.json     the journal of a live restore of wicked's database when
                                    there is no volume (engine/live_journal.py)
      reports/                      live restore reports

Every directory is created owner-only (0700): caches name files and hold hashes of wicked's
data. Callers ask this module for paths; no other module joins a name onto ``state_dir``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

OWNER_ONLY = 0o700
STALE_STAGING_S = 3600.0  # older than any backup: a crashed run's staging directory


class StateDir:
    """Paths in one ``state_dir``, each directory created owner-only on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def index_cache(self, repo_id: str) -> Path:
        """The SQLite file of the index cache of repository ``repo_id``."""
        return self._repository_cache(repo_id) / "index.sqlite"

    def stat_cache(self, repo_id: str) -> Path:
        """The directory of the stat caches of repository ``repo_id``."""
        return _directory(self._repository_cache(repo_id) / "stat")

    def staging(self, snapshot_id: str) -> Path:
        """Where the backup writing ``snapshot_id`` stages its objects (not created: the
        writer makes it when it starts)."""
        return _directory(self.root / "staging") / snapshot_id

    def restore_scratch(self) -> Path:
        """Where a restore spills blobs that wait for files further on (created)."""
        return _directory(self.root / "restore-scratch")

    def live_workspace(self) -> Path:
        """Where a live restore of wicked's database alone (no volume) keeps its journal
        (created, owner-only); with a volume, the journal lives on the volume's file system
        (``sources/volume_live.py``)."""
        return _directory(self.root / "live-restore")

    def reports(self) -> Path:
        """Where restore reports are kept (created)."""
        return _directory(self.root / "reports")

    def known_repository_ids(self) -> list[str]:
        """Ids of the repositories whose caches this machine keeps, newest use first."""
        cache_root = self.root / "cache"
        if not cache_root.is_dir():
            return []
        caches = [p for p in cache_root.iterdir() if p.is_dir()]
        caches.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.name for p in caches]

    def remove_stale_staging(self, older_than_s: float = STALE_STAGING_S) -> None:
        """Delete staging directories a crashed run left behind (never referenced)."""
        staging_root = self.root / "staging"
        if not staging_root.is_dir():
            return
        cutoff = time.time() - older_than_s
        for leftover in staging_root.iterdir():
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)

    def _repository_cache(self, repo_id: str) -> Path:
        return _directory(self.root / "cache" / repo_id)


def _directory(path: Path) -> Path:
    """``path``, created owner-only together with every missing parent (``mkdir(parents=
    True)`` would give the parents the umask's mode)."""
    if path.is_dir():
        return path
    if not path.parent.is_dir():
        _directory(path.parent)
    try:
        path.mkdir(mode=OWNER_ONLY)
    except FileExistsError:
        return path  # made meanwhile by another run
    os.chmod(path, OWNER_ONLY)  # mkdir's mode is masked by the umask
    return path
