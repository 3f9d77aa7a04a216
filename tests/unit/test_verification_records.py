"""Verification records: only a readable, passing record of the snapshot itself verifies it;
``snapshots`` shows verified/failed/unverified; a restore without a selector skips a snapshot
whose verification failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.minimal import repository_of
from wicked_dr.cli import main
from wicked_dr.engine.catalog import resolve, snapshot_ids
from wicked_dr.repository.verification import (
    ProbeResult,
    VerificationRecord,
    load_verification,
    save_verification,
)


def _record(snapshot_id: str, *problems: str) -> VerificationRecord:
    probe = ProbeResult("volume", problems=problems, warnings=("stale index",),
                        duration_s=1.5, figures={"files": 3})
    return VerificationRecord(snapshot_id, "2026-11-30T12:00:00+00:00", (probe,), 2.0, "test")


def _two_snapshots(config: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    for _ in range(2):
        assert main(["--config", str(config), "backup"]) == 0
    capsys.readouterr()
    return snapshot_ids(repository_of(config))


def test_record_round_trips_and_a_failed_one_does_not_verify(setup: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             ) -> None:
    old, new = _two_snapshots(setup, capsys)
    repo = repository_of(setup)
    save_verification(repo, _record(old))
    save_verification(repo, _record(new, "users/u1.json: does not parse"))
    assert load_verification(repo, old) == _record(old)
    assert not _record(new, "x").ok and _record(old).ok
    # A restore without a selector (latest-verified) takes the older, passing snapshot.
    assert resolve(repo, "latest-verified").id == old
    assert main(["--config", str(setup), "snapshots", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["verification"], r["verified"]) for r in rows] == \
        [(old, "verified", True), (new, "failed", False)]
    target = setup.parent / "out"
    assert main(["--config", str(setup), "restore", "--target", str(target), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["snapshot"] == old


@pytest.mark.parametrize("tamper", ["other-snapshot", "ok-flag", "no-probes", "garbage"])
def test_a_record_that_cannot_be_trusted_leaves_the_snapshot_unverified(
        setup: Path, capsys: pytest.CaptureFixture[str], tamper: str) -> None:
    """Another snapshot's record, an ``ok`` that disagrees with the probes, a record without
    probes, or no record shape at all: unverified (a restore is never sent to it)."""
    old, new = _two_snapshots(setup, capsys)
    repo = repository_of(setup)
    doc = _record(new).to_json()
    if tamper == "other-snapshot":
        doc = _record(old).to_json()
    elif tamper == "ok-flag":
        doc = _record(new, "broken").to_json() | {"ok": True}
    elif tamper == "no-probes":
        doc["probes"] = []
    else:
        doc = {"verified": True}
    repo.save_json("verification", new, doc)
    assert load_verification(repo, new) is None or not load_verification(repo, new).ok
    assert main(["--config", str(setup), "snapshots", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["verification"] != "verified"
    assert main(["--config", str(setup), "restore", "--target",
                 str(setup.parent / "out")]) == 5
