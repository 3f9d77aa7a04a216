"""``wicked-dr snapshots``: what the repository holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from wicked_dr.actions.common import Result, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.catalog import Listed, list_snapshots


@dataclass(frozen=True)
class SnapshotRow:
    """One snapshot as listed."""

    id: str
    time: str
    host: str
    files: int
    bytes: int
    errors: int
    verified: bool
    verification: str  # verified, failed or unverified
    sources: tuple[str, ...]  # the sources whose data the snapshot holds


@dataclass(frozen=True)
class SnapshotsResult(Result):
    """What ``snapshots --json`` prints: a list of rows, oldest first."""

    rows: tuple[SnapshotRow, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rows]


def run_snapshots(config: Config) -> SnapshotsResult:
    """One row per readable snapshot, oldest first."""
    repo = open_repository(config)
    return SnapshotsResult(tuple(_row(listed) for listed in list_snapshots(repo)))


def _row(listed: Listed) -> SnapshotRow:
    snapshot = listed.snapshot
    return SnapshotRow(snapshot.id, snapshot.time, snapshot.host, snapshot.summary.files,
                       snapshot.summary.bytes, snapshot.summary.errors, listed.verified,
                       str(listed.status), tuple(snapshot.sources))
