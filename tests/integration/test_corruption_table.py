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

A row is ``kind-corruption``; ``Expect`` spells out its outcome (``Row.warm`` when a warm
state_dir changes it). Each row runs in four variants (plain/encrypted x warm/empty) and in
two tests: ``test_corruption_restore_and_check`` (restores and check) and
``test_corruption_backup`` (the backup, on its own copy, for rows that run one). A known bug
is a strict xfail on the half it breaks, its reason in the row. Exit codes are those of
wicked_dr/errors.py (0 ok, 3 integrity, 5 not found). No command may end in an internal error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import stat
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
from wicked_dr.repository.layout import MIB, Kind
from wicked_dr.repository.manifest import Entry, iter_entries
from wicked_dr.repository.repo import content_id
from wicked_dr.repository.verification import (
    ProbeResult,
    VerificationRecord,
    save_verification,
)

pytestmark = pytest.mark.integration

OK, INTEGRITY, NOT_FOUND = int(ExitCode.OK), int(ExitCode.INTEGRITY), int(ExitCode.NOT_FOUND)
# What a case's directory may hold: a restore writes nothing beside its target.
ALLOWED = {"repo", "state", "volume", "config.yaml", "out-new", "out-old", "out-latest",
           "out-verified"}
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
        save_verification(repo, VerificationRecord(
            case.built.old.snapshot, "2026-11-30T00:00:00+00:00",
            (ProbeResult("volume", duration_s=1.0),), 1.0, "test"))
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
    """Exit codes of a row (None: not run) and what they must show.

    ``restore_new_same``: a successful restore of new equals the volume (not for a crafted
    snapshot). ``restore_names``, ``check_names``: what restore's error line and check's
    report name when it is not the damaged object itself. ``backup_damage``: backup's
    ``damage`` names the object. ``latest_verified``: ``restore latest-verified`` (the old
    snapshot, verified by its passing verification record)."""

    restore_new: int
    restore_old: int = OK
    check: int = INTEGRITY
    check_read_data: int | None = None
    backup: int | None = None
    backup_damage: bool = False
    restore_new_same: bool = True
    restore_names: str | None = None
    check_names: str | None = None
    latest_verified: int | None = None


@dataclass(frozen=True)
class Row:
    """One object kind, one corruption; ``warm`` overrides ``expect`` with a warm
    state_dir; ``backup_bug`` marks the backup half of the row xfail (a known bug)."""

    kind: str
    corrupt: Corrupt
    expect: Expect
    warm: Expect | None = None
    backup_bug: str | None = None
    bug_when_plain: str | None = None  # the read half fails, unencrypted only
    backup_bug_when_plain: str | None = None  # the backup half fails, unencrypted only

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.corrupt.__name__.replace('_', '-')}"

    def expected(self, warm: bool) -> Expect:
        return self.warm if warm and self.warm is not None else self.expect


NEW_SNAPSHOT = "<new snapshot>"  # restore_names: the snapshot id the row calls new
# Flipped bits keep the size: only reading the pack finds them; the restore that read it
# recorded it damaged (damaged/), so check reports it from then on. (Backups after a damaged
# pack: tests/integration/test_damage_not_inherited.py.)
FLIPPED_PACK = Expect(restore_new=INTEGRITY, check_read_data=INTEGRITY)
DAMAGED_PACK = Expect(restore_new=INTEGRITY, check_read_data=INTEGRITY)
# An empty state_dir learns the new pack from the damaged index only: restore names the
# snapshot and a blob in no index (it cannot tell which index object would have listed
# it). A warm one knows the pack: restore succeeds, and so does backup without reading
# the index object again.
DAMAGED_INDEX = Expect(restore_new=INTEGRITY, restore_names=NEW_SNAPSHOT, backup=OK,
                       backup_damage=True)
DAMAGED_INDEX_WARM = Expect(restore_new=OK, backup=OK)
# A deleted index object cannot be named: its pack is reported as in no index (a warning),
# the snapshot as needing blobs in no pack. A warm state_dir forgets the index's rows (the
# object is gone), so restore fails there too. Backup stores the blobs again (no damage:
# nothing unreadable was met).
MISSING_INDEX = Expect(restore_new=INTEGRITY, restore_names=NEW_SNAPSHOT,
                       check_names=NEW_SNAPSHOT, backup=OK)
DAMAGED_TREE = Expect(restore_new=INTEGRITY, backup=OK, backup_damage=True)
DAMAGED_SNAPSHOT = Expect(restore_new=INTEGRITY, backup=OK, backup_damage=True)
DAMAGED_CONFIG = Expect(restore_new=INTEGRITY, restore_old=INTEGRITY, backup=INTEGRITY)
HARMLESS = Expect(restore_new=OK, check=OK, backup=OK)
# Only a readable, passing record verifies (docs/format.md, section 15): a damaged one
# leaves its snapshot unverified, so 'latest-verified' finds none (and never a wrong one).
DAMAGED_VERIFICATION = dataclasses.replace(HARMLESS, latest_verified=NOT_FOUND)
CONFIG_OF_OTHER = ("unencrypted: a config with another repository id makes every object "
                   "fail its checksum; the message names the first object read, not config")
BACKUP_ON_OTHER_CONFIG = (
    "unencrypted: with a config of another repository id, backup does not refuse (exit 3): "
    "it exits 0, naming every snapshot, index and tree it met as damaged, and stores all "
    "again (its own snapshot restores); nothing tells a foreign config from damage")

ROWS = [
    *(Row("pack", c, FLIPPED_PACK) for c in (flip_payload, flip_flags)),
    *(Row("pack", c, DAMAGED_PACK) for c in (truncate, zero_length, replace, delete)),
    Row("pack", index_claims_2gib, DAMAGED_PACK),
    *(Row("index", c, DAMAGED_INDEX, warm=DAMAGED_INDEX_WARM)
      for c in (flip_payload, flip_flags, truncate, zero_length, replace)),
    Row("index", delete, MISSING_INDEX),
    *(Row("tree", c, DAMAGED_TREE)
      for c in (flip_payload, flip_flags, truncate, zero_length, replace)),
    Row("tree", delete, DAMAGED_TREE),
    *(Row("snapshot", c, DAMAGED_SNAPSHOT) for c in (flip_payload, flip_flags, truncate,
                                                      zero_length, replace)),
    Row("snapshot", delete, Expect(restore_new=NOT_FOUND, check=OK, backup=OK)),
    Row("snapshot", entry_escapes, Expect(restore_new=INTEGRITY)),
    Row("snapshot", entry_size_short, Expect(restore_new=INTEGRITY,
                                             restore_names="apps/new0.json")),
    Row("snapshot", entry_setuid, Expect(restore_new=OK, restore_new_same=False)),
    *(Row("config", c, DAMAGED_CONFIG) for c in (flip_payload, truncate, zero_length,
                                                  delete)),
    Row("config", replace, DAMAGED_CONFIG, bug_when_plain=CONFIG_OF_OTHER,
        backup_bug_when_plain=BACKUP_ON_OTHER_CONFIG),
    *(Row("lock", c, HARMLESS) for c in (stale, flip_payload, flip_flags, truncate,
                                         zero_length, garbage, lock_without_fields,
                                         lock_expires_not_a_number)),
    *(Row("verification", c, DAMAGED_VERIFICATION) for c in (flip_payload, truncate, zero_length,
                                                 garbage)),
]
VARIANTS = [(encrypted, warm) for encrypted in (False, True) for warm in (True, False)]


def _id(row: Row, encrypted: bool, warm: bool) -> str:
    return f"{row.id}-{'encrypted' if encrypted else 'plain'}-{'warm' if warm else 'empty'}"


def _xfail(reason: str | None) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


READ_PARAMS = [pytest.param(row, encrypted, warm, id=_id(row, encrypted, warm),
                            marks=_xfail(None if encrypted else row.bug_when_plain))
               for row in ROWS for encrypted, warm in VARIANTS]
BACKUP_PARAMS = [pytest.param(row, encrypted, warm, id=_id(row, encrypted, warm),
                              marks=_xfail(row.backup_bug or (
                                  None if encrypted else row.backup_bug_when_plain)))
                 for row in ROWS for encrypted, warm in VARIANTS
                 if row.expected(warm).backup is not None]


# --- assertions -----------------------------------------------------------------------------


def _clean(run: Run) -> Run:
    """No command ends in a traceback or an internal error."""
    assert "internal error" not in run.err and "Traceback" not in run.err, run.err
    return run


def _restore(case: Case, snapshot: str, out: str, expect: int, names: str,
             reference: Path, same: bool) -> None:
    target = case.root / out
    run = _clean(cli(case.config, "restore", snapshot, "--target", str(target)))
    assert run.code == expect, run.err
    if expect == OK:
        if same:
            assert_same_tree(reference, target)
        _no_special_bits(target)
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


def _no_special_bits(target: Path) -> None:
    """A restore sets ``mode & 0o777`` only: no setuid, setgid or sticky bit."""
    for dirpath, dirnames, filenames in os.walk(target):
        for name in [*dirnames, *filenames]:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert stat.S_IMODE(mode) & 0o7000 == 0, os.path.join(dirpath, name)


def _check(case: Case, expect: int, names: str, *args: str) -> None:
    run = _clean(cli(case.config, "--json", "check", *args))
    assert run.code == expect, run.out + run.err
    if expect != OK:
        assert names in run.out + run.err, f"{names} not named:\n{run.out}{run.err}"


def _nothing_outside(case: Case) -> None:
    assert set(os.listdir(case.root)) <= ALLOWED, "a file outside every target"


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "encrypted", "warm"), READ_PARAMS)
def test_corruption_restore_and_check(built: dict[bool, Built], tmp_path: Path, row: Row,
                                      encrypted: bool, warm: bool) -> None:
    """One object damaged as the row says: restore of new and old and check end as
    ``Expect`` says, name the object when they fail, and write no wrong file nor any file
    outside the target."""
    b = built[encrypted]
    case = copy_case(b, tmp_path / "case", warm=warm)
    damage = row.corrupt(case, row.kind)
    expect = row.expected(warm)
    new = damage.new or b.new.snapshot
    names = {None: damage.names, NEW_SNAPSHOT: new}
    restore_names = names.get(expect.restore_names, expect.restore_names)
    check_names = names.get(expect.check_names, expect.check_names)

    _restore(case, new, "out-new", expect.restore_new, str(restore_names), b.root / "at-new",
             expect.restore_new_same)
    _restore(case, b.old.snapshot, "out-old", expect.restore_old, damage.names,
             b.root / "at-old", True)
    if expect.latest_verified is not None:
        _restore(case, "latest-verified", "out-verified", expect.latest_verified,
                 "no verified snapshot", b.root / "at-old", True)
    _check(case, expect.check, str(check_names))
    if expect.check_read_data is not None:
        _check(case, expect.check_read_data, str(check_names), "--read-data")
    _nothing_outside(case)


@pytest.mark.parametrize(("row", "encrypted", "warm"), BACKUP_PARAMS)
def test_corruption_backup(built: dict[bool, Built], tmp_path: Path, row: Row,
                           encrypted: bool, warm: bool) -> None:
    """A backup after the damage ends as ``Expect`` says; when it succeeds, its ``damage``
    names the object (when the row says it must) and its snapshot restores the volume."""
    b = built[encrypted]
    case = copy_case(b, tmp_path / "case", warm=warm)
    damage = row.corrupt(case, row.kind)
    expect = row.expected(warm)

    run = _clean(cli(case.config, "backup", "--json"))
    assert run.code == expect.backup, run.out + run.err
    if expect.backup == OK:
        damaged = [d for d in json.loads(run.out)["damage"] if damage.names in d]
        assert bool(damaged) == expect.backup_damage, run.out
        _restore(case, "latest", "out-latest", OK, damage.names, case.root / "volume", True)
    else:
        assert damage.names in run.err, run.err
    _nothing_outside(case)
