"""One damaged object does not block backups nor spread into new snapshots (issue 11, point
2): an unreadable newest snapshot or a missing tree makes the next backup read the volume in
full from a clean parent, and a damaged index object blocks neither backups nor the restores
that do not need it. Each backup says what it met (``damage`` in --json). Local backend,
encrypted (a flipped byte fails authentication)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.repos import (
    RepoTarget,
    Setup,
    assert_same_tree,
    backdate,
    backup_json,
    cli,
    flip_byte,
    make_setup,
)
from wicked_dr.engine.catalog import snapshot_ids
from wicked_dr.repository.layout import object_name
from wicked_dr.testing.sample_volume import generate, mutate

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """An encrypted local repository with one snapshot of a small sample volume."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}),
                   encrypted=True)
    generate(s.volume, users=30, seed=8)
    backdate(s.volume)
    assert cli(s.config_path, "backup").code == 0
    return s


def _restores_volume(s: Setup, snapshot: str, out: str) -> None:
    run = cli(s.config_path, "restore", snapshot, "--target", str(s.tmp / out))
    assert run.code == 0, run.err
    assert_same_tree(s.volume, s.tmp / out)


def test_backup_newest_snapshot_unreadable_goes_on_from_clean_parent(setup: Setup) -> None:
    """A flipped byte in the newest snapshot object: the next backup exits 0, names the
    damage, reads every file again and its snapshot restores the volume."""
    damaged = snapshot_ids(setup.repo())[-1]
    flip_byte(setup, object_name("snapshot", damaged))
    result = backup_json(setup)
    assert [d for d in result["damage"] if damaged in d]  # type: ignore[attr-defined]
    assert result["files_unchanged"] == 0
    assert snapshot_ids(setup.repo())[-1] == result["snapshot"] != damaged
    _restores_volume(setup, "latest", "out")


def test_backup_parent_tree_missing_goes_on_from_clean_parent(setup: Setup) -> None:
    """A tree object of the newest snapshot is gone: the next backup stores the tree again
    (exit 0, damage named), and its snapshot restores the volume."""
    repo = setup.repo()
    parent = snapshot_ids(repo)[-1]
    from wicked_dr.engine.catalog import load_snapshot

    tree = load_snapshot(repo, parent).trees[0]
    (setup.tmp / "repo" / object_name("tree", tree)).unlink()
    result = backup_json(setup)
    assert [d for d in result["damage"] if tree in d]  # type: ignore[attr-defined]
    _restores_volume(setup, "latest", "out")


def test_damaged_index_object_blocks_neither_backup_nor_other_restores(setup: Setup) -> None:
    """One damaged index object with an empty state_dir: a snapshot whose packs another
    index lists still restores; a backup exits 0 naming the damage, stores again what the
    damaged index listed, and its snapshot restores."""
    repo = setup.repo()
    first = snapshot_ids(repo)[-1]
    kept = shutil.copytree(setup.volume, setup.tmp / "volume-at-first", symlinks=True)
    before = set(repo.list_ids("index"))
    mutate(setup.volume, 0.2, seed=3)
    assert cli(setup.config_path, "backup").code == 0
    second_index = sorted(set(repo.list_ids("index")) - before)[0]
    flip_byte(setup, object_name("index", second_index))
    shutil.rmtree(setup.state)

    run = cli(setup.config_path, "restore", first, "--target", str(setup.tmp / "first"))
    assert run.code == 0, run.err
    assert_same_tree(kept, setup.tmp / "first")
    result = backup_json(setup)
    assert [d for d in result["damage"] if second_index in d]  # type: ignore[attr-defined]
    assert int(result["bytes_new"]) > 0  # type: ignore[call-overload]
    _restores_volume(setup, "latest", "out")
