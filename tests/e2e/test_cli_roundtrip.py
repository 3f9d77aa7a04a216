"""The wicked-dr command end to end, as a subprocess: backup, snapshots, restore by prefix and
--before, check, export to stdout; on the local backend and on S3 (moto's server)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.repos import (
    BACKENDS,
    REPO_ROOT,
    RepoTarget,
    assert_same_tree,
    backdate,
    cli_command,
    cli_process,
    make_setup,
    repo_target,
    wait_past_second_of,
)
from wicked_dr.engine.catalog import snapshot_time
from wicked_dr.testing.sample_volume import generate, mutate

pytestmark = pytest.mark.e2e


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> RepoTarget:
    return repo_target(request, tmp_path)


def test_cli_backup_snapshots_restore_check_export_round_trip(tmp_path: Path,
                                                              target: RepoTarget) -> None:
    """Two backups; snapshots --json lists both; restore by id prefix, by --before and latest
    give the right trees; check --read-data is clean; export - is a tar of the snapshot."""
    s = make_setup(tmp_path, target, encrypted=True)
    generate(s.volume, users=200, seed=31)
    backdate(s.volume)
    run = cli_process(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    first = json.loads(run.out)
    assert {"snapshot", "files", "bytes_read", "bytes_new", "duration_s"} <= set(first)
    assert isinstance(first["duration_s"], float) and first["files"] > 900
    first_tree = tmp_path / "first"
    subprocess.run(["cp", "-a", str(s.volume), str(first_tree)], check=True, timeout=60)
    wait_past_second_of(first["snapshot"])
    mutate(s.volume, 0.02, seed=1)
    run = cli_process(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    second = json.loads(run.out)

    run = cli_process(s.config_path, "snapshots", "--json")
    assert run.code == 0, run.err
    rows = json.loads(run.out)
    assert [r["id"] for r in rows] == [first["snapshot"], second["snapshot"]]
    assert [r["files"] for r in rows] == [first["files"], second["files"]]

    prefix = first["snapshot"][:18]
    run = cli_process(s.config_path, "restore", prefix, "--target", str(tmp_path / "by-prefix"))
    assert run.code == 0, run.err
    assert_same_tree(first_tree, tmp_path / "by-prefix")

    cutoff = snapshot_time(second["snapshot"])
    run = cli_process(s.config_path, "restore", "latest", "--before", cutoff.isoformat(),
                      "--target", str(tmp_path / "before"), "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["snapshot"] == first["snapshot"]
    assert_same_tree(first_tree, tmp_path / "before")

    run = cli_process(s.config_path, "restore", "latest", "--target", str(tmp_path / "latest"))
    assert run.code == 0, run.err
    assert_same_tree(s.volume, tmp_path / "latest")

    run = cli_process(s.config_path, "check", "--read-data", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["snapshots"] == 2

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    export = subprocess.run(cli_command(s.config_path, "export", second["snapshot"], "--tar", "-"),
                            capture_output=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert export.returncode == 0, export.stderr.decode()[-2000:]
    out = tmp_path / "exported"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", str(out)], input=export.stdout, check=True, timeout=60)
    assert_same_tree(s.volume, out, mtime_resolution_ns=1_000_000)


def test_cli_restore_unknown_snapshot_exit_5_and_no_mode_exit_2(tmp_path: Path) -> None:
    """An unknown snapshot prefix exits 5; restore without a mode is a usage error (2)."""
    s = make_setup(tmp_path, repo_target_local(tmp_path))
    generate(s.volume, users=5, seed=1)
    assert cli_process(s.config_path, "backup").code == 0
    run = cli_process(s.config_path, "restore", "19990101", "--target", str(tmp_path / "o"))
    assert run.code == 5, run.err
    assert not (tmp_path / "o").exists()
    run = cli_process(s.config_path, "restore", "latest")
    assert run.code == 2, run.err
    run = cli_process(s.config_path, "restore", "latest", "--before", "2000-01-01T00:00",
                      "--target", str(tmp_path / "o"))
    assert run.code == 5, run.err


def repo_target_local(tmp_path: Path) -> RepoTarget:
    return RepoTarget("local", {"url": str(tmp_path / "repo")})
