"""kill -9 in the middle of a backup, and damaged repositories: flipped bytes, missing packs,
wrong keys and swapped objects, on the local backend and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.repos import (
    REPO_ROOT,
    RepoTarget,
    Setup,
    assert_same_tree,
    backdate,
    cli,
    cli_command,
    error_lines,
    make_setup,
    repo_target,
    wait_past_second_of,
    write_key,
)
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.errors import NotFoundError
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.locks import acquire, list_locks
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.testing.sample_volume import generate, mutate

pytestmark = pytest.mark.integration
BIG_FILES = 16
BIG_FILE_SIZE = 4 * 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> RepoTarget:
    t = repo_target(request, tmp_path)
    t.repository["pack_size_mib"] = 1  # many packs: a crash lands between uploads
    return t


def _backup(s: Setup) -> str:
    run = cli(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    snapshot = str(json.loads(run.out)["snapshot"])
    wait_past_second_of(snapshot)
    return snapshot


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=60)
    return dst


# --- kill -9 -------------------------------------------------------------------------------------


def _staged_packs(s: Setup) -> list[Path]:
    """Packs waiting in the staging directory of the running backup, oldest first."""
    staged = []
    for run_dir in (s.state / "staging").glob("*"):
        for path in run_dir.iterdir():
            if len(path.name) == 64:  # packs are named by their id; trees/indexes by prefix
                staged.append(path)
    return sorted(staged, key=lambda p: p.stat().st_mtime_ns)


def _first_pack_uploaded(s: Setup) -> bool:
    try:
        packs = _staged_packs(s)
    except FileNotFoundError:
        return False  # staging moved on under us
    if not packs:
        return False
    try:
        s.target.backend().stat(object_name("data", packs[0].name))
    except NotFoundError:
        return False
    return True


def _crash_backup(s: Setup, phase: str) -> bool:
    """Start ``wicked-dr backup`` and SIGKILL it in ``phase``; False when it finished first.

    ``reading``: the first read, without wicked's lock, with packs staged. ``locked``: under
    global.lock, where the backup waits for a write in flight (a ``<file>.lock`` made before
    it started and removed after the kill): a window that lasts, not a race."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    in_flight = s.volume / "users" / "_index.json.lock"
    if phase == "locked":
        in_flight.write_text("")
    proc = subprocess.Popen(cli_command(s.config_path, "backup"), env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = s.volume / "global.lock"
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            staged = (s.state / "staging").is_dir() and bool(_staged_packs(s))
            if phase == "reading" and staged and not lock.exists():
                break
            if phase == "locked" and lock.exists() and staged:
                break
            if phase == "uploading" and not lock.exists() and _first_pack_uploaded(s):
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        # Reap it: a zombie still has /proc/<pid>/stat and would look alive to lock takeover.
        code = proc.wait(timeout=30)
        in_flight.unlink(missing_ok=True)
    return code == -signal.SIGKILL


@pytest.mark.parametrize(("kind", "phase"), [
    ("local", "reading"),  # reading touches no backend: local is enough
    ("local", "locked"),
    ("local", "uploading"),
    ("s3", "uploading"),
])
def test_backup_killed_mid_run_leaves_repository_usable(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str, phase: str) -> None:
    """kill -9 while reading, while holding wicked's lock, or while uploading: earlier
    snapshots restore, check is clean, the dead run's locks are taken over (its global.lock
    removed) and the next backup succeeds."""
    target = repo_target(request, tmp_path, kind)
    target.repository["pack_size_mib"] = 1
    s = make_setup(tmp_path, target)
    generate(s.volume, users=400, seed=21)
    backdate(s.volume)
    first_id = _backup(s)
    first = _copy(s.volume, tmp_path / "first")
    mutate(s.volume, 0.02, seed=9)
    for n in range(BIG_FILES):
        (s.volume / "applications" / f"0-big-{n:02}.bin").write_bytes(os.urandom(BIG_FILE_SIZE))

    killed = False
    for _ in range(3):  # the kill must land inside the phase; a too-fast run is retried
        killed = _crash_backup(s, phase)
        if killed:
            break
        snapshots = snapshot_ids(s.repo())
        assert len(snapshots) == 2
        s.repo().backend.delete(object_name("snapshot", snapshots[-1]))
    assert killed, f"could not kill the backup while {phase}"

    repo = s.repo()
    assert snapshot_ids(repo) == [first_id]
    # Only a run killed under wicked's lock leaves it (to be cleaned up by the next run).
    assert (s.volume / "global.lock").exists() is (phase == "locked")
    run = cli(s.config_path, "restore", first_id, "--target", str(tmp_path / "r1"))
    assert run.code == 0, run.err
    assert_same_tree(first, tmp_path / "r1")
    run = cli(s.config_path, "check", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["problems"] == []

    dead = [lock for lock in list_locks(repo) if lock.operation == "backup"]
    assert dead, "the killed backup's repository lock should still be there"
    takeover = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
    takeover.release()
    assert list_locks(repo) == []

    second = _backup(s)
    doc = load_snapshot(s.repo(), second)
    assert doc.source("volume").metadata["removed_stale_lock"] is (phase == "locked")
    assert not (s.volume / "global.lock").exists()
    run = cli(s.config_path, "restore", "latest", "--target", str(tmp_path / "r2"))
    assert run.code == 0, run.err
    assert_same_tree(s.volume, tmp_path / "r2")
    run = cli(s.config_path, "check", "--read-data")
    assert run.code == 0, run.err


# --- damaged repositories ----------------------------------------------------------------------


@pytest.fixture
def populated(tmp_path: Path, target: RepoTarget) -> tuple[Setup, str]:
    """A repository with one snapshot of a volume spread over several 1 MiB packs."""
    s = make_setup(tmp_path, target)
    generate(s.volume, users=900, seed=4)
    backdate(s.volume)
    return s, _backup(s)


def _pack_ids(s: Setup) -> list[str]:
    return s.repo().list_ids("data")


def test_check_read_data_flipped_byte_in_pack_named_exit_3(populated: tuple[Setup, str]) -> None:
    """A flipped byte in a pack: check --read-data exits 3 naming it; restore refuses (exit 3)
    and no file under its real name holds wrong bytes."""
    s, _ = populated
    packs = _pack_ids(s)
    assert len(packs) >= 3
    victim = packs[len(packs) // 2]
    backend = s.target.backend()
    name = object_name("data", victim)
    data = bytearray(backend.get(name))
    data[len(data) // 2] ^= 0x01
    backend.put(name, bytes(data))

    run = cli(s.config_path, "check", "--read-data")
    assert run.code == 3, run.err
    assert victim in run.err

    out = s.tmp / "out"
    run = cli(s.config_path, "restore", "latest", "--target", str(out))
    assert run.code == 3, run.err
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) < sum(1 for p in s.volume.rglob("*") if p.is_file())
    for path in written:
        assert path.read_bytes() == (s.volume / path.relative_to(out)).read_bytes(), path


def test_check_deleted_pack_exit_3(populated: tuple[Setup, str]) -> None:
    """A pack that disappeared: the structural check (no --read-data) exits 3 naming it."""
    s, _ = populated
    victim = _pack_ids(s)[0]
    s.target.backend().delete(object_name("data", victim))
    run = cli(s.config_path, "check")
    assert run.code == 3, run.err
    assert victim in run.err


def test_check_clean_repository_exit_0(populated: tuple[Setup, str]) -> None:
    """An undamaged repository passes check --read-data (the control of the tests above)."""
    s, _ = populated
    run = cli(s.config_path, "check", "--read-data", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["packs_read"] == report["packs"] == len(_pack_ids(s))


def test_wrong_encryption_key_exit_3_one_line(tmp_path: Path) -> None:
    """Another key than the repository's: exit 3 with one line saying 'wrong encryption key'."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}),
                   encrypted=True)
    generate(s.volume, users=20, seed=1)
    _backup(s)
    s.key_file = write_key(tmp_path / "other.key")
    s.write()
    for args in (["snapshots"], ["restore", "latest", "--target", str(tmp_path / "out")],
                 ["backup"]):
        run = cli(s.config_path, *args)
        assert run.code == 3, (args, run.err)
        lines = error_lines(run)
        assert len(lines) == 1 and "wrong encryption key" in lines[0], run.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("encrypted", [
    True,
    False,
], ids=["encrypted", "plain"])
def test_tree_object_swapped_under_another_name_rejected_exit_3(tmp_path: Path,
                                                                encrypted: bool) -> None:
    """Tree object A's bytes stored under tree B's name: restore and check exit 3."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}),
                   encrypted=encrypted)
    generate(s.volume, users=60, seed=8)
    backdate(s.volume)
    first = _backup(s)
    mutate(s.volume, 0.05, seed=2)
    second = _backup(s)
    repo = s.repo()
    tree_a = load_snapshot(repo, first).trees[0]
    tree_b = load_snapshot(repo, second).trees[0]
    assert tree_a != tree_b
    assert [e.path for e in iter_entries(repo, load_snapshot(repo, second))]
    backend = repo.backend
    backend.put(object_name("tree", tree_b), backend.get(object_name("tree", tree_a)))

    run = cli(s.config_path, "restore", second, "--target", str(tmp_path / "out"))
    assert run.code == 3, run.err
    run = cli(s.config_path, "check")
    assert run.code == 3, run.err
    assert tree_b in run.err
