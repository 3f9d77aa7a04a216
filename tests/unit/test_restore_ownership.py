"""Who owns what a restore writes, and with which mode bits: as root, the configured owner
(restore.owner_uid/owner_gid, default 888/888, wicked's node user) and never a setuid,
setgid or sticky bit, whatever the snapshot records; as another user, that user's files."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from tests.fixtures.minimal import repository_of
from tests.fixtures.repos import craft_snapshot
from tests.fixtures.services import require_root
from wicked_dr.cli import main
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.repository.manifest import Entry, iter_entries, sort_key


@pytest.fixture(autouse=True)
def _root() -> None:
    """Ownership is given away as root only: these tests need it (CI runs as root)."""
    require_root("giving files away with chown")


@pytest.fixture()
def hostile(backed_up: Path) -> tuple[Path, str]:
    """A backed-up minimal volume and a crafted snapshot of it whose entries are root's with
    setuid, setgid and sticky bits: users/u1.json 0o6755, users/ 0o7755 and a symlink
    users/link, all uid 0 gid 0. Returns (config, snapshot id)."""
    config = backed_up
    repo = repository_of(config)
    base = load_snapshot(repo, snapshot_ids(repo)[-1])
    modes = {"users/u1.json": 0o6755, "users": 0o7755}
    entries = [dataclasses.replace(e, uid=0, gid=0, mode=modes.get(e.path, e.mode))
               for e in iter_entries(repo, base)]
    link = Entry("users/link", "symlink", 0o777, 0, 0, entries[0].mtime_ns, target="u1.json")
    entries = sorted([*entries, link], key=lambda e: sort_key(e.path))
    return config, craft_snapshot(repo, base, entries)


def _restore(config: Path, snapshot_id: str, capsys: pytest.CaptureFixture[str]) -> Path:
    out = config.parent / "out"
    code = main(["--config", str(config), "restore", snapshot_id, "--target", str(out)])
    assert code == 0, capsys.readouterr().err
    return out


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_restore_tree_as_root_configured_default_owner_no_setuid_bits(
        hostile: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """As root, restored files, directories and symlinks belong to 888:888 (the default
    restore.owner_uid/gid), not to the snapshot's uid 0, and modes lose setuid, setgid and
    sticky bits (mode & 0o777)."""
    config, snapshot_id = hostile
    out = _restore(config, snapshot_id, capsys)
    assert _owner_and_mode(out / "users" / "u1.json") == (888, 888, 0o755)
    assert _owner_and_mode(out / "users") == (888, 888, 0o755)
    assert _owner_and_mode(out / "meta.json")[:2] == (888, 888)
    assert os.lstat(out / "users" / "link")[stat.ST_UID:stat.ST_GID + 1] == (888, 888)
    assert os.readlink(out / "users" / "link") == "u1.json"


def test_restore_tree_configured_owner_uid_gid_honoured(
        hostile: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """``restore.owner_uid: 1234`` and ``owner_gid: 4321`` are who owns the restored tree."""
    config, snapshot_id = hostile
    with config.open("a", encoding="utf-8") as f:
        f.write("restore:\n  owner_uid: 1234\n  owner_gid: 4321\n")
    out = _restore(config, snapshot_id, capsys)
    for rel in ("users/u1.json", "users", "meta.json", "users/link"):
        assert _owner_and_mode(out / rel)[:2] == (1234, 4321), rel
    assert _owner_and_mode(out / "users" / "u1.json")[2] == 0o755


def test_restore_tree_not_root_owner_left_restoring_user_no_setuid_bits(
        hostile: tuple[Path, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not running as root, nothing is given away: the files stay the restoring user's, and
    still without setuid, setgid or sticky bits."""
    config, snapshot_id = hostile
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = _restore(config, snapshot_id, capsys)
    me = (os.getuid(), os.getgid())
    assert _owner_and_mode(out / "users" / "u1.json") == (*me, 0o755)
    assert _owner_and_mode(out / "users") == (*me, 0o755)
