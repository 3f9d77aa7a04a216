"""Drill reports: the RPO gap, the Markdown (figures, probes, the RTO chart) and the history
kept in the repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.minimal import repository_of
from wicked_dr.cli import main
from wicked_dr.engine.drill import (
    DrillReport,
    history,
    largest_gap_s,
    markdown,
    save_report,
    write_files,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _report(drill_id: str, rto: float, ok: bool = True) -> DrillReport:
    probe = {"name": "volume", "ok": ok, "duration_s": 2.5,
             "problems": [] if ok else ["users/u1.json: does not parse"],
             "warnings": ["subscription_index/x.json: stale"]}
    return DrillReport(drill_id, "2026-11-30T03:00:00+00:00", "S1", "2026-11-30T02:45:00+00:00",
                       ok, rto, 900.0, 3600.0, 30.0, 1234, 5678, [probe])


def test_largest_gap_is_the_worst_moment_between_consecutive_points() -> None:
    times = [T0 + timedelta(minutes=m) for m in (0, 15, 30, 95, 110)]
    assert largest_gap_s(list(reversed(times))) == 65 * 60
    assert largest_gap_s(times[:1]) == 0.0


def test_markdown_names_figures_probes_and_charts_rto_over_drills() -> None:
    past = [_report("D1", 10.0), _report("D2", 40.0)]
    text = markdown(_report("D3", 20.0, ok=False), past)
    assert text.startswith("# Restore drill D3: FAILED")
    assert "| RTO, data path (restore and checks) | 20.0 s |" in text
    assert "| data age at drill time | 15 min |" in text
    assert "problem: users/u1.json: does not parse" in text
    chart = text.split("## RTO over the last drills")[1]
    assert "▂█▄" in chart and "max 40.0 s, last 20.0 s" in chart


def test_history_is_kept_in_the_repository_newest_last(
        setup: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--config", str(setup), "backup"]) == 0
    repo = repository_of(setup)
    for n, rto in enumerate((3.0, 1.0, 2.0)):
        save_report(repo, _report(f"2026113{n}T030000Z-0000000{n}", rto))
    repo.save_json("drill", "20261129T030000Z-ffffffff", {"not": "a report"})
    assert [r.rto_s for r in history(repo)] == [3.0, 1.0, 2.0]
    paths = write_files(_report("D9", 5.0), history(repo), tmp_path / "reports")
    assert [p.name for p in paths] == ["drill-D9.json", "drill-D9.md"]
    capsys.readouterr()
    assert main(["--config", str(setup), "drill", "--history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["DRILL", "SNAPSHOT", "RESULT"] and len(lines) == 4
