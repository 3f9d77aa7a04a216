"""Finding snapshots: list them, resolve ``latest``, ``latest-verified``, ids and id prefixes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from wicked_dr.errors import IntegrityError, NotFoundError, UsageError
from wicked_dr.log import get_logger
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot
from wicked_dr.repository.verification import Status, status_of

log = get_logger(__name__)


def snapshot_ids(repo: Repository) -> list[str]:
    """Every snapshot id, oldest first (ids start with their UTC time)."""
    return repo.list_ids("snapshot")


def load_snapshot(repo: Repository, snapshot_id: str) -> Snapshot:
    """One snapshot object, parsed and validated (IntegrityError when it is not sound)."""
    return Snapshot.from_json(repo.load_json("snapshot", snapshot_id), snapshot_id)


@dataclass(frozen=True)
class Listed:
    """A snapshot as listed: the immutable object joined with what is known of it since."""

    snapshot: Snapshot
    status: Status

    @property
    def verified(self) -> bool:
        return self.status is Status.VERIFIED


def list_snapshots(repo: Repository) -> list[Listed]:
    """Every readable snapshot, oldest first, with its verification status."""
    recorded = set(repo.list_ids("verification"))
    listed = []
    for snapshot_id in snapshot_ids(repo):
        try:
            snapshot = load_snapshot(repo, snapshot_id)
        except IntegrityError as exc:
            log.error("unreadable snapshot", snapshot=snapshot_id, error=exc.one_line())
            continue
        listed.append(Listed(snapshot, status_of(repo, snapshot_id, recorded)))
    return listed


def resolve(repo: Repository, ref: str, before: str | None = None) -> Snapshot:
    """The snapshot ``ref`` names: an id, a unique id prefix, latest or latest-verified;
    with ``before`` (ISO 8601, UTC) only snapshots taken earlier count."""
    ids = snapshot_ids(repo)
    if before is not None:
        cutoff = parse_before(before)
        ids = [i for i in ids if snapshot_time(i) < cutoff]
    if not ids:
        where = f" before {before}" if before else ""
        raise NotFoundError(f"repository {repo.url} has no snapshots{where}")
    if ref == "latest":
        return load_snapshot(repo, ids[-1])
    if ref == "latest-verified":
        return _latest_verified(repo, ids)
    matches = [i for i in ids if i.startswith(ref)]
    if not matches:
        raise NotFoundError(f"no snapshot {ref!r} in {repo.url} (see: wicked-dr snapshots)")
    if len(matches) > 1:
        raise UsageError(f"snapshot prefix {ref!r} is ambiguous ({len(matches)} match); "
                         "give more characters")
    return load_snapshot(repo, matches[0])


def newest_verified_id(repo: Repository, ids: Sequence[str]) -> str | None:
    """The newest of ``ids`` (oldest first) whose verification passed; failed and
    unverified ones are skipped."""
    recorded = set(repo.list_ids("verification"))
    for snapshot_id in reversed(ids):
        if status_of(repo, snapshot_id, recorded) is Status.VERIFIED:
            return snapshot_id
    return None


def _latest_verified(repo: Repository, ids: list[str]) -> Snapshot:
    """The newest snapshot whose verification passed (a failed one is skipped)."""
    found = newest_verified_id(repo, ids)
    if found is not None:
        return load_snapshot(repo, found)
    recorded = set(repo.list_ids("verification"))
    failed = sum(status_of(repo, i, recorded) is Status.FAILED for i in ids)
    why = (f"{failed} of the matching snapshots failed verification, none passed" if failed
           else "none of the matching snapshots has been verified (run 'wicked-dr verify')")
    raise NotFoundError(f"no verified snapshot: {why}; name a snapshot, e.g. 'wicked-dr "
                        "restore latest ...' (or an id from 'wicked-dr snapshots')")


def parse_before(text: str) -> datetime:
    """An ISO 8601 time; naive times are UTC."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--before {text!r} is not an ISO 8601 time (e.g. "
                         "2026-11-26T03:00)") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


# What backup writes (actions/backup.py: new_snapshot_id), and the form without microseconds.
_ID_TIME_FORMATS = ("%Y%m%dT%H%M%S.%fZ", "%Y%m%dT%H%M%SZ")


def snapshot_time(snapshot_id: str) -> datetime:
    """The UTC start time a snapshot id carries (with or without microseconds)."""
    stamp = snapshot_id.split("-")[0]
    for fmt in _ID_TIME_FORMATS:
        try:
            parsed = datetime.strptime(stamp, fmt)
        except ValueError:
            continue
        # strptime also takes narrower fields ('2026112T...', '.1Z'); an id has the exact form.
        if parsed.strftime(fmt) == stamp:
            return parsed.replace(tzinfo=UTC)
    raise IntegrityError(f"snapshot id {snapshot_id!r} does not start with a time")
