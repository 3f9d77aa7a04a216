"""The corruption table of issue 11: one damaged or hostile object at a time, every object
kind, encrypted and not, with a warm and with an empty ``state_dir``.

Repositories are built once per test session (``built``: one per encryption variant, two
snapshots each, see tests/fixtures/corruption.py): ``old``, and ``new``, which adds files of
its own, so it has its own snapshot object, tree, pack and index object. Each case copies
the built repository (and, when warm, its ``state_dir``; else an empty one), applies one
corruption to one object, and runs the commands in process:

- ``restore new`` / ``restore old`` (``--target``): the exit code of the row; a failure is
  one error line naming the damaged object; a success restores exactly the volume as that
  snapshot saw it; a failure leaves no file with wrong content and nothing outside the
  target;
- ``check`` (and ``check --read-data`` where the row says): the exit code; a failure names
  the object;
- ``backup --json`` last (where the row says): its exit code, whether ``damage`` names the
  object, and that its snapshot restores the volume.

A row is ``kind-corruption``; ``Expect`` spells out its outcome. Exit codes are those of
wicked_dr/errors.py (0 ok, 3 integrity, 5 not found). No command may end in an internal error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.corruption import Built, Case, build, copy_case
from tests.fixtures.repos import Run, assert_same_tree, cli, craft_snapshot, error_lines
from wicked_dr.engine.catalog import load_snapshot
from wicked_dr.errors import ExitCode
from wicked_dr.holder import Holder
from wicked_dr.repository.crypto import FLAG_ZSTD
from wicked_dr.repository.index import index_document, read_index
from wicked_dr.repository.layout import MIB, Kind, object_name
from wicked_dr.repository.manifest import Entry, iter_entries
from wicked_dr.repository.repo import content_id

pytestmark = pytest.mark.integration

OK, INTEGRITY, NOT_FOUND = int(ExitCode.OK), int(ExitCode.INTEGRITY), int(ExitCode.NOT_FOUND)
# What a case's directory may hold: a restore writes nothing beside its target.
ALLOWED = {"repo", "state", "volume", "config.yaml", "out-new", "out-old", "out-latest"}
HEADER = 5  # magic and flags; the nonce or checksum follow (docs/format.md, section 3)


# --- the repositories, built once -------------------------------------------------------------


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Built]:
    """Per encryption variant (True: encrypted), a repository with two snapshots."""
    root = tmp_path_factory.mktemp("corruption")
    return {encrypted: build(root / ("encrypted" if encrypted else "plain"),
                             encrypted=encrypted) for encrypted in (False, True)}


# --- corruptions: each damages one object of a Case and says what must be named ---------------


@dataclass(frozen=True)
class Damage:
    """What a corruption did: the text naming the object (an id or 'config'), and the
    snapshot the row calls 'new' when the corruption crafted one."""

    names: str
    new: str | None = None


Corrupt = Callable[[Case, str], Damage]


def _target(case: Case, kind: str) -> tuple[Path, str]:
    """The object of ``kind`` a row damages: the new snapshot's own, the config, or a lock or
    verification planted for the row."""
    new = case.built.new
    if kind == "config":
        return case.repo_dir / "config", "config"
    if kind == "lock":
        return _plant_lock(case, expires=time.time() - 3600), _LOCK_ID
    if kind == "verification":
        repo = case.open()
        repo.save_json("verification", case.built.old.snapshot, {"ok": True})
        return case.path_of("verification", case.built.old.snapshot), case.built.old.snapshot
    object_id = {"pack": new.pack, "index": new.index, "tree": new.tree,
                 "snapshot": new.snapshot}[kind]
    return case.path_of(_KIND[kind], object_id), object_id


_KIND: dict[str, Kind] = {"pack": "data", "index": "index", "tree": "tree",
                          "snapshot": "snapshot"}
_LOCK_ID = "0badc0de0badc0de"


def _plant_lock(case: Case, *, expires: float | str, **doc: object) -> Path:
    """A lock of another host (exclusive), expired unless ``expires`` says otherwise."""
    holder = Holder("elsewhere", "boot", 4242, 1, "other")
    content = {"holder": holder.to_json(), "exclusive": True, "operation": "prune",
               "created": time.time() - 7200, "expires": expires, **doc}
    case.open().save_json("lock", _LOCK_ID, content)
    return case.path_of("lock", _LOCK_ID)


def flip_payload(case: Case, kind: str) -> Damage:
    """One byte in the middle of the payload (of the JSON for the config)."""
    path, names = _target(case, kind)
    data = bytearray(path.read_bytes())
    start = 0 if kind == "config" else HEADER + 32
    data[start + (len(data) - start) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return Damage(names)


def flip_flags(case: Case, kind: str) -> Damage:
    """The zstd bit of the flags byte: what the AES-GCM tag does not cover (the associated
    data is repository, type and name), the checksum does."""
    path, names = _target(case, kind)
    data = bytearray(path.read_bytes())
    data[4] ^= FLAG_ZSTD
    path.write_bytes(bytes(data))
    return Damage(names)


def truncate(case: Case, kind: str) -> Damage:
    path, names = _target(case, kind)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Damage(names)


def zero_length(case: Case, kind: str) -> Damage:
    path, names = _target(case, kind)
    path.write_bytes(b"")
    return Damage(names)


def delete(case: Case, kind: str) -> Damage:
    path, names = _target(case, kind)
    path.unlink()
    return Damage(names)


def replace(case: Case, kind: str) -> Damage:
    """The old snapshot's object of the same kind under the new one's name (both stay
    sound objects); for the config, the config of another repository (another id)."""
    path, names = _target(case, kind)
    if kind == "config":
        doc = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**doc, "id": secrets.token_hex(16)}), encoding="utf-8")
        return Damage(names)
    old = case.built.old
    source = {"pack": old.pack, "index": old.index, "tree": old.tree,
              "snapshot": old.snapshot}[kind]
    shutil.copyfile(case.path_of(_KIND[kind], source), path)
    return Damage(names)


def garbage(case: Case, kind: str) -> Damage:
    """Random bytes of the object's size."""
    path, names = _target(case, kind)
    path.write_bytes(secrets.token_bytes(max(64, path.stat().st_size)))
    return Damage(names)


def stale(case: Case, kind: str) -> Damage:
    """An expired lock of another host: the next acquirer takes it over."""
    _, names = _target(case, kind)
    return Damage(names)


def lock_without_fields(case: Case, kind: str) -> Damage:
    """A sound envelope whose JSON lacks every lock field."""
    case.open().save_json("lock", _LOCK_ID, {})
    return Damage(_LOCK_ID)


def lock_expires_not_a_number(case: Case, kind: str) -> Damage:
    """A sound envelope of a lock whose ``expires`` is text."""
    _plant_lock(case, expires="never")
    return Damage(_LOCK_ID)


def index_claims_2gib(case: Case, kind: str) -> Damage:
    """The new index object rewritten (sound, under its content id) so the new pack's
    raw_size claims 2 GiB: a decompression bomb the reader must refuse unread."""
    repo = case.open()
    [record] = read_index(repo, case.built.new.index)
    plaintext = index_document([dataclasses.replace(record, raw_size=2048 * MIB)])
    (case.path_of("index", case.built.new.index)).unlink()
    repo.save("index", content_id(plaintext), plaintext)
    return Damage(record.pack_id)


def _crafted(case: Case, change: Callable[[Entry], Entry]) -> Damage:
    """A snapshot like the new one whose entry for apps/new0.json is ``change``d."""
    repo = case.open()
    base = load_snapshot(repo, case.built.new.snapshot)
    entries = [change(e) if e.path == "apps/new0.json" else e
               for e in iter_entries(repo, base)]
    crafted = craft_snapshot(repo, base, entries)
    return Damage(crafted, new=crafted)


def entry_escapes(case: Case, kind: str) -> Damage:
    return _crafted(case, lambda e: dataclasses.replace(e, path="../escape.json"))


def entry_size_short(case: Case, kind: str) -> Damage:
    return _crafted(case, lambda e: dataclasses.replace(e, size=e.size // 2))


def entry_setuid(case: Case, kind: str) -> Damage:
    return _crafted(case, lambda e: dataclasses.replace(e, mode=0o4755))


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """Exit codes of a row (None: not run), and whether backup's ``damage`` names the
    object. ``restore_new_same``: a successful restore of new equals the volume."""

    restore_new: int
    restore_old: int = OK
    check: int | None = INTEGRITY
    check_read_data: int | None = None
    backup: int | None = None
    backup_damage: bool = False
    restore_new_same: bool = True


@dataclass(frozen=True)
class Row:
    kind: str
    corrupt: Corrupt
    expect: Expect
    warm: Expect | None = None  # when a warm state_dir changes the outcome

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.corrupt.__name__.replace('_', '-')}"


FLIPPED_PACK = Expect(restore_new=INTEGRITY, check=OK, check_read_data=INTEGRITY)
DAMAGED_PACK = Expect(restore_new=INTEGRITY, check=INTEGRITY, check_read_data=INTEGRITY)
DAMAGED_INDEX = Expect(restore_new=INTEGRITY, backup=OK, backup_damage=True)
DAMAGED_TREE = Expect(restore_new=INTEGRITY, backup=OK, backup_damage=True)
DAMAGED_SNAPSHOT = Expect(restore_new=INTEGRITY, backup=OK, backup_damage=True)
DAMAGED_CONFIG = Expect(restore_new=INTEGRITY, restore_old=INTEGRITY, backup=INTEGRITY)
HARMLESS = Expect(restore_new=OK, check=OK, backup=OK)

ROWS = [
    *(Row("pack", c, FLIPPED_PACK) for c in (flip_payload, flip_flags)),
    *(Row("pack", c, DAMAGED_PACK) for c in (truncate, zero_length, replace, delete)),
    Row("pack", index_claims_2gib, Expect(restore_new=INTEGRITY, check_read_data=INTEGRITY)),
    *(Row("index", c, DAMAGED_INDEX) for c in (flip_payload, flip_flags, truncate,
                                                zero_length, replace, delete)),
    *(Row("tree", c, DAMAGED_TREE) for c in (flip_payload, flip_flags, truncate,
                                              zero_length, replace, delete)),
    *(Row("snapshot", c, DAMAGED_SNAPSHOT) for c in (flip_payload, flip_flags, truncate,
                                                      zero_length, replace)),
    Row("snapshot", delete, Expect(restore_new=NOT_FOUND, check=OK, backup=OK)),
    Row("snapshot", entry_escapes, Expect(restore_new=INTEGRITY)),
    Row("snapshot", entry_size_short, Expect(restore_new=INTEGRITY)),
    Row("snapshot", entry_setuid, Expect(restore_new=OK, restore_new_same=False)),
    *(Row("config", c, DAMAGED_CONFIG) for c in (flip_payload, truncate, zero_length,
                                                  replace)),
    Row("config", delete, dataclasses.replace(DAMAGED_CONFIG, restore_new=NOT_FOUND,
                                              restore_old=NOT_FOUND, check=NOT_FOUND)),
    *(Row("lock", c, HARMLESS) for c in (stale, flip_payload, flip_flags, truncate,
                                         zero_length, garbage, lock_without_fields,
                                         lock_expires_not_a_number)),
    *(Row("verification", c, HARMLESS) for c in (flip_payload, truncate, zero_length,
                                                 garbage)),
]


def _params() -> list[object]:
    return [pytest.param(row, encrypted, warm,
                         id=f"{row.id}-{'encrypted' if encrypted else 'plain'}-"
                            f"{'warm' if warm else 'empty'}")
            for row in ROWS for encrypted in (False, True) for warm in (True, False)]


# --- assertions -----------------------------------------------------------------------------


def _clean(run: Run) -> Run:
    assert "internal error" not in run.err and "Traceback" not in run.err, run.err
    return run


def _names(run: Run, code: int, names: str) -> None:
    """A failure says which object: one error line (restore) or the report (check)."""
    if code == OK:
        return
    text = run.out + run.err
    assert names in text, f"{names} not named:\n{text[-2000:]}"


def _restore(case: Case, snapshot: str, out: str, expect: int, names: str,
             reference: Path, same: bool) -> None:
    target = case.root / out
    run = _clean(cli(case.config, "restore", snapshot, "--target", str(target)))
    assert run.code == expect, run.err
    if expect == OK:
        if same:
            assert_same_tree(reference, target)
        return
    [line] = error_lines(run)
    assert names in line, line
    _no_wrong_file(target, reference)


def _no_wrong_file(target: Path, reference: Path) -> None:
    """Whatever a failed restore left under ``target`` is what the volume held there."""
    for dirpath, _, filenames in os.walk(target):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), target)
            assert (reference / rel).read_bytes() == (target / rel).read_bytes(), rel


# --- the test -------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "encrypted", "warm"), _params())
def test_corruption(built: dict[bool, Built], tmp_path: Path, row: Row, encrypted: bool,
                    warm: bool) -> None:
    """One object damaged as the row says: each command ends as ``Expect`` says, names the
    object when it fails, and never writes a wrong file nor outside its target."""
    b = built[encrypted]
    case = copy_case(b, tmp_path / "case", warm=warm)
    damage = row.corrupt(case, row.kind)
    expect = row.warm if warm and row.warm else row.expect
    new = damage.new or b.new.snapshot

    _restore(case, new, "out-new", expect.restore_new, damage.names, b.root / "at-new",
             expect.restore_new_same)
    _restore(case, b.old.snapshot, "out-old", expect.restore_old, damage.names,
             b.root / "at-old", True)
    if expect.check is not None:
        run = _clean(cli(case.config, "--json", "check"))
        assert run.code == expect.check, run.out + run.err
        _names(run, expect.check, damage.names)
    if expect.check_read_data is not None:
        run = _clean(cli(case.config, "--json", "check", "--read-data"))
        assert run.code == expect.check_read_data, run.out + run.err
        _names(run, expect.check_read_data, damage.names)
    if expect.backup is not None:
        run = _clean(cli(case.config, "backup", "--json"))
        assert run.code == expect.backup, run.out + run.err
        if expect.backup == OK:
            damaged = [d for d in json.loads(run.out)["damage"] if damage.names in d]
            assert bool(damaged) == expect.backup_damage, run.out
            _restore(case, "latest", "out-latest", OK, damage.names, case.root / "volume",
                     True)
    assert set(os.listdir(case.root)) <= ALLOWED, "a file outside every target"
