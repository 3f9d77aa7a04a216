"""Damage never spreads into new snapshots (issue 11, point 1).

A pack found damaged, by ``check --read-data`` or by a restore, stops being a dedup target
on every machine (a damage record in the repository), so the next backup stores that data
again, even from an empty ``state_dir``; and a stat cache written before blobs left the index
(index objects deleted, a pack found damaged) no longer vouches for its files. In every case
the new snapshot restores the volume. Local backend, unencrypted and encrypted."""

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
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.repository.damage import damaged_pack_ids
from wicked_dr.repository.index import read_index
from wicked_dr.repository.layout import object_name
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Setup:
    """A local repository with one snapshot of a small sample volume."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}),
                   encrypted=request.param)
    generate(s.volume, users=30, seed=3)
    backdate(s.volume)
    assert cli(s.config_path, "backup").code == 0
    return s


def _packs(s: Setup) -> list[str]:
    repo = s.repo()
    return sorted(p.pack_id for i in repo.list_ids("index") for p in read_index(repo, i))


def _latest_restores_volume(s: Setup, out: str) -> None:
    run = cli(s.config_path, "restore", "latest", "--target", str(s.tmp / out))
    assert run.code == 0, run.err
    assert_same_tree(s.volume, s.tmp / out)


def _latest_blobs_only_in(s: Setup, pack_id: str) -> set[str]:
    """The newest snapshot's blobs that no pack but ``pack_id`` holds (by the repository's
    index objects): data that did not reach the repository again."""
    from wicked_dr.repository.manifest import iter_entries

    repo = s.repo()
    packs_of: dict[str, set[str]] = {}
    for index_id in repo.list_ids("index"):
        for pack in read_index(repo, index_id):
            for blob_id in pack.blob_ids:
                packs_of.setdefault(blob_id, set()).add(pack.pack_id)
    snapshot = load_snapshot(repo, snapshot_ids(repo)[-1])
    return {b for entry in iter_entries(repo, snapshot) for b in entry.blobs
            if packs_of[b] == {pack_id}}


def test_pack_damaged_found_by_check_is_stored_again_from_empty_state_dir(setup: Setup) -> None:
    """Flip a byte in a pack; check --read-data finds it (exit 3) and records it; with the
    state_dir emptied, the next backup uploads that data again. The same blobs make the same
    pack (content-addressed), so the upload heals it: the record goes, check passes."""
    damaged = _packs(setup)[0]
    flip_byte(setup, object_name("data", damaged))
    check = cli(setup.config_path, "check", "--read-data")
    assert check.code == 3 and damaged in check.err
    assert damaged_pack_ids(setup.repo()) == [damaged]
    shutil.rmtree(setup.state)
    result = backup_json(setup)
    assert result["bytes_new"] > 0  # type: ignore[operator]
    _latest_restores_volume(setup, "out")
    assert damaged_pack_ids(setup.repo()) == []
    assert cli(setup.config_path, "check", "--read-data").code == 0


def test_pack_damaged_then_volume_changed_new_snapshot_avoids_the_pack(setup: Setup) -> None:
    """As above, but a file changed meanwhile, so the data goes into another pack: the new
    snapshot references no blob that only the damaged pack holds, and restores; the record
    stays (check says to run 'repair packs') until the pack is dropped."""
    damaged = _packs(setup)[0]
    flip_byte(setup, object_name("data", damaged))
    assert cli(setup.config_path, "check", "--read-data").code == 3
    shutil.rmtree(setup.state)
    (setup.volume / "meta.json").write_text('{"dynamicVersion": 2}')
    backdate(setup.volume)
    backup_json(setup)
    assert not _latest_blobs_only_in(setup, damaged)
    _latest_restores_volume(setup, "out")
    check = cli(setup.config_path, "check")
    assert check.code == 3 and "repair packs" in check.err


def test_pack_damaged_found_by_restore_is_stored_again_with_warm_state_dir(
        setup: Setup) -> None:
    """A restore meets the damaged pack (exit 3) and records it; the next backup, whose stat
    cache vouched for every file, reads them again and stores the lost data anew."""
    damaged = _packs(setup)[0]
    flip_byte(setup, object_name("data", damaged))
    restore = cli(setup.config_path, "restore", "latest", "--target", str(setup.tmp / "bad"))
    assert restore.code == 3 and damaged in restore.err
    assert damaged_pack_ids(setup.repo()) == [damaged]
    result = backup_json(setup)
    assert result["files_unchanged"] == 0
    assert result["bytes_new"] > 0  # type: ignore[operator]
    _latest_restores_volume(setup, "out")
    assert damaged_pack_ids(setup.repo()) == []  # stored again whole: healed
    assert cli(setup.config_path, "check", "--read-data").code == 0


def test_every_index_object_deleted_the_stat_cache_no_longer_vouches(setup: Setup) -> None:
    """Delete every index object: the next backup (warm state_dir) must not reuse the stat
    cache's lines for blobs no index lists; it stores them again and restores."""
    for index_id in setup.repo().list_ids("index"):
        (setup.tmp / "repo" / object_name("index", index_id)).unlink()
    result = backup_json(setup)
    assert result["files_unchanged"] == 0
    _latest_restores_volume(setup, "out")
    # The blobs are content-addressed: stored again, they make the old snapshot whole too.
    assert cli(setup.config_path, "check", "--read-data").code == 0


def test_unchanged_backup_keeps_using_the_stat_cache(setup: Setup) -> None:
    """The control: with nothing lost, the stat cache still vouches (files unchanged)."""
    result = backup_json(setup)
    assert result["files_unchanged"] == result["files"]
