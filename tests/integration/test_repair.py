"""``wicked-dr repair index|packs|snapshots`` (issue 11, point 3), on real local repositories.

The story of a damaged pack: check --read-data records it; ``repair packs`` drops it and
lists the files each snapshot loses; the next backup stores again what the volume holds;
``repair snapshots --forget`` removes the snapshots that stay incomplete, never an intact one.
``repair index`` rebuilds the index from the packs. Every repair has --dry-run (changes
nothing) and is crash-safe: a crash injected before each of its writes and deletes in turn
(``_CrashAt``; the process dies there as under kill -9, no code of ours runs after) leaves
every intact snapshot restorable, and running the repair again finishes the job."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.repos import (
    RepoTarget,
    Setup,
    assert_same_tree,
    backdate,
    cli,
    flip_byte,
    make_setup,
)
from wicked_dr.backends.local import LocalBackend
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.engine.repair import confirmed_damaged, damaged_snapshots
from wicked_dr.repository.damage import damaged_pack_ids
from wicked_dr.repository.index import read_index
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration
LOST_USER = "users/lost.json"


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Setup:
    """Two snapshots: the first of a sample volume, the second after one more user file
    (``LOST_USER``), whose blob lands in a pack of its own: the pack the tests damage."""
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}),
                   encrypted=request.param)
    generate(s.volume, users=20, seed=5)
    backdate(s.volume)
    assert cli(s.config_path, "backup").code == 0
    (s.volume / LOST_USER).write_text('{"id": "lost", "name": "Lost User"}')
    backdate(s.volume)
    assert cli(s.config_path, "backup").code == 0
    return s


def _run(s: Setup, *args: str, code: int = 0) -> dict[str, Any]:
    run = cli(s.config_path, *args, "--json")
    assert run.code == code, run.err
    result: dict[str, Any] = json.loads(run.out)
    return result


def _packs_by_index(s: Setup) -> dict[str, list[str]]:
    repo = s.repo()
    return {i: [p.pack_id for p in read_index(repo, i)] for i in repo.list_ids("index")}


def _pack_of(s: Setup, path: str) -> str:
    """The pack holding the blob of file ``path`` in the newest snapshot."""
    repo = s.repo()
    snapshot = load_snapshot(repo, snapshot_ids(repo)[-1])
    blob = next(e.blobs[0] for e in iter_entries(repo, snapshot) if e.path == path)
    return next(p.pack_id for i in repo.list_ids("index") for p in read_index(repo, i)
                if blob in p.blob_ids)


def _fingerprint(root: Path) -> dict[str, str]:
    """Every object of the repository but locks, by content: a dry run must not change it."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not {"locks", ".locks"} & set(p.parts)}


def _damaged_and_recorded(s: Setup) -> str:
    pack = _pack_of(s, LOST_USER)
    flip_byte(s, object_name("data", pack))
    assert cli(s.config_path, "check", "--read-data").code == 3
    assert damaged_pack_ids(s.repo()) == [pack]
    return pack


def test_repair_packs_then_backup_then_forget_the_incomplete_snapshot(setup: Setup) -> None:
    """The whole way back, each step's report checked, ending with check --read-data at 0."""
    pack = _damaged_and_recorded(setup)
    before = _fingerprint(setup.tmp / "repo")
    dry = _run(setup, "repair", "packs", "--dry-run")
    assert dry["packs"] == [pack] and dry["dry_run"]
    newest = snapshot_ids(setup.repo())[-1]
    assert [(r["snapshot"], r["files"]) for r in dry["snapshots_losing_data"]] == \
        [(newest, [LOST_USER])]
    assert _fingerprint(setup.tmp / "repo") == before
    done = _run(setup, "repair", "packs")
    assert done["packs"] == [pack] and not any(pack in p for p in _packs_by_index(setup).values())
    assert not (setup.tmp / "repo" / object_name("data", pack)).exists()
    assert damaged_pack_ids(setup.repo()) == []
    # The volume lost the file too: the next backup cannot store it again.
    (setup.volume / LOST_USER).unlink()
    backdate(setup.volume)
    assert cli(setup.config_path, "backup").code == 0
    listed = _run(setup, "repair", "snapshots")
    assert [r["snapshot"] for r in listed["damaged"]] == [newest] and not listed["forgotten"]
    ids_before = snapshot_ids(setup.repo())
    _run(setup, "repair", "snapshots", "--forget", "--dry-run")
    assert snapshot_ids(setup.repo()) == ids_before
    forgot = _run(setup, "repair", "snapshots", "--forget")
    assert forgot["forgotten"]
    assert snapshot_ids(setup.repo()) == [i for i in ids_before if i != newest]
    assert cli(setup.config_path, "check", "--read-data").code == 0
    run = cli(setup.config_path, "restore", "latest", "--target", str(setup.tmp / "out"))
    assert run.code == 0, run.err
    assert_same_tree(setup.volume, setup.tmp / "out")


def test_the_next_backup_makes_snapshots_whole_again_when_the_volume_still_has_the_data(
        setup: Setup) -> None:
    """Blobs are content-addressed: once the backup stored the file again, the snapshot that
    lost it with the dropped pack is whole again, and repair snapshots lists nothing."""
    _damaged_and_recorded(setup)
    _run(setup, "repair", "packs")
    assert cli(setup.config_path, "check").code == 3  # the newest snapshot lost a blob
    assert cli(setup.config_path, "backup").code == 0
    assert _run(setup, "repair", "snapshots")["damaged"] == []
    assert cli(setup.config_path, "check", "--read-data").code == 0


def test_repair_packs_never_drops_an_intact_pack(setup: Setup) -> None:
    """Naming an intact pack is refused (exit 6); a forged record of an intact pack is
    removed, not acted on; and with nothing damaged there is nothing to do."""
    pack = _pack_of(setup, LOST_USER)
    run = cli(setup.config_path, "repair", "packs", pack)
    assert run.code == 6 and "reads intact" in run.err
    from wicked_dr.repository.damage import DamageRecord, save_damage

    save_damage(setup.repo(), DamageRecord.now(pack, "forger", "not true"))
    result = _run(setup, "repair", "packs")
    assert result["packs"] == [] and result["records_cleared"] == [pack]
    assert damaged_pack_ids(setup.repo()) == []
    assert (setup.tmp / "repo" / object_name("data", pack)).exists()
    assert _run(setup, "repair", "snapshots")["damaged"] == []


def test_repair_index_rebuilds_lost_and_damaged_index_objects(setup: Setup) -> None:
    """Every index object deleted but one, which is damaged: repair index reads the packs no
    readable index lists, writes the index anew, and everything restores again."""
    ids = list(_packs_by_index(setup))
    for index_id in ids[1:]:
        (setup.tmp / "repo" / object_name("index", index_id)).unlink()
    damaged = setup.tmp / "repo" / object_name("index", ids[0])
    damaged.write_bytes(damaged.read_bytes()[:-7])
    assert cli(setup.config_path, "check").code == 3
    before = _fingerprint(setup.tmp / "repo")
    dry = _run(setup, "repair", "index", "--dry-run")
    assert dry["changed"] and dry["index_objects_unreadable"] == [ids[0]]
    assert _fingerprint(setup.tmp / "repo") == before
    done = _run(setup, "repair", "index")
    assert done["packs_read"] == done["packs_indexed"] == len(done["packs_added"]) > 0
    assert cli(setup.config_path, "check", "--read-data").code == 0
    assert not _run(setup, "repair", "index")["changed"]
    shutil.rmtree(setup.state)
    run = cli(setup.config_path, "restore", "latest", "--target", str(setup.tmp / "out"))
    assert run.code == 0, run.err
    assert_same_tree(setup.volume, setup.tmp / "out")


def test_repair_index_leaves_out_a_missing_pack(setup: Setup) -> None:
    """A pack the index lists but the repository lacks is dropped from the index: the index
    describes what is stored (the snapshot that needed it is then listed by repair
    snapshots)."""
    pack = _pack_of(setup, LOST_USER)
    (setup.tmp / "repo" / object_name("data", pack)).unlink()
    result = _run(setup, "repair", "index")
    assert result["packs_dropped"] == [pack]
    assert not any(pack in p for p in _packs_by_index(setup).values())
    listed = _run(setup, "repair", "snapshots")
    assert [r["snapshot"] for r in listed["damaged"]] == [snapshot_ids(setup.repo())[-1]]


# --- crash safety ----------------------------------------------------------------------------


class _Crash(BaseException):
    """The process died here (nothing of ours runs after it: it is no Exception)."""


class _CrashAt:
    """Counts the repository writes and deletes (locks aside) and crashes before the n-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
        self.n = n
        self.count = 0
        for method in ("put", "put_file", "delete"):
            original = getattr(LocalBackend, method)
            monkeypatch.setattr(LocalBackend, method, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        def call(backend: LocalBackend, name: str, *args: Any, **kwargs: Any) -> Any:
            if not name.startswith("locks/"):
                self.count += 1
                if self.count == self.n:
                    raise _Crash(name)
            return original(backend, name, *args, **kwargs)

        return call


def _intact(s: Setup) -> set[str]:
    repo = s.repo()
    bad = {d.snapshot for d in damaged_snapshots(repo, unusable_packs=confirmed_damaged(repo))}
    return set(snapshot_ids(repo)) - bad


def _outcome(s: Setup) -> tuple[set[str], set[str], list[str], set[str]]:
    """What a repair leaves: snapshots, the intact ones, damage records, indexed packs."""
    indexed = {p for packs in _packs_by_index(s).values() for p in packs}
    return set(snapshot_ids(s.repo())), _intact(s), damaged_pack_ids(s.repo()), indexed


def _uninterrupted(s: Setup, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,
                   ) -> tuple[int, tuple[set[str], set[str], list[str], set[str]]]:
    """How many writes and deletes the repair makes, and what it leaves, run uninterrupted
    on the repository (the caller restores its copy afterwards)."""
    with monkeypatch.context() as patch:
        counter = _CrashAt(patch, 0)
        assert cli(s.config_path, *args).code == 0
    return counter.count, _outcome(s)


@pytest.mark.parametrize("repair", [("repair", "packs"), ("repair", "index", "--read-all-packs"),
                                    ("repair", "snapshots", "--forget")],
                         ids=["packs", "index", "snapshots"])
def test_a_repair_killed_anywhere_leaves_intact_snapshots_and_finishes_when_rerun(
        setup: Setup, monkeypatch: pytest.MonkeyPatch, repair: tuple[str, ...]) -> None:
    """Before each write or delete of the repair in turn: crash there; every snapshot that was
    intact stays intact, and running the repair again ends as an uninterrupted run does."""
    _damaged_and_recorded(setup)
    pristine = setup.tmp / "pristine"
    shutil.copytree(setup.tmp / "repo", pristine)
    intact = _intact(setup)
    assert intact
    total, expected = _uninterrupted(setup, repair, monkeypatch)
    assert total > 0
    for point in range(1, total + 1):
        shutil.rmtree(setup.tmp / "repo")
        shutil.copytree(pristine, setup.tmp / "repo")
        with monkeypatch.context() as patch:
            _CrashAt(patch, point)
            with pytest.raises(_Crash):
                cli(setup.config_path, *repair)
        assert intact <= _intact(setup), f"crash before mutation {point}"
        assert cli(setup.config_path, *repair).code == 0, f"rerun after crash {point}"
        assert _outcome(setup) == expected, f"crash before mutation {point}, then a rerun"
