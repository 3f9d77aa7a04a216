"""``wicked-dr check``: structure always; pack contents with --read-data[-subset].

A pack found damaged (missing, wrong size, unreadable) is recorded in the repository
(``damaged/``), so that every machine's next backup stores its data again; the check reads
and judges, and writes nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from wicked_dr.actions.common import Result, RunOptions, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.check import CheckReport, check_repository
from wicked_dr.engine.damage import DamageRecorder
from wicked_dr.errors import IntegrityError


class CheckFailed(IntegrityError):
    """check found problems; ``report`` lists all of them, ``result`` is the report as
    ``check --json`` prints it (the same shape as a clean check's, with ``ok`` false)."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        self.result = check_result(report)
        super().__init__(f"check found {len(report.problems)} problem(s): "
                         + "; ".join(str(p) for p in report.problems[:3]))


@dataclass(frozen=True)
class CheckResult(Result):
    """What ``check --json`` prints: ``problems`` as ``{"object", "message"}``."""

    ok: bool
    snapshots: int
    indexes: int
    packs: int
    packs_read: int
    blobs_referenced: int
    problems: list[dict[str, str]]
    warnings: list[str]


def run_check(config: Config, *, read_fraction: float = 0.0,
              options: RunOptions | None = None) -> CheckResult:
    """Check the repository; raise CheckFailed (exit 3) listing every problem."""
    options = options or RunOptions()
    repo = open_repository(config)
    report = check_repository(repo, read_fraction=read_fraction, progress=options.progress,
                              cancel=options.cancel,
                              on_damaged=DamageRecorder(repo, None, found_by="check"))
    if not report.ok:
        raise CheckFailed(report)
    return check_result(report)


def check_result(report: CheckReport) -> CheckResult:
    """The report as a result."""
    return CheckResult(report.ok, report.snapshots, report.indexes, report.packs,
                       report.packs_read, report.blobs_referenced,
                       [p.to_json() for p in report.problems], list(report.warnings))
