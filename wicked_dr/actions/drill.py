"""``wicked-dr drill``: the monthly restore drill, and ``drill --history``.

A drill picks the latest snapshot (or, with ``--random-within``, a random one of that
window), verifies it in scratch containers from the real repository (``actions/verify.py``:
the same probes, recorded the same way) and measures what an incident would meet: the time
the data path took (RTO), the data's age, and the largest gap between snapshots (RPO). The
report goes into the repository (the history) and, with ``--report-dir``, to Markdown and
JSON files. A drill whose probes failed still writes its report, then exits 3.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from wicked_dr.actions.common import Result, RunOptions, open_repository
from wicked_dr.actions.verify import VerifyFailed, VerifyResult, run_verify
from wicked_dr.config import Config
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids, snapshot_time
from wicked_dr.engine.drill import (
    DrillReport,
    history,
    largest_gap_s,
    new_drill_id,
    save_report,
    write_files,
)
from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.repository.repo import Repository

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class DrillResult(Result):
    """What ``drill --json`` prints: the report, and where its files went."""

    report: dict[str, Any]
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DrillHistoryResult(Result):
    """What ``drill --history --json`` prints: the last drills, oldest first."""

    drills: list[dict[str, Any]]


class DrillFailed(IntegrityError):
    """The drill ran and its probes found problems (exit 3): the report says which."""

    def __init__(self, result: DrillResult, cause: VerifyFailed) -> None:
        self.result = result
        super().__init__(f"drill {result.report['id']}: {cause.one_line()}")


def run_drill(config: Config, *, random_within: timedelta | None = None,
              report_dir: Path | None = None, options: RunOptions | None = None,
              before_check: Callable[[str], None] | None = None) -> DrillResult:
    """Drill one snapshot; ``DrillFailed`` (after the report is stored) when it fails."""
    options = options or RunOptions()
    repo = open_repository(config)
    window = random_within or DEFAULT_WINDOW
    chosen = _choose(repo, random_within)
    past = history(repo)
    started = time.monotonic()
    failure: VerifyFailed | None = None
    try:
        verified = run_verify(config, chosen, options=options, before_check=before_check,
                              kind="drill")
    except VerifyFailed as exc:
        verified, failure = exc.result, exc
    report = _report(repo, verified, window, round(time.monotonic() - started, 3))
    save_report(repo, report)
    files = [str(p) for p in write_files(report, past, report_dir)] if report_dir else []
    result = DrillResult(report.to_json(), files)
    if failure is not None:
        raise DrillFailed(result, failure)
    return result


def run_drill_history(config: Config) -> DrillHistoryResult:
    """The last drills from the repository, oldest first."""
    return DrillHistoryResult([r.to_json() for r in history(open_repository(config))])


def _choose(repo: Repository, random_within: timedelta | None) -> str:
    """The latest snapshot, or a random one taken within ``random_within`` of now."""
    ids = snapshot_ids(repo)
    if random_within is not None:
        since = datetime.now(UTC) - random_within
        ids = [i for i in ids if snapshot_time(i) >= since]
    if not ids:
        within = f" taken within the last {random_within}" if random_within else ""
        raise NotFoundError(f"no snapshot{within} in {repo.url} to drill")
    return random.choice(ids) if random_within is not None else ids[-1]


def _report(repo: Repository, verified: VerifyResult, window: timedelta,
            rto_s: float) -> DrillReport:
    now = datetime.now(UTC)
    snapshot = load_snapshot(repo, verified.snapshot)
    taken = snapshot_time(snapshot.id)
    in_window = [snapshot_time(i) for i in snapshot_ids(repo)
                 if snapshot_time(i) >= now - window]
    return DrillReport(
        id=new_drill_id(now), time=now.isoformat(timespec="seconds"), snapshot=snapshot.id,
        snapshot_time=taken.isoformat(timespec="seconds"), ok=verified.ok, rto_s=rto_s,
        data_age_s=round((now - taken).total_seconds(), 1),
        # What an incident at the worst moment would lose: now counts as the next point.
        rpo_gap_s=round(largest_gap_s([*in_window, now]), 1),
        window_days=window.total_seconds() / 86400, files=snapshot.summary.files,
        bytes=snapshot.summary.bytes, probes=verified.probes)
