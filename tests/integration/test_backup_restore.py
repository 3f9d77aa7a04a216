"""Backup, incremental backup, restore and export round trips, the volume guards, unreadable
files and hostile manifests, on the local backend and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.repos import (
    BACKENDS,
    RepoTarget,
    Setup,
    assert_same_tree,
    backdate,
    cli,
    craft_snapshot,
    error_lines,
    make_setup,
    repo_target,
    wait_past_second_of,
)
from tests.fixtures.services import service_missing
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.repository.manifest import Entry, iter_entries
from wicked_dr.testing.sample_volume import generate, mutate

pytestmark = pytest.mark.integration
USERS = 300


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> RepoTarget:
    return repo_target(request, tmp_path)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A local repository and a backdated sample volume (S3 only where it matters)."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    generate(s.volume, users=USERS, seed=3)
    backdate(s.volume)
    return s


def _backup(s: Setup, *args: str) -> dict[str, object]:
    run = cli(s.config_path, "backup", "--json", *args)
    assert run.code == 0, run.err
    result: dict[str, object] = json.loads(run.out)
    wait_past_second_of(str(result["snapshot"]))
    return result


def _paths(s: Setup, snapshot_id: str) -> list[str]:
    repo = s.repo()
    return [e.path for e in iter_entries(repo, load_snapshot(repo, snapshot_id))]


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_backup_incremental_restore_round_trip_byte_identical(
        tmp_path: Path, target: RepoTarget, encrypted: bool) -> None:
    """Full + incremental backups restore byte-identical (content, modes, mtimes, symlinks)."""
    s = make_setup(tmp_path, target, encrypted=encrypted)
    generate(s.volume, users=USERS, seed=11)
    (s.volume / "users" / "_index.json").chmod(0o600)
    os.symlink("users/_index.json", s.volume / "index-link")
    backdate(s.volume)
    full = _backup(s)
    assert {"snapshot", "files", "bytes_read", "bytes_new", "duration_s"} <= set(full)
    assert full["files_unchanged"] == 0
    assert full["bytes_new"] and full["bytes_read"]
    first = tmp_path / "first"
    subprocess.run(["cp", "-a", str(s.volume), str(first)], check=True, timeout=60)

    touched = mutate(s.volume, 0.01, seed=5)
    incremental = _backup(s)
    assert incremental["snapshot"] != full["snapshot"]
    assert int(incremental["objects_written"]) <= 10  # type: ignore[call-overload]
    changed = len(touched)
    assert int(incremental["files_unchanged"]) >= int(incremental["files"]) - changed  # type: ignore[call-overload]
    assert int(incremental["bytes_read"]) < int(full["bytes_read"]) // 10  # type: ignore[call-overload]

    run = cli(s.config_path, "restore", str(full["snapshot"]), "--target", str(tmp_path / "r1"))
    assert run.code == 0, run.err
    assert_same_tree(first, tmp_path / "r1")
    run = cli(s.config_path, "restore", "latest", "--target", str(tmp_path / "r2"))
    assert run.code == 0, run.err
    assert_same_tree(s.volume, tmp_path / "r2")


def test_backups_in_one_clock_instant_sort_in_creation_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots taken while the wall clock stands still (or within one second) list in
    creation order, and 'latest' is the one taken last: the order does not depend on speed."""
    from datetime import UTC, datetime

    from wicked_dr.actions import backup as backup_action

    frozen = datetime(2026, 11, 30, 3, 0, 0, 500_000, tzinfo=UTC)
    monkeypatch.setattr(backup_action, "utc_now", lambda: frozen)
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}),
                   quiesce="none")
    generate(s.volume, users=2, seed=1)
    created: list[str] = []
    for _ in range(6):
        run = cli(s.config_path, "backup", "--json")
        assert run.code == 0, run.err
        created.append(json.loads(run.out)["snapshot"])
    assert {c[:16] for c in created} == {"20261130T030000."}  # one second
    assert snapshot_ids(s.repo()) == created
    listed = json.loads(cli(s.config_path, "snapshots", "--json").out)
    assert [row["id"] for row in listed] == created
    latest = cli(s.config_path, "restore", "latest", "--target", str(tmp_path / "r"),
                 "--dry-run", "--json")
    assert json.loads(latest.out)["snapshot"] == created[-1]


def test_backup_unchanged_volume_reads_no_file(setup: Setup) -> None:
    """A second backup of an untouched (not racy) volume reads no file and uploads one object."""
    full = _backup(setup)
    again = _backup(setup)
    assert again["files_unchanged"] == again["files"] == full["files"]
    assert again["bytes_read"] == 0 and again["bytes_new"] == 0
    assert again["objects_written"] == 1  # the snapshot object only: the tree is unchanged


def test_backup_same_size_rewrite_same_mtime_detected(setup: Setup) -> None:
    """A same-size rewrite that keeps the mtime (ctime still moves) is read again."""
    _backup(setup)
    meta = setup.volume / "meta.json"
    st = meta.stat()
    data = bytearray(meta.read_bytes())
    data[-3:-2] = b"7" if data[-3:-2] != b"7" else b"8"
    meta.write_bytes(bytes(data))
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = _backup(setup)
    assert result["files_unchanged"] == int(result["files"]) - 1  # type: ignore[call-overload]
    run = cli(setup.config_path, "restore", "latest", "--target", str(setup.tmp / "out"))
    assert run.code == 0, run.err
    assert (setup.tmp / "out" / "meta.json").read_bytes() == bytes(data)


def test_export_tar_extracts_to_the_volume(setup: Setup) -> None:
    """export latest --tar FILE, then tar -x, gives the volume back (mtimes to the millisecond)."""
    _backup(setup)
    tar_path = setup.tmp / "snap.tar"
    run = cli(setup.config_path, "export", "latest", "--tar", str(tar_path))
    assert run.code == 0, run.err
    with tarfile.open(tar_path) as tar:
        assert not any(m.name.startswith(("/", "..")) for m in tar.getmembers())
    out = setup.tmp / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-x", "-f", str(tar_path), "-C", str(out)], check=True, timeout=60)
    assert_same_tree(setup.volume, out, mtime_resolution_ns=1_000_000)


def test_export_tar_keeps_nanosecond_mtimes(setup: Setup) -> None:
    """The tar export carries the exact recorded mtimes (as restore does)."""
    stamp = 1_700_000_000_123_456_789
    os.utime(setup.volume / "meta.json", ns=(stamp, stamp))
    _backup(setup)
    tar_path = setup.tmp / "snap.tar"
    assert cli(setup.config_path, "export", "latest", "--tar", str(tar_path)).code == 0
    out = setup.tmp / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-x", "-f", str(tar_path), "-C", str(out)], check=True, timeout=60)
    assert (out / "meta.json").stat().st_mtime_ns == stamp


# --- lock files ------------------------------------------------------------------------------


def test_backup_lock_files_never_in_snapshot(setup: Setup) -> None:
    """*.lock files and global.lock (read without quiescing) are not part of any snapshot."""
    setup.write(quiesce="none")
    (setup.volume / "meta.json.lock").write_text("")
    (setup.volume / "users" / "x.json.lock").write_text("")
    (setup.volume / "global.lock").write_text("")
    snapshot = str(_backup(setup)["snapshot"])
    paths = _paths(setup, snapshot)
    assert "meta.json" in paths
    assert not [p for p in paths if p.endswith(".lock")]


# --- guards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["meta.json", "users/_index.json"])
def test_backup_volume_without_wicked_markers_refused_exit_6(setup: Setup, missing: str) -> None:
    """A volume without meta.json or users/_index.json is refused (exit 6) unless --force."""
    (setup.volume / missing).unlink()
    run = cli(setup.config_path, "backup")
    assert run.code == 6
    assert "'wicked' database" in run.err and missing in run.err
    assert not (setup.state / "staging").exists() or not any((setup.state / "staging").iterdir())
    forced = _backup(setup, "--force")
    assert missing not in _paths(setup, str(forced["snapshot"]))


def test_backup_volume_shrank_beyond_limit_refused_exit_6(setup: Setup) -> None:
    """A volume that lost more than max_shrink_percent of its files is refused; --force wins."""
    setup.write(max_shrink_percent=20)
    first = _backup(setup)
    files = sorted((setup.volume / "subscription_index").iterdir())
    files += sorted((setup.volume / "registrations").iterdir())
    files += sorted((setup.volume / "applications").iterdir())
    for path in files:
        path.unlink()
    run = cli(setup.config_path, "backup")
    assert run.code == 6, run.err
    assert "shrank" in run.err
    assert snapshot_ids(setup.repo()) == [first["snapshot"]]
    forced = _backup(setup, "--force")
    assert int(forced["files"]) < int(first["files"]) * 0.8  # type: ignore[call-overload]


def test_backup_volume_shrank_within_limit_accepted(setup: Setup) -> None:
    """Deleting fewer files than the limit allows is an ordinary backup."""
    setup.write(max_shrink_percent=20)
    first = _backup(setup)
    for path in sorted((setup.volume / "subscription_index").iterdir())[:10]:
        path.unlink()
    second = _backup(setup)
    assert second["files"] == int(first["files"]) - 10  # type: ignore[call-overload]


def _delete_share(volume: Path, share: float) -> None:
    """Delete about ``share`` of the files under applications/ and subscription_index/."""
    files = sorted((volume / "subscription_index").iterdir())
    files += sorted((volume / "applications").iterdir())
    for path in files[:int(len(files) * share)]:
        path.unlink()


def test_backup_volume_shrinking_in_small_steps_refused_against_reference(
        setup: Setup) -> None:
    """Backups each losing less than the limit cannot walk the volume down: the guard compares
    with the largest recent snapshot, not only the previous one."""
    setup.write(max_shrink_percent=20)
    first = _backup(setup)
    losses = []
    for _ in range(4):
        before = len(list(setup.volume.rglob("*.json")))
        _delete_share(setup.volume, 0.25)
        losses.append(1 - len(list(setup.volume.rglob("*.json"))) / before)
        run = cli(setup.config_path, "backup", "--json")
        if run.code != 0:
            break
    assert all(loss < 0.2 for loss in losses), losses  # each step alone is allowed
    assert run.code == 6, run.err
    assert f"since snapshot {first['snapshot']}" in run.err and "files" in run.err


def test_backup_volume_truncated_files_refused_by_bytes(setup: Setup) -> None:
    """Files emptied in place keep the file count but lose the bytes: refused (exit 6)."""
    setup.write(max_shrink_percent=20)
    first = _backup(setup)
    for path in sorted(setup.volume.rglob("*.json"))[::10]:
        path.write_bytes(b"")
    for path in sorted(setup.volume.rglob("*.json")):
        if path.stat().st_size:
            path.write_bytes(b"{}")
    run = cli(setup.config_path, "backup")
    assert run.code == 6, run.err
    assert "bytes" in run.err and str(first["snapshot"]) in run.err


def test_backup_after_forced_loss_reference_starts_again(setup: Setup) -> None:
    """A forced backup accepts the loss: the next ordinary backup compares with it."""
    setup.write(max_shrink_percent=20)
    _backup(setup)
    _delete_share(setup.volume, 0.9)
    assert cli(setup.config_path, "backup").code == 6
    _backup(setup, "--force")
    run = cli(setup.config_path, "backup")
    assert run.code == 0, run.err


# --- unreadable entries ------------------------------------------------------------------------


def test_backup_special_file_reported_counted_not_claimed(setup: Setup) -> None:
    """A FIFO in the volume is reported and counted as an error, and not in the manifest."""
    os.mkfifo(setup.volume / "users" / "pipe.json")
    result = _backup(setup)
    assert result["errors"] == 1
    snapshot = load_snapshot(setup.repo(), str(result["snapshot"]))
    assert [e.path for e in snapshot.errors] == ["users/pipe.json"]
    assert "users/pipe.json" not in _paths(setup, str(result["snapshot"]))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch dir outside pytest's root-only tmp tree, so another uid can reach it."""
    path = Path(tempfile.mkdtemp(prefix="wdr-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_backup_permission_denied_files_reported_counted_not_claimed(shared_dir: Path) -> None:
    """Run as an unprivileged uid: a 000 file and a 000 folder are errors, not manifest entries."""
    if os.geteuid() != 0:
        service_missing("root privileges", "run the suite as root (scripts/test.sh does) so "
                        "the test can switch to an unprivileged uid")
    import wicked_dr.actions.backup
    import wicked_dr.progress
    import wicked_dr.report  # noqa: F401

    s = make_setup(shared_dir, RepoTarget("local", {"url": str(shared_dir / "repo")}))
    s.write(quiesce="none")
    generate(s.volume, users=40, seed=2)
    secret = s.volume / "users" / "_secret.json"
    secret.write_text("{}")
    (s.volume / "grants").chmod(0o000)
    secret.chmod(0o000)
    nobody = 65534
    for dirpath, dirnames, filenames in os.walk(shared_dir):
        for name in [dirpath, *[os.path.join(dirpath, n) for n in dirnames + filenames]]:
            os.lchown(name, nobody, nobody)
    os.setegid(nobody)
    os.seteuid(nobody)
    try:
        run = cli(s.config_path, "backup", "--json")
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["errors"] == 2
    snapshot = load_snapshot(s.repo(), result["snapshot"])
    assert sorted(e.path for e in snapshot.errors) == ["grants", "users/_secret.json"]
    paths = _paths(s, result["snapshot"])
    assert "users/_secret.json" not in paths
    assert not [p for p in paths if p.startswith("grants/")]


# --- restore targets and hostile manifests -------------------------------------------------------


def test_restore_non_empty_target_refused_unless_force(setup: Setup) -> None:
    """restore into a non-empty directory exits 6 and leaves it alone; --force writes into it."""
    _backup(setup)
    out = setup.tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = cli(setup.config_path, "restore", "latest", "--target", str(out))
    assert run.code == 6
    assert sorted(os.listdir(out)) == ["keep.txt"]
    run = cli(setup.config_path, "restore", "latest", "--target", str(out), "--force")
    assert run.code == 0, run.err
    (out / "keep.txt").unlink()
    assert_same_tree(setup.volume, out)


def _crafted_snapshot(s: Setup, entries: list[Entry]) -> str:
    """A snapshot whose single tree holds ``entries``."""
    repo = s.repo()
    return craft_snapshot(repo, load_snapshot(repo, snapshot_ids(repo)[-1]), entries)


def _meta_entry(s: Setup, path: str) -> Entry:
    repo = s.repo()
    real = next(e for e in iter_entries(repo, load_snapshot(repo, snapshot_ids(repo)[-1]))
                if e.path == "meta.json")
    return Entry(path, "file", 0o644, 0, 0, real.mtime_ns, real.size, real.sha256, real.blobs)


@pytest.mark.parametrize("evil", ["../escaped.json", "sub/../../escaped.json", "ABSOLUTE"])
def test_restore_manifest_escaping_target_refused_exit_3(setup: Setup, evil: str) -> None:
    """Entries with '..' or an absolute path are refused (exit 3); nothing lands outside."""
    _backup(setup)
    outside = setup.tmp / "escaped.json"
    if evil == "ABSOLUTE":
        evil = str(outside)
    snapshot_id = _crafted_snapshot(setup, [_meta_entry(setup, "meta.json"),
                                            _meta_entry(setup, evil)])
    run = cli(setup.config_path, "restore", snapshot_id, "--target", str(setup.tmp / "out"))
    assert run.code == 3, run.err
    assert "outside the target" in run.err
    assert not outside.exists()


def test_restore_manifest_path_through_symlink_entry_refused_exit_3(setup: Setup) -> None:
    """A symlink entry pointing outside, then a file 'through' it: refused with exit 3."""
    _backup(setup)
    outside = setup.tmp / "elsewhere"
    outside.mkdir()
    link = Entry("link", "symlink", 0o777, 0, 0, 0, target=str(outside))
    snapshot_id = _crafted_snapshot(setup, [link, _meta_entry(setup, "link/escaped.json")])
    run = cli(setup.config_path, "restore", snapshot_id, "--target", str(setup.tmp / "out"))
    assert run.code == 3, run.err
    assert error_lines(run), run.err
    assert os.listdir(outside) == []


def test_restore_force_existing_symlink_in_target_not_followed(setup: Setup) -> None:
    """With --force, a file entry under a symlink already in the target is refused (exit 3)."""
    _backup(setup)
    out, outside = setup.tmp / "out", setup.tmp / "elsewhere"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "users")
    run = cli(setup.config_path, "restore", "latest", "--target", str(out), "--force")
    assert run.code == 3, run.err
    assert "symlink" in run.err
    assert os.listdir(outside) == []


def test_restore_force_existing_symlink_dir_entry_outside_untouched(setup: Setup) -> None:
    """With --force, a dir entry whose name is a symlink in the target never changes the
    directory the symlink points to."""
    _backup(setup)
    out, outside = setup.tmp / "out", setup.tmp / "elsewhere"
    out.mkdir()
    outside.mkdir(mode=0o700)
    outside.chmod(0o700)
    os.symlink(outside, out / "d")
    snapshot_id = _crafted_snapshot(setup, [Entry("d", "dir", 0o777, 0, 0, 0)])
    cli(setup.config_path, "restore", snapshot_id, "--target", str(out), "--force")
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
