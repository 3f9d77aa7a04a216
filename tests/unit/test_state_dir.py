"""The local state directory: one owner of its layout, owner-only modes, leftovers found."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from wicked_dr.state_dir import StateDir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_paths_created_owner_only_with_every_parent(tmp_path: Path) -> None:
    """state_dir and each directory under it are created 0700, whatever the umask."""
    old = os.umask(0o022)
    try:
        state = StateDir(tmp_path / "state")
        stat_dir = state.stat_cache("r1")
        index = state.index_cache("r1")
        staging = state.staging("s1")
        scratch = state.restore_scratch()
    finally:
        os.umask(old)
    assert stat_dir == tmp_path / "state" / "cache" / "r1" / "stat"
    assert index.parent == stat_dir.parent and not index.exists()
    assert not staging.exists() and staging.parent.is_dir()
    for path in (tmp_path / "state", tmp_path / "state" / "cache", stat_dir.parent, stat_dir,
                 staging.parent, scratch):
        assert _mode(path) == 0o700, path


def test_known_repository_ids_newest_use_first(tmp_path: Path) -> None:
    """The repositories this machine has caches for, the most recently used first."""
    state = StateDir(tmp_path)
    assert state.known_repository_ids() == []
    state.stat_cache("older")
    state.stat_cache("newer")
    os.utime(tmp_path / "cache" / "older", (time.time() - 60, time.time() - 60))
    assert state.known_repository_ids() == ["newer", "older"]


def test_remove_stale_staging_keeps_a_running_backups_directory(tmp_path: Path) -> None:
    """A crashed run's old staging directory goes; a fresh one (a running backup) stays."""
    state = StateDir(tmp_path)
    old, fresh = state.staging("old"), state.staging("fresh")
    old.mkdir()
    fresh.mkdir()
    (old / "pack").write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    state.remove_stale_staging()
    assert not old.exists() and fresh.is_dir()
