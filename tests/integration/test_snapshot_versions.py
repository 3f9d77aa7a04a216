"""Every snapshot version written so far stays readable: committed repositories made by the
wicked-dr of each version (tests/fixtures/snapshot_versions/README.md) are listed, restored
byte for byte, exported and checked by today's code."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.repos import cli
from wicked_dr.backends import LocalBackend
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.repository.crypto import load_key
from wicked_dr.repository.repo import Repository

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "snapshot_versions"
VERSIONS = {"v1": 1, "v2": 2}


@pytest.fixture(params=sorted(VERSIONS))
def old(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """A copy of one version's repository and a config naming it."""
    name = str(request.param)
    shutil.copytree(FIXTURES / name / "repo", tmp_path / "repo")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "repository": {"url": str(tmp_path / "repo"),
                       "encryption_key_file": str(FIXTURES / name / "key")},
        "log": {"level": "warning", "format": "json"}}))
    return name, config


def _expected(name: str) -> dict[str, list[Any]]:
    doc: dict[str, list[Any]] = json.loads((FIXTURES / name / "expected.json").read_text())
    return doc


def _state(root: Path) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            path = os.path.join(dirpath, entry)
            st = os.lstat(path)
            mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
            rel = os.path.relpath(path, root)
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ["dir", mode, mtime]
            else:
                found[rel] = ["file", mode, mtime,
                              hashlib.sha256(Path(path).read_bytes()).hexdigest()]
    return found


def test_load_snapshot_old_version_parsed_with_its_version(old: tuple[str, Path]) -> None:
    """The typed snapshot of each committed repository carries the version it was written
    with and its file tree."""
    name, config = old
    repo = Repository.open(LocalBackend(config.parent / "repo"), load_key(FIXTURES / name / "key"))
    snapshot = load_snapshot(repo, snapshot_ids(repo)[0])
    assert snapshot.version == VERSIONS[name]
    assert snapshot.trees and snapshot.source("volume").trees == snapshot.trees
    assert snapshot.summary.files == sum(1 for v in _expected(name).values() if v[0] == "file")


def test_restore_old_version_byte_for_byte(old: tuple[str, Path], tmp_path: Path) -> None:
    """restore --target brings every entry back with its content, mode and mtime."""
    name, config = old
    run = cli(config, "restore", "latest", "--target", str(tmp_path / "out"), "--json")
    assert run.code == 0, run.err
    assert _state(tmp_path / "out") == _expected(name)


def test_export_and_check_old_version(old: tuple[str, Path], tmp_path: Path) -> None:
    """export writes every entry as tar, directories before their contents; check --read-data
    finds no problem; snapshots lists the one snapshot with its sources."""
    name, config = old
    run = cli(config, "export", "latest", "--tar", str(tmp_path / "out.tar"))
    assert run.code == 0, run.err
    with tarfile.open(tmp_path / "out.tar") as tar:
        members = [m.name for m in tar.getmembers()]
    assert sorted(members) == sorted(_expected(name))
    for index, member in enumerate(members):
        parent = member.rpartition("/")[0]
        assert not parent or parent in members[:index], member
    run = cli(config, "check", "--read-data", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["problems"] == []
    rows = json.loads(cli(config, "snapshots", "--json").out)
    assert [row["sources"] for row in rows] == [["volume"]]
