"""Cron expressions of ``schedule.*``: the trigger APScheduler runs, and the questions the
daemon and prune ask of a schedule (when is the next run after a time, how long is a period).

APScheduler's own ``CronTrigger`` does the calendar arithmetic (time zones, DST, month ends);
nothing here re-implements it."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger


def cron_trigger(expression: str, timezone: str, jitter_s: int | None = None) -> CronTrigger:
    """The trigger of a five-field cron expression in ``timezone``.

    Not ``CronTrigger.from_crontab``: APScheduler 3 reads weekday numbers as 0 = Monday,
    where cron (and every crontab an operator copies) means 0 = Sunday, so '0 3 * * 0' would
    run on Mondays. Weekday numbers are turned into names first."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected five fields, got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_weekday_names(weekday), timezone=timezone,
                       jitter=jitter_s or None)


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _weekday_names(field: str) -> str:
    """Cron's weekday field with numbers (0 and 7 = Sunday) as APScheduler's names; ranges
    and steps are spelled out, since APScheduler's name ranges do not wrap past Saturday."""
    return ",".join(_weekday_item(item) for item in field.split(","))


def _weekday_item(item: str) -> str:
    body, _, step = item.partition("/")
    if body == "*" and step:
        body = "0-6"  # cron's */2 counts from Sunday, APScheduler's from Monday
    if not any(char.isdigit() for char in body):
        return item  # '*' and names mean the same in both
    first, _, last = body.partition("-")
    start, end = int(first), int(last or (7 if step else first))
    if not (0 <= start <= 7 and 0 <= end <= 7 and start <= end):
        raise ValueError(f"weekday {item!r} out of range (0-7, 0 and 7 are Sunday)")
    days = range(start, end + 1, int(step) if step else 1)
    return ",".join(dict.fromkeys(_WEEKDAYS[day] for day in days))


def next_run_after(expression: str, timezone: str, when: datetime) -> datetime | None:
    """The first time the schedule fires strictly after ``when`` (aware), or None."""
    trigger = cron_trigger(expression, timezone)
    fire: datetime | None = trigger.get_next_fire_time(None, when + timedelta(microseconds=1))
    return fire


def period_s(expression: str, timezone: str, now: datetime) -> float:
    """The longest gap between two runs among the next few after ``now`` (a schedule of
    '0 3 * * 1-5' has a weekend gap of three days: that is its period for staleness)."""
    fires: list[datetime] = []
    when = now
    for _ in range(8):
        fire = next_run_after(expression, timezone, when)
        if fire is None:
            break
        fires.append(fire)
        when = fire
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
    return max(gaps, default=float("inf"))
