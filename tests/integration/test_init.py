"""Creating a repository is explicit and safe: ``init`` (and ``backup``) create one only where
the location holds no object at all, a lost ``config`` is an integrity problem, a wiped
location that this machine remembers is refused, and a bucket is never created unasked.
Local directory and S3 (moto's server over HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.repos import (
    BACKENDS,
    RepoTarget,
    Setup,
    cli,
    error_lines,
    make_setup,
    repo_target,
    s3_target,
)
from tests.fixtures.s3 import S3Server, s3_test_client
from wicked_dr.errors import ExitCode
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    """An encrypted repository target (not created yet) and a small sample volume."""
    s = make_setup(tmp_path, repo_target(request, tmp_path), encrypted=True)
    generate(s.volume, users=5, seed=1)
    return s


def _objects(s: Setup) -> set[str]:
    return {info.name for info in s.target.backend().list("")}


def _json(run_out: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(run_out)
    return doc


def test_init_empty_location_creates_then_leaves_existing(setup: Setup) -> None:
    """init creates an encrypted repository once; a second init reports it and changes nothing."""
    first = cli(setup.config_path, "init", "--json")
    assert first.code == 0, first.err
    created = _json(first.out)
    assert created["created"] is True and created["encrypted"] is True
    objects = _objects(setup)
    again = cli(setup.config_path, "init", "--json")
    assert again.code == 0, again.err
    assert _json(again.out) == {**created, "created": False}
    assert _objects(setup) == objects


def test_backup_lost_config_is_integrity_error_and_writes_nothing(setup: Setup) -> None:
    """With the config object gone, backup exits 3 naming it and never writes a new repository
    over the old objects; check and init say the same."""
    assert cli(setup.config_path, "backup").code == 0
    setup.target.backend().delete("config")
    before = _objects(setup)
    for args in (["backup"], ["check"], ["init"], ["restore", "latest", "--target",
                                                   str(setup.tmp / "out")]):
        run = cli(setup.config_path, *args)
        assert run.code == ExitCode.INTEGRITY, (args, run.err)
        assert len(error_lines(run)) == 1 and "no readable 'config'" in run.err, run.err
    assert _objects(setup) == before


def test_backup_wiped_location_known_to_state_dir_refused(setup: Setup) -> None:
    """A location emptied after backups, while state_dir keeps that repository's cache, is
    refused (exit 6, nothing written); 'init' is the deliberate way to start again."""
    assert cli(setup.config_path, "backup").code == 0
    backend = setup.target.backend()
    for name in _objects(setup):
        backend.delete(name)
    run = cli(setup.config_path, "backup")
    assert run.code == ExitCode.REFUSED, run.err
    assert "state_dir" in run.err and "wicked-dr init" in run.err
    assert _objects(setup) == set()
    assert cli(setup.config_path, "init").code == 0
    assert cli(setup.config_path, "backup").code == 0


def test_check_empty_location_not_found_names_init(setup: Setup) -> None:
    """check on a location without a repository exits 5 and names 'wicked-dr init'."""
    run = cli(setup.config_path, "check")
    assert run.code == ExitCode.NOT_FOUND, run.err
    assert "wicked-dr init" in run.err


def test_backup_missing_local_directory_creates_repository(tmp_path: Path) -> None:
    """The embedded default keeps working: a local repository directory is made on demand."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "a" / "repo")}))
    generate(s.volume, users=2, seed=1)
    run = cli(s.config_path, "backup")
    assert run.code == 0, run.err
    assert (tmp_path / "a" / "repo" / "config").is_file()


def test_backup_missing_bucket_not_created(tmp_path: Path, s3_server: S3Server) -> None:
    """backup and init never create a missing bucket (exit 5 naming --create-bucket);
    init --create-bucket does."""
    bucket = "wdr-test-missing-bucket"
    s = make_setup(tmp_path, s3_target(s3_server.endpoint_url, bucket))
    generate(s.volume, users=2, seed=1)
    client = s3_test_client(s3_server.endpoint_url)
    for args in (["backup"], ["init"]):
        run = cli(s.config_path, *args)
        assert run.code == ExitCode.NOT_FOUND, run.err
        assert "--create-bucket" in run.err
    assert bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert cli(s.config_path, "init", "--create-bucket").code == 0
    assert cli(s.config_path, "backup").code == 0
    client.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": o["Key"]} for o in client.list_objects_v2(Bucket=bucket)["Contents"]]})
    client.delete_bucket(Bucket=bucket)


def test_open_altered_config_same_key_id_is_integrity_error(setup: Setup) -> None:
    """A config whose repository id was changed names the altered config, not 'wrong key:
    needs key id X, configured X'."""
    assert cli(setup.config_path, "init").code == 0
    backend = setup.target.backend()
    doc = json.loads(backend.get("config"))
    doc["id"] = "0" * 32
    backend.put("config", json.dumps(doc).encode())
    run = cli(setup.config_path, "snapshots")
    assert run.code == ExitCode.INTEGRITY, run.err
    assert "altered or replaced" in run.err
    key_id = str(doc["encryption"]["key_id"])
    assert run.err.count(key_id) == 1
