"""One set of manifest rules for every reader (issue 11, point 6): entries escaping the
target, absolute, duplicated, without a parent directory entry, or setuid/setgid files are
reported by check (each one, as a problem of its snapshot, exit 3) and refused by restore."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from tests.fixtures.repos import craft_snapshot
from wicked_dr.actions.common import open_repository
from wicked_dr.cli import main
from wicked_dr.config import load_config
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.errors import ExitCode
from wicked_dr.repository.manifest import Entry, EntryRules, iter_entries

ERROR_PREFIX = "wicked-dr: error: "
VICTIM = "users/u1.json"


def _as(entry: Entry, **changes: object) -> Entry:
    return dataclasses.replace(entry, **changes)  # type: ignore[arg-type]


# name -> (the offending entry made from the victim's, the path its problem names)
HOSTILE: dict[str, tuple[dict[str, object], str]] = {
    "dotdot": ({"path": "../escape.json"}, "../escape.json"),
    "dotdot-inside": ({"path": "users/../../escape.json"}, "users/../../escape.json"),
    "absolute": ({"path": "/tmp/escape.json"}, "/tmp/escape.json"),
    "duplicate": ({}, VICTIM),
    "no-parent-dir": ({"path": "nowhere/x.json"}, "nowhere/x.json"),
    "setuid": ({"path": "users/suid", "mode": 0o4755}, "users/suid"),
    "setgid": ({"path": "users/sgid", "mode": 0o2755}, "users/sgid"),
}


def _hostile_snapshot(config: Path, cases: list[str]) -> str:
    """A snapshot like the latest one plus one offending entry per case (a copy of the
    victim's entry), sealed through the Repository API."""
    repo = open_repository(load_config(config))
    base = load_snapshot(repo, snapshot_ids(repo)[-1])
    entries = list(iter_entries(repo, base))
    victim = next(e for e in entries if e.path == VICTIM)
    extra = [_as(victim, **HOSTILE[case][0]) for case in cases]
    return craft_snapshot(repo, base, entries + extra)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_check_hostile_manifest_entry_reported_on_snapshot_exit_3(
        backed_up: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """check (with --read-data too) reports an entry restore would refuse as a problem of
    its snapshot naming the entry, and exits 3."""
    snapshot_id = _hostile_snapshot(backed_up, [case])
    code = main(["--config", str(backed_up), "--json", "check", "--read-data"])
    out, err = capsys.readouterr()
    assert code == ExitCode.INTEGRITY, err
    problems = json.loads(out)["problems"]
    assert [p["object"] for p in problems] == [f"snapshot {snapshot_id}"], problems
    assert repr(HOSTILE[case][1]) in problems[0]["message"]


def test_check_every_hostile_manifest_entry_reported_exit_3(
        backed_up: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check reports every offending entry of a snapshot, one problem each, not the first."""
    snapshot_id = _hostile_snapshot(backed_up, list(HOSTILE))
    code = main(["--config", str(backed_up), "--json", "check"])
    out, err = capsys.readouterr()
    assert code == ExitCode.INTEGRITY, err
    problems = json.loads(out)["problems"]
    assert {p["object"] for p in problems} == {f"snapshot {snapshot_id}"}
    assert len(problems) == len(HOSTILE), problems
    for case, (_, path) in HOSTILE.items():
        assert any(repr(path) in p["message"] for p in problems), case


# Restore drops setuid/setgid bits (docs/format.md section 7) rather than refuse a snapshot
# for them; check reports them.
MODE_CASES = ("setuid", "setgid")


@pytest.mark.parametrize("case", [c for c in HOSTILE if c not in MODE_CASES])
def test_restore_hostile_manifest_entry_refused_exit_3(
        backed_up: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """restore refuses the same entries check reports, naming the entry and the snapshot
    (exit 3), and writes nothing outside the target."""
    snapshot_id = _hostile_snapshot(backed_up, [case])
    target = backed_up.parent / "out"
    code = main(["--config", str(backed_up), "restore", snapshot_id, "--target", str(target)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert code == ExitCode.INTEGRITY, err
    assert len(lines) == 1 and repr(HOSTILE[case][1]) in lines[0], err
    assert not (backed_up.parent / "escape.json").exists()
    assert not (target / "users" / "suid").exists()
    assert not (target / "users" / "sgid").exists()


@pytest.mark.parametrize("case", MODE_CASES)
def test_restore_setuid_setgid_entry_restored_without_those_bits(
        backed_up: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A file recorded setuid or setgid is restored with its permission bits only."""
    snapshot_id = _hostile_snapshot(backed_up, [case])
    target = backed_up.parent / "out"
    code = main(["--config", str(backed_up), "restore", snapshot_id, "--target", str(target)])
    assert code == 0, capsys.readouterr().err
    restored = target / str(HOSTILE[case][1])
    assert stat.S_IMODE(restored.stat().st_mode) == 0o755


def test_entry_rules_setgid_directory_and_ordinary_entries_accepted() -> None:
    """A setgid directory (it only passes its group on) and ordinary entries break no rule."""
    rules = EntryRules()
    entries = [Entry("shared", "dir", 0o2775, 0, 0, 0),
               Entry("shared/a.json", "file", 0o644, 0, 0, 0),
               Entry("shared/link", "symlink", 0o777, 0, 0, 0, target="/elsewhere")]
    assert [rules.problem(e) for e in entries] == [None, None, None]
