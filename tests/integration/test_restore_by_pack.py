"""Restore planned by pack (issue 11, point 10): after incremental backups a file tree's
blobs are spread over many packs, and each pack is still fetched once, whole; blobs that
wait for files further on are held within a memory budget or spilled; cancellation, damaged
packs and files spanning two packs keep the guarantees of ``engine/restore.py``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.repos import (
    RepoTarget,
    Setup,
    assert_same_tree,
    backdate,
    cli,
    make_setup,
    s3_target,
)
from tests.fixtures.s3 import FlakyProxy
from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.engine.restore import RestoreStats, restore_tree
from wicked_dr.engine.restore_plan import PlanLimits
from wicked_dr.errors import IntegrityError, Interrupted
from wicked_dr.progress import Progress
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.state_dir import StateDir
from wicked_dr.testing.sample_volume import generate, mutate

pytestmark = pytest.mark.integration
USERS = 200
INCREMENTALS = 6  # more packs than the old reader's LRU of four, interleaved in every directory
MIB = 1024 * 1024


def _backup(s: Setup) -> None:
    run = cli(s.config_path, "backup", "--json")
    assert run.code == 0, run.err


def _incrementals(s: Setup, count: int) -> None:
    """``count`` backups, each after changing ~3 % of the files, spread over the volume."""
    for seed in range(count):
        mutate(s.volume, 0.03, seed=100 + seed)
        backdate(s.volume)
        _backup(s)


def _volume_with_history(tmp_path: Path, target: RepoTarget) -> Setup:
    s = make_setup(tmp_path, target)
    generate(s.volume, users=USERS, seed=21)
    backdate(s.volume)
    _backup(s)
    _incrementals(s, INCREMENTALS)
    return s


def _index(s: Setup) -> IndexCache:
    repo = s.repo()
    return IndexCache.for_repository(repo, StateDir(s.state).index_cache(repo.repo_id))


def _packs_needed(s: Setup) -> set[str]:
    """The packs holding the newest snapshot's blobs, by the index."""
    repo, index = s.repo(), _index(s)
    snapshot = load_snapshot(repo, snapshot_ids(repo)[-1])
    refs = (index.lookup(blob) for e in iter_entries(repo, snapshot) for blob in e.blobs)
    return {ref.pack_id for ref in refs if ref is not None}


def _restore(s: Setup, out: Path, *, limits: PlanLimits | None = None,
             on_damaged: Callable[[str, str], None] | None = None,
             cancel: CancelToken = NOT_CANCELLED,
             progress: Progress | None = None) -> RestoreStats:
    """The newest snapshot's tree under ``out`` through the engine, with ``limits``."""
    repo, index = s.repo(), _index(s)
    snapshot = load_snapshot(repo, snapshot_ids(repo)[-1])
    reader = BlobReader(repo, index, snapshot_id=snapshot.id, on_damaged=on_damaged)
    return restore_tree(repo, reader, snapshot, out, limits=limits, cancel=cancel,
                        progress=progress)


def _big_file_in_two_packs(s: Setup) -> Path:
    """A 5 MiB file (two blobs) backed up, then its tail rewritten and backed up again: its
    first blob stays in the first backup's pack, its second is in the new one."""
    big = s.volume / "applications" / "big.bin"
    big.write_bytes(os.urandom(5 * MIB))
    backdate(s.volume)
    _backup(s)
    with big.open("r+b") as f:
        f.seek(4 * MIB + 100)
        f.write(os.urandom(1000))
    backdate(s.volume)
    _backup(s)
    return big


def test_restore_s3_after_incrementals_gets_each_pack_once_at_the_server(
        tmp_path: Path, s3_bucket: str, flaky_s3_proxy: Callable[[int], FlakyProxy]) -> None:
    """The hard gate: on S3, after several incrementals that each change ~3 % of the files
    across the volume, the restore GETs every pack object it needs exactly once, counted by
    a real proxy process in front of the server, and the tree is identical."""
    proxy = flaky_s3_proxy(0)
    s = _volume_with_history(tmp_path, s3_target(proxy.endpoint_url, s3_bucket))
    needed = _packs_needed(s)
    assert len(needed) > INCREMENTALS  # the snapshot's blobs really are spread out
    before = proxy.gets_seen()
    run = cli(s.config_path, "restore", "latest", "--target", str(tmp_path / "out"), "--json")
    assert run.code == 0, run.err
    after = proxy.gets_seen()
    data_gets = {path: n - before.get(path, 0) for path, n in after.items()
                 if "/data/" in path and n > before.get(path, 0)}
    assert max(data_gets.values()) == 1, sorted(data_gets.items(), key=lambda kv: -kv[1])[:3]
    expected = {f"/{s3_bucket}/repo/{object_name('data', pack)}" for pack in needed}
    assert set(data_gets) == expected
    assert json.loads(run.out)["packs_fetched"] == len(needed)
    assert_same_tree(s.volume, tmp_path / "out")


def test_restore_local_after_incrementals_fetches_each_needed_pack_once(tmp_path: Path) -> None:
    """Locally too: ``packs_fetched`` is the number of distinct packs the snapshot needs."""
    s = _volume_with_history(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    stats = _restore(s, tmp_path / "out")
    assert stats.packs_fetched == len(_packs_needed(s))
    assert_same_tree(s.volume, tmp_path / "out")


def test_restore_file_spanning_two_packs_tiny_budget_spills_and_restores_identical(
        tmp_path: Path) -> None:
    """A file whose blobs lie in two packs, restored with no memory for held blobs: the
    blob waiting for the other pack goes through the scratch file, each pack is fetched
    once, and the tree (that file included) is identical."""
    s = _volume_with_history(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    big = _big_file_in_two_packs(s)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stats = _restore(s, tmp_path / "out", limits=PlanLimits(memory_bytes=0, scratch=scratch))
    assert stats.bytes_spilled >= 1000  # a blob of the big file, or more, waited on disk
    assert stats.packs_fetched == len(_packs_needed(s))
    assert list(scratch.iterdir()) == []  # the scratch file was unlinked from the start
    assert (tmp_path / "out" / big.relative_to(s.volume)).read_bytes() == big.read_bytes()
    assert_same_tree(s.volume, tmp_path / "out")


def test_restore_by_pack_cancelled_mid_restore_files_whole_target_partial(
        tmp_path: Path) -> None:
    """Cancelled after a few files of the planned restore: Interrupted names the target as
    partial, and every file written is whole and the snapshot's."""
    s = _volume_with_history(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    out = tmp_path / "out"
    token = CancelToken()
    written: list[int] = []

    def progress(kind: str, size: int) -> None:  # told after each whole file
        written.append(size)
        if len(written) == 5:
            token.cancel("test: after five files")

    with pytest.raises(Interrupted) as caught:
        _restore(s, out, cancel=token, progress=progress)
    assert f"{out} is partial" in caught.value.one_line()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 5
    for path in files:
        assert path.read_bytes() == (s.volume / path.relative_to(out)).read_bytes()


def test_restore_by_pack_damaged_pack_hook_told_integrity_error_no_wrong_file(
        tmp_path: Path) -> None:
    """A pack that fails verification: the damage hook hears its id, the restore raises
    IntegrityError naming it (exit 3 at the CLI), and no file under the target holds wrong
    bytes."""
    s = _volume_with_history(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    damaged = sorted(_packs_needed(s))[0]
    path = tmp_path / "repo" / object_name("data", damaged)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    told: list[tuple[str, str]] = []
    out = tmp_path / "out"
    with pytest.raises(IntegrityError) as caught:
        _restore(s, out, on_damaged=lambda pack, why: told.append((pack, why)))
    assert [pack for pack, _ in told] == [damaged]
    assert damaged in caught.value.one_line()
    for restored in (p for p in out.rglob("*") if p.is_file()):
        assert restored.read_bytes() == (s.volume / restored.relative_to(out)).read_bytes()
    run = cli(s.config_path, "restore", "latest", "--target", str(tmp_path / "by-cli"))
    assert run.code == 3 and damaged in run.err, run.err


def test_restore_planned_in_slices_of_few_files_restores_identical(tmp_path: Path) -> None:
    """A volume larger than ``files_per_plan`` is planned slice by slice (bounded memory):
    the tree is still identical, directories created before their files in every slice,
    and each slice fetches a pack at most once."""
    s = _volume_with_history(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    stats = _restore(s, tmp_path / "out", limits=PlanLimits(files_per_plan=100))
    slices = -(-stats.files // 100)
    assert len(_packs_needed(s)) < stats.packs_fetched <= slices * len(_packs_needed(s))
    assert_same_tree(s.volume, tmp_path / "out")
