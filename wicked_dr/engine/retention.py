"""Retention policy (GFS by count, plus keep-within): which snapshots prune keeps, and why.

Pure: snapshots, the policy and a time zone in, one decision per snapshot out. Nothing here
reads or deletes anything (``engine/prune.py`` does).

Semantics (restic's): within each rule the newest snapshot of each bucket is kept, for the N
most recent buckets that hold a snapshot; a snapshot kept by any rule stays. Buckets are
calendar periods in ``schedule.timezone``:

- hourly: one real hour. The autumn hour that happens twice (02:00-03:00 in Europe/Berlin on
  the last Sunday of October) is two buckets, told apart by their UTC offset; the spring
  hour that does not exist holds nothing, so the hours before and after it are neighbours.
- daily: the local calendar day (23 or 25 hours long across a DST change).
- weekly: the ISO week (Monday first; week 53, and week 1 that starts in December).
- monthly, yearly: the local calendar month and year.

``keep_within`` keeps every snapshot taken within that long before the newest one (not
before now: a backup that stopped must not age every snapshot out). The newest verified
snapshot is always kept. A policy that keeps nothing is refused, never read as "delete
everything".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from wicked_dr.config import RetentionConfig, parse_duration
from wicked_dr.errors import RefusedError

Bucket = Callable[[datetime], str]  # local time -> the bucket's label


@dataclass(frozen=True)
class Candidate:
    """A snapshot as the policy sees it: its id and start time (aware)."""

    id: str
    time: datetime


@dataclass(frozen=True)
class Decision:
    """Keep or forget one snapshot; ``reasons`` name every rule that keeps it."""

    id: str
    time: datetime
    reasons: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def _hour(local: datetime) -> str:
    return local.strftime("%Y-%m-%dT%H%z")  # the offset tells the repeated autumn hour apart


def _day(local: datetime) -> str:
    return local.strftime("%Y-%m-%d")


def _week(local: datetime) -> str:
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def _month(local: datetime) -> str:
    return local.strftime("%Y-%m")


def _year(local: datetime) -> str:
    return local.strftime("%Y")


BUCKET_RULES: tuple[tuple[str, str, Bucket], ...] = (
    ("keep_hourly", "hourly", _hour),
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
    ("keep_yearly", "yearly", _year),
)
RULE_KEYS = ("keep_last", *(key for key, _, _ in BUCKET_RULES), "keep_within")


def check_policy(policy: RetentionConfig) -> None:
    """Refuse a policy that keeps nothing (every keep_* 0 and no keep_within)."""
    if policy.keep_within is None and not any(getattr(policy, key) for key in RULE_KEYS[:-1]):
        keys = ", ".join(f"retention.{key}" for key in RULE_KEYS)
        raise RefusedError(f"the retention policy keeps no snapshot (all of {keys} are 0 or "
                           "unset); refusing to prune: set at least one of them")


def apply_policy(snapshots: Sequence[Candidate], policy: RetentionConfig, timezone: str,
                 newest_verified: str | None = None) -> list[Decision]:
    """One decision per snapshot, newest first (see the module docstring)."""
    check_policy(policy)
    zone = ZoneInfo(timezone)
    ordered = sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)
    reasons: dict[str, list[str]] = {s.id: [] for s in ordered}
    for snapshot in ordered[:policy.keep_last]:
        reasons[snapshot.id].append("last")
    for key, label, bucket in BUCKET_RULES:
        _keep_buckets(ordered, getattr(policy, key), label, bucket, zone, reasons)
    if policy.keep_within is not None and ordered:
        _keep_within(ordered, policy.keep_within, reasons)
    if newest_verified in reasons:
        reasons[newest_verified].append("newest verified")
    return [Decision(s.id, s.time, tuple(reasons[s.id])) for s in ordered]


def _keep_buckets(ordered: Sequence[Candidate], count: int, label: str, bucket: Bucket,
                  zone: ZoneInfo, reasons: dict[str, list[str]]) -> None:
    """The newest snapshot of each of the ``count`` most recent buckets holding one."""
    last: str | None = None
    for snapshot in ordered:
        if count <= 0:
            return
        name = bucket(snapshot.time.astimezone(zone))
        if name != last:
            reasons[snapshot.id].append(f"{label} {name}")
            last = name
            count -= 1


def _keep_within(ordered: Sequence[Candidate], within: str,
                 reasons: dict[str, list[str]]) -> None:
    """Every snapshot taken at most ``within`` before the newest one."""
    cutoff = ordered[0].time - timedelta(seconds=parse_duration(within))
    for snapshot in ordered:
        if snapshot.time >= cutoff:
            reasons[snapshot.id].append(f"within {within}")
