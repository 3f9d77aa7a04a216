"""What changes between a backup's unlocked first read and wicked's lock is in the snapshot.

A backup reads the volume without wicked's ``global.lock``, then takes it and re-reads only
what changed since: the entries its inotify watch names, or (``volume.watch: false``) what
re-statting every file finds. Each kind of change is made at the one moment that tests
this, after the first read and before the lock (``tests/fixtures/before_lock.py``), so no
timing decides the test. The restored snapshot must equal the volume as it is afterwards
(nothing changes it once the lock is taken): content, modes and mtimes of files and
directories.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.before_lock import before_the_lock
from tests.fixtures.repos import (
    Setup,
    assert_same_tree,
    backdate,
    cli,
    local_target,
    make_setup,
)
from wicked_dr.actions.backup import BackupResult, run_backup
from wicked_dr.config import load_config
from wicked_dr.engine.catalog import load_snapshot
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration


def _first_user(volume: Path) -> Path:
    return sorted(p for p in (volume / "users").glob("*.json") if not p.name.startswith("_"))[0]


def _modify(volume: Path) -> None:
    path = _first_user(volume)
    doc = json.loads(path.read_text())
    doc["name"] = "changed between the first read and the lock"
    path.write_text(json.dumps(doc))


def _create(volume: Path) -> None:
    (volume / "users" / "zz-created-meanwhile.json").write_text('{"id": "zz"}')


def _delete(volume: Path) -> None:
    _first_user(volume).unlink()


def _chmod(volume: Path) -> None:
    os.chmod(_first_user(volume), 0o600)


def _rename_over(volume: Path) -> None:
    target = _first_user(volume)
    temporary = target.with_name("tmp-replacement")
    temporary.write_text('{"id": "replaced by rename"}')
    os.replace(temporary, target)


def _new_directory(volume: Path) -> None:
    (volume / "new-folder").mkdir()
    (volume / "new-folder" / "a.json").write_text("{}")


def _removed_directory(volume: Path) -> None:
    shutil.rmtree(volume / "webhooks")


CHANGES: dict[str, tuple[Callable[[Path], None], str]] = {
    # change: (how, what the locked phase must have done, with the watch)
    "modified": (_modify, "watch"),
    "created": (_create, "watch"),
    "deleted": (_delete, "watch"),
    "chmod": (_chmod, "watch"),
    "renamed-over": (_rename_over, "watch"),
    "new-directory": (_new_directory, "rescan"),
    "removed-directory": (_removed_directory, "rescan"),
}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = make_setup(tmp_path, local_target(tmp_path), quiesce_timeout_s=10)
    generate(s.volume, users=60, seed=11)
    backdate(s.volume)
    return s


def _backup(s: Setup) -> BackupResult:
    return run_backup(load_config(s.config_path))


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "restat"])
@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_between_first_read_and_lock_is_in_the_snapshot(
        setup: Setup, monkeypatch: pytest.MonkeyPatch, name: str, watch: bool) -> None:
    """The snapshot is the volume at the lock, whatever changed after the first read."""
    setup.write(watch=watch)
    _backup(setup)  # a parent: the first read then reuses its stat cache, as in production
    how, with_watch = CHANGES[name]
    with before_the_lock(monkeypatch, lambda: how(setup.volume)):
        result = _backup(setup)
    metadata = load_snapshot(setup.repo(), result.snapshot).source("volume").metadata
    expected = with_watch if with_watch == "rescan" or watch else "stat"
    assert metadata["recheck"] == expected
    if expected != "rescan":
        assert result.files_reread_under_lock >= (0 if name in ("deleted",) else 1)
    out = setup.tmp / "restored"
    run = cli(setup.config_path, "restore", result.snapshot, "--target", str(out))
    assert run.code == 0, run.err
    assert_same_tree(setup.volume, out)
    assert result.files == sum(1 for p in setup.volume.rglob("*") if p.is_file())
    run = cli(setup.config_path, "check", "--json")
    assert run.code == 0, run.err


def test_nothing_changed_reads_nothing_under_the_lock(setup: Setup) -> None:
    """An idle portal: the locked phase re-reads no file."""
    _backup(setup)
    result = _backup(setup)
    assert result.files_reread_under_lock == 0
    metadata = load_snapshot(setup.repo(), result.snapshot).source("volume").metadata
    assert metadata["recheck"] == "watch"
    assert metadata["reread_under_lock"] == 0


def test_a_volume_path_that_is_a_symlink_is_watched(setup: Setup,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """volume.path may be a symlink to the folder (the scan lists what it points to): the
    watch follows it too, and a change before the lock is seen by the watch."""
    link = setup.tmp / "dynamic-link"
    link.symlink_to(setup.volume)
    setup.write(path=str(link))
    _backup(setup)
    with before_the_lock(monkeypatch, lambda: _modify(setup.volume)):
        result = _backup(setup)
    metadata = load_snapshot(setup.repo(), result.snapshot).source("volume").metadata
    assert metadata["recheck"] == "watch"
    assert result.files_reread_under_lock == 1
    out = setup.tmp / "restored"
    assert cli(setup.config_path, "restore", result.snapshot, "--target", str(out)).code == 0
    assert_same_tree(setup.volume, out)
