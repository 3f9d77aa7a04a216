"""What one job run came to: the daemon's metrics, alerts and logs all read this."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from wicked_dr.actions.common import Result

JobName = Literal["backup", "verify", "prune", "drill"]
JOBS: tuple[JobName, ...] = ("backup", "verify", "prune", "drill")


class JobStatus(StrEnum):
    """How a run ended: ``skipped`` when it did not start its work (another replica holds
    the lease, a live restore is in progress); ``failed`` when the action raised."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class JobOutcome:
    """One run of one job."""

    job: JobName
    run_id: str
    started: datetime          # timezone-aware UTC
    duration_s: float
    status: JobStatus
    result: Result | None = None   # the action's typed result when it returned
    error: str | None = None       # the one-line error when it did not
    exit_code: int = 0             # errors.ExitCode of the error (0 when ok)

    @property
    def damage(self) -> tuple[str, ...]:
        """Repository damage the run reported though it succeeded (a backup's ``damage``)."""
        return tuple(getattr(self.result, "damage", ()) or ())

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "run_id": self.run_id,
                "started": self.started.isoformat(timespec="seconds"),
                "duration_s": round(self.duration_s, 3), "status": str(self.status),
                "error": self.error, "exit_code": self.exit_code, "damage": list(self.damage),
                "result": self.result.to_json() if self.result is not None else None}
