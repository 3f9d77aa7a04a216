"""``wicked-dr check``: structure always; pack contents with --read-data[-subset]."""

from __future__ import annotations

from typing import Any

from wicked_dr.actions.common import RunOptions, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.check import CheckReport, check_repository
from wicked_dr.errors import IntegrityError


class CheckFailed(IntegrityError):
    """check found problems; ``report`` lists all of them, ``result`` is the report as
    ``check --json`` prints it (the same shape as a clean check's, with ``ok`` false)."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        self.result = report_dict(report)
        super().__init__(f"check found {len(report.problems)} problem(s): "
                         + "; ".join(str(p) for p in report.problems[:3]))


def run_check(config: Config, *, read_fraction: float = 0.0,
              options: RunOptions | None = None) -> dict[str, Any]:
    """Check the repository; raise CheckFailed (exit 3) listing every problem."""
    options = options or RunOptions()
    repo = open_repository(config)
    report = check_repository(repo, read_fraction=read_fraction, progress=options.progress,
                              cancel=options.cancel)
    if not report.ok:
        raise CheckFailed(report)
    return report_dict(report)


def report_dict(report: CheckReport) -> dict[str, Any]:
    """The report as data: ``problems`` is a list of ``{"object", "message"}``."""
    return {"ok": report.ok, "snapshots": report.snapshots, "indexes": report.indexes,
            "packs": report.packs, "packs_read": report.packs_read,
            "blobs_referenced": report.blobs_referenced,
            "problems": [p.to_json() for p in report.problems],
            "warnings": report.warnings}
