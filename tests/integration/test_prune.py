"""``wicked-dr prune`` (issue 14) on real repositories: a local directory, and S3 on the moto
server for the main story.

The story: four backups of a sample volume with changes between them; ``keep_last: 2``
forgets the first two. Afterwards every kept snapshot restores byte-identical, ``check`` is
clean, the forgotten snapshots are gone, the pack only they used is deleted, the first
backup's pack (half of it deleted files) is repacked, and the next backup still reuses its
stat cache. Guards: the shrink guard against the verified reference, and a missing, failed or
stale verification where verify is scheduled (verification records are written directly
with ``repository/verification.py``, as ``verify`` would, to simulate its outcome). A real
``kill -9`` of a ``wicked-dr prune`` subprocess at each step (it blocks at a named failpoint
and says so on stderr; the test kills it once it read that line) leaves every kept snapshot
restorable and ``check`` clean, and a second prune completes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.repos import (
    REPO_ROOT,
    RepoTarget,
    Setup,
    assert_same_tree,
    backdate,
    cli,
    cli_command,
    local_target,
    make_setup,
    repo_target,
)
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.engine.prune import FAILPOINT_ENV, STEPS
from wicked_dr.repository.index import read_index
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.repository.verification import (
    ProbeResult,
    VerificationRecord,
    save_verification,
)
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration
BULK = 20  # files of random data in the first snapshot; half are deleted before the second
BULK_SIZE = 64 * 1024
NO_VERIFY = {"verify": None}


def configure(s: Setup, *, retention: dict[str, Any] | None = None,
              schedule: dict[str, Any] | None = None, **volume: Any) -> None:
    """The setup's config with retention and schedule sections (volume keys as given)."""
    s.write(**volume)
    doc = yaml.safe_load(s.config_path.read_text())
    doc["retention"] = {"keep_last": 2, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0,
                        "keep_monthly": 0, "keep_yearly": 0, "repack_below_percent": 75,
                        **(retention or {})}
    doc["schedule"] = {**NO_VERIFY, **(schedule or {})}
    s.config_path.write_text(yaml.safe_dump(doc))


def backup(s: Setup, copies: dict[str, Path], *args: str) -> str:
    """A backup of the (backdated) volume; a copy of the volume as it was, by snapshot id."""
    backdate(s.volume)
    run = cli(s.config_path, "backup", "--json", *args)
    assert run.code == 0, run.err
    snapshot_id = str(json.loads(run.out)["snapshot"])
    copies[snapshot_id] = s.tmp / f"copy-{snapshot_id}"
    shutil.copytree(s.volume, copies[snapshot_id], symlinks=True)
    return snapshot_id


def story(s: Setup) -> tuple[list[str], dict[str, Path]]:
    """Four snapshots; the second drops half of the first's bulk, the later ones change
    small files (``extra/a.txt`` twice: its second version is used by snapshot 2 only)."""
    copies: dict[str, Path] = {}
    generate(s.volume, users=8, seed=14)
    bulk = s.volume / "bulk"
    bulk.mkdir()
    for n in range(BULK):
        (bulk / f"{n:02d}.bin").write_bytes(secrets.token_bytes(BULK_SIZE))
    ids = [backup(s, copies)]
    for n in range(BULK // 2, BULK):
        (bulk / f"{n:02d}.bin").unlink()
    (s.volume / "extra").mkdir()
    (s.volume / "extra" / "a.txt").write_text("version 2 " + secrets.token_hex(8))
    ids.append(backup(s, copies))
    (s.volume / "extra" / "a.txt").write_text("version 3 " + secrets.token_hex(8))
    (s.volume / "extra" / "b.txt").write_text("b " + secrets.token_hex(8))
    ids.append(backup(s, copies))
    (s.volume / "extra" / "c.txt").write_text("c " + secrets.token_hex(8))
    ids.append(backup(s, copies))
    return ids, copies


def prune(s: Setup, *args: str, code: int = 0) -> dict[str, Any]:
    run = cli(s.config_path, "prune", "--json", *args)
    assert run.code == code, run.err
    result: dict[str, Any] = json.loads(run.out)
    return result


def pack_of(s: Setup, snapshot_id: str, path: str) -> str:
    """The pack that holds the (first) blob of ``path`` in snapshot ``snapshot_id``."""
    repo = s.repo()
    blob = next(e.blobs[0] for e in iter_entries(repo, load_snapshot(repo, snapshot_id))
                if e.path == path)
    return next(p.pack_id for i in repo.list_ids("index") for p in read_index(repo, i)
                if blob in p.blob_ids)


def assert_restorable(s: Setup, copies: dict[str, Path], kept: list[str]) -> None:
    """``check`` is clean and every kept snapshot restores byte-identical."""
    run = cli(s.config_path, "check", "--json")
    assert run.code == 0, run.out + run.err
    for snapshot_id in kept:
        target = s.tmp / f"restore-{snapshot_id}-{secrets.token_hex(3)}"
        run = cli(s.config_path, "restore", snapshot_id, "--target", str(target))
        assert run.code == 0, run.err
        assert_same_tree(copies[snapshot_id], target)


@pytest.fixture(params=["local", "s3"])
def any_target(request: pytest.FixtureRequest, tmp_path: Path) -> RepoTarget:
    return repo_target(request, tmp_path)


def test_prune_forgets_deletes_and_repacks_keeping_kept_snapshots_whole(
        tmp_path: Path, any_target: RepoTarget) -> None:
    s = make_setup(tmp_path, any_target)
    configure(s, max_shrink_percent=90)
    ids, copies = story(s)
    first_pack = pack_of(s, ids[0], "bulk/00.bin")
    only_second = pack_of(s, ids[1], "extra/a.txt")
    trees_before = set(s.repo().list_ids("tree"))

    result = prune(s)

    repo = s.repo()
    assert result["kept"] == ids[2:] and result["removed"] == ids[:2]
    assert result["reasons"] == {ids[2]: ["last"], ids[3]: ["last"]}
    assert snapshot_ids(repo) == ids[2:]
    packs = set(repo.list_ids("data"))
    assert only_second not in packs  # used by a forgotten snapshot only: deleted
    assert first_pack not in packs  # half of it deleted files: repacked
    assert result["packs_repacked"] == 1 and result["packs_written"] == 1
    assert result["packs_deleted"] == 2 and result["bytes_deleted"] > 0
    assert pack_of(s, ids[2], "bulk/00.bin") in packs  # its used blobs live on elsewhere
    kept_trees = {t for i in ids[2:] for t in load_snapshot(repo, i).trees}
    assert set(repo.list_ids("tree")) == kept_trees < trees_before
    assert_restorable(s, copies, ids[2:])
    check = json.loads(cli(s.config_path, "check", "--json").out)
    assert check["warnings"] == []  # no pack left that no index lists
    # The next backup still trusts its stat cache: a prune keeps the newest snapshot's blobs.
    after = json.loads(cli(s.config_path, "backup", "--json").out)
    assert after["files_unchanged"] > 0 and after["bytes_read"] == 0
    # Nothing left to do: a second prune deletes nothing.
    again = prune(s)
    assert again["removed"] == [ids[2]] and again["packs_repacked"] == 0


def test_dry_run_shows_the_plan_and_deletes_nothing(tmp_path: Path) -> None:
    s = make_setup(tmp_path, local_target(tmp_path))
    configure(s, max_shrink_percent=90)
    ids, _ = story(s)
    before = _fingerprint(s.tmp / "repo")
    result = prune(s, "--dry-run")
    assert result["dry_run"] is True
    assert result["kept"] == ids[2:] and result["removed"] == ids[:2]
    assert result["packs_deleted"] == 2 and result["packs_repacked"] == 1
    assert _fingerprint(s.tmp / "repo") == before
    human = cli(s.config_path, "prune", "--dry-run")
    assert human.code == 0 and "would delete 2" in human.out and f"forget {ids[0]}" in human.out


def _fingerprint(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(("locks", ".locks"))}


# --- guards ------------------------------------------------------------------------------------


def _verification(s: Setup, snapshot_id: str, *, ok: bool, when: datetime) -> None:
    """What ``verify`` would store for ``snapshot_id`` (written directly: no containers)."""
    probe = ProbeResult("volume", problems=() if ok else ("users/1.json: missing",))
    save_verification(s.repo(), VerificationRecord(snapshot_id, when.isoformat(), (probe,),
                                                   1.0, "test"))


def _shrunk(tmp_path: Path) -> tuple[Setup, list[str]]:
    """A verified snapshot, then a newer one of a volume that lost half of its files (taken
    with a generous limit, which is then put back to 20 %)."""
    s = make_setup(tmp_path, local_target(tmp_path))
    configure(s, max_shrink_percent=95, schedule={"verify": "30 3 * * *"})
    copies: dict[str, Path] = {}
    generate(s.volume, users=12, seed=2)
    ids = [backup(s, copies)]
    _verification(s, ids[0], ok=True, when=datetime.now(UTC))
    keep = {"meta.json", "users/_index.json"}
    files = sorted(p for p in s.volume.rglob("*") if p.is_file())
    for path in files[::2]:  # half of the files
        if str(path.relative_to(s.volume)) not in keep:
            path.unlink()
    ids.append(backup(s, copies))
    configure(s, max_shrink_percent=20, schedule={"verify": "30 3 * * *"})
    return s, ids


def test_prune_refuses_when_newest_snapshot_shrank_against_the_verified_one(
        tmp_path: Path) -> None:
    s, ids = _shrunk(tmp_path)
    before = _fingerprint(s.tmp / "repo")
    run = cli(s.config_path, "prune")
    assert run.code == 6, run.err
    assert "shrank" in run.err and ids[0] in run.err and "backup --force" in run.err
    assert _fingerprint(s.tmp / "repo") == before
    # A forced backup accepts the loss: it becomes the reference, prune goes on.
    ids.append(backup(s, {}, "--force"))
    result = prune(s)
    assert ids[0] in result["kept"]  # the newest verified snapshot is never forgotten
    assert "newest verified" in result["reasons"][ids[0]]


def test_prune_without_verify_schedule_compares_with_the_largest_recent(
        tmp_path: Path) -> None:
    s, _ = _shrunk(tmp_path)
    configure(s, max_shrink_percent=20, schedule=NO_VERIFY)
    run = cli(s.config_path, "prune")
    assert run.code == 6 and "shrank" in run.err


@pytest.mark.parametrize("record, message", [
    (None, "no snapshot has a verification record"),
    ("failed", "failed"),
    ("stale", "older than two verify periods"),
])
def test_prune_refuses_on_missing_failed_or_stale_verification(
        tmp_path: Path, record: str | None, message: str) -> None:
    s = make_setup(tmp_path, local_target(tmp_path))
    configure(s, schedule={"verify": "30 3 * * *"})
    generate(s.volume, users=5, seed=4)
    ids = [backup(s, {}), backup(s, {}), backup(s, {})]
    now = datetime.now(UTC)
    if record is not None:
        # An older passing verification does not help: the newest one counts.
        _verification(s, ids[0], ok=True, when=now - timedelta(days=5))
        _verification(s, ids[1], ok=record != "failed",
                      when=now - timedelta(days=3 if record == "stale" else 0, hours=1))
    run = cli(s.config_path, "prune")
    assert run.code == 6, run.err
    assert message in run.err and "verify" in run.err
    assert snapshot_ids(s.repo()) == ids


def test_prune_goes_on_with_a_fresh_passing_verification(tmp_path: Path) -> None:
    s = make_setup(tmp_path, local_target(tmp_path))
    configure(s, retention={"keep_last": 1}, schedule={"verify": "30 3 * * *"})
    generate(s.volume, users=5, seed=4)
    ids = [backup(s, {}), backup(s, {}), backup(s, {})]
    _verification(s, ids[0], ok=True, when=datetime.now(UTC) - timedelta(hours=20))
    result = prune(s)
    assert result["kept"] == [ids[0], ids[2]] and result["removed"] == [ids[1]]
    assert result["reasons"][ids[0]] == ["newest verified"]


def test_policy_keeping_nothing_is_refused(tmp_path: Path) -> None:
    s = make_setup(tmp_path, local_target(tmp_path))
    configure(s, retention={"keep_last": 0})
    generate(s.volume, users=3, seed=4)
    backup(s, {})
    run = cli(s.config_path, "prune")
    assert run.code == 6 and "retention.keep_last" in run.err
    assert len(snapshot_ids(s.repo())) == 1


# --- kill -9 -------------------------------------------------------------------------------------


def _kill_at(s: Setup, step: str) -> None:
    """Run ``wicked-dr prune`` as a process, and SIGKILL it once it reports reaching
    ``step`` (it blocks there: no race with the kill)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), FAILPOINT_ENV: step}
    proc = subprocess.Popen(cli_command(s.config_path, "prune"), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO_ROOT)
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if f"prune failpoint {step}" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        code = proc.wait(timeout=30)
    assert code == -signal.SIGKILL, "".join(seen)


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_mid_prune_never_loses_a_kept_snapshot(tmp_path: Path, step: str) -> None:
    s = make_setup(tmp_path, local_target(tmp_path))
    configure(s, max_shrink_percent=90)
    ids, copies = story(s)
    _kill_at(s, step)
    assert set(ids[2:]) <= set(snapshot_ids(s.repo()))
    assert_restorable(s, copies, [i for i in ids if i in snapshot_ids(s.repo())])
    result = prune(s)  # takes over the dead holder's lock, finishes the job
    assert snapshot_ids(s.repo()) == ids[2:] == result["kept"]
    assert_restorable(s, copies, ids[2:])
    check = json.loads(cli(s.config_path, "check", "--json").out)
    assert check["warnings"] == []
