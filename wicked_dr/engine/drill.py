"""Restore drills: what one drill measured, as JSON and Markdown, and the history of drills.

A drill restores a real snapshot from the real repository into scratch containers and runs
every probe (``actions/drill.py``). Its report is kept in the repository
(``drills/<drill id>``, docs/format.md section 16), so the history survives the machine that
ran it, and optionally written to a directory as ``drill-<id>.json`` and ``.md``.

Figures: RTO of the data path (seconds from the start of the restore to the end of the
checks), the data's age when the drill ran and the largest gap between consecutive
snapshots over the drill's window (RPO: what an incident at the worst moment would have
lost), files and bytes, and each probe's verdict.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)
REPORT_VERSION = 1
HISTORY_SHOWN = 12
_BARS = " ▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class DrillReport:
    """What one drill measured."""

    id: str
    time: str
    snapshot: str
    snapshot_time: str
    ok: bool
    rto_s: float
    data_age_s: float
    rpo_gap_s: float
    window_days: float
    files: int
    bytes: int
    probes: list[dict[str, Any]] = field(default_factory=list)
    version: int = REPORT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any, drill_id: str) -> DrillReport:
        try:
            report = cls(**doc)
        except TypeError:
            raise IntegrityError(f"drill report {drill_id} is malformed") from None
        if report.id != drill_id or report.version != REPORT_VERSION:
            raise IntegrityError(f"drill report {drill_id} is another drill's or unknown")
        return report


def new_drill_id(now: datetime) -> str:
    """Sorts by time, like snapshot ids."""
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(4)


def largest_gap_s(times: Sequence[datetime]) -> float:
    """The largest gap between consecutive times (sorted), 0 for fewer than two."""
    ordered = sorted(times)
    return max(((b - a).total_seconds() for a, b in itertools.pairwise(ordered)), default=0.0)


def save_report(repo: Repository, report: DrillReport) -> None:
    repo.save_json("drill", report.id, report.to_json())


def history(repo: Repository, last: int = HISTORY_SHOWN) -> list[DrillReport]:
    """The newest ``last`` readable drill reports, oldest first (unreadable ones logged)."""
    reports = []
    for drill_id in repo.list_ids("drill")[-last:]:
        try:
            reports.append(DrillReport.from_json(repo.load_json("drill", drill_id), drill_id))
        except (IntegrityError, NotFoundError) as exc:
            log.error("drill report unreadable", drill=drill_id, error=exc.one_line())
    return reports


def write_files(report: DrillReport, past: list[DrillReport], directory: Path) -> list[Path]:
    """``drill-<id>.json`` and ``drill-<id>.md`` in ``directory``; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"drill-{report.id}.json"
    md_path = directory / f"drill-{report.id}.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    md_path.write_text(markdown(report, past))
    return [json_path, md_path]


def markdown(report: DrillReport, past: list[DrillReport]) -> str:
    """The report for people: verdict, figures, probes, and RTO over the last drills."""
    verdict = "passed" if report.ok else "FAILED"
    lines = [f"# Restore drill {report.id}: {verdict}", "",
             f"Snapshot `{report.snapshot}` (taken {report.snapshot_time}), drilled "
             f"{report.time}.", "",
             "| figure | value |", "|---|---:|",
             f"| RTO, data path (restore and checks) | {report.rto_s:.1f} s |",
             f"| data age at drill time | {_duration(report.data_age_s)} |",
             f"| largest gap between snapshots, last {report.window_days:g} days (RPO) | "
             f"{_duration(report.rpo_gap_s)} |",
             f"| files | {report.files} |",
             f"| bytes | {report.bytes} |", "", "## Probes", ""]
    for probe in report.probes:
        state = "ok" if probe["ok"] else "FAILED"
        lines.append(f"- **{probe['name']}**: {state} in {probe['duration_s']} s")
        lines += [f"  - problem: {p}" for p in probe["problems"]]
        lines += [f"  - warning: {w}" for w in probe["warnings"]]
    lines += ["", *rto_chart([*past, report])]
    return "\n".join(lines) + "\n"


def rto_chart(reports: list[DrillReport]) -> list[str]:
    """RTO over the drills, one bar per drill (oldest first), as Markdown."""
    if not reports:
        return []
    top = max(r.rto_s for r in reports) or 1.0
    bars = "".join(_BARS[round(r.rto_s / top * (len(_BARS) - 1))] for r in reports)
    return ["## RTO over the last drills", "", "```",
            f"{bars}   max {top:.1f} s, last {reports[-1].rto_s:.1f} s", "```"]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
