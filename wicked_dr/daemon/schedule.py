"""When jobs run: APScheduler's cron triggers, its no-overlap and misfire rules, and the
start-up rule for a backup missed while the daemon was down.

APScheduler does the scheduling itself (``max_instances=1``, ``coalesce``,
``misfire_grace_time``, cron with jitter in ``schedule.timezone``); this module only
configures it. One worker thread runs every job, so jobs never overlap, not even two
different ones: a verify and a backup due together run one after the other, and a run that
waited longer than ``schedule.misfire_grace_s`` for its turn is skipped (APScheduler reports
it missed; the daemon counts and logs it) rather than piling up behind a long drill.

Whether a backup is overdue at start-up is judged from the repository's newest snapshot, not
from the scheduler's memory (it has none across restarts): overdue when the schedule fired at
least once since that snapshot was taken.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from wicked_dr.config import ScheduleConfig
from wicked_dr.cron import cron_trigger, next_run_after
from wicked_dr.daemon.outcome import JOBS, JobName
from wicked_dr.log import get_logger

log = get_logger(__name__)

NotRun = Callable[[JobName, str], None]
"""Told when a due run did not start: (job, why) — still running, or missed its window."""


def build_scheduler(schedule: ScheduleConfig, run_job: Callable[[JobName], None],
                    not_run: NotRun) -> BackgroundScheduler:
    """A scheduler (not started) with one cron job per configured ``schedule.*`` entry."""
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1,
                      "misfire_grace_time": schedule.misfire_grace_s},
        timezone=ZoneInfo(schedule.timezone))
    for job in configured_jobs(schedule):
        expression = getattr(schedule, job)
        scheduler.add_job(run_job, cron_trigger(expression, schedule.timezone,
                                                schedule.jitter_s),
                          args=[job], id=job, name=job)
    scheduler.add_listener(_reporter(not_run), EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return scheduler


def configured_jobs(schedule: ScheduleConfig) -> list[JobName]:
    """The jobs with a schedule, in their fixed order."""
    return [job for job in JOBS if getattr(schedule, job)]


def _reporter(not_run: NotRun) -> Callable[[JobEvent], None]:
    def report(event: JobEvent) -> None:
        why = ("missed: it could not start within schedule.misfire_grace_s"
               if event.code == EVENT_JOB_MISSED else "skipped: the previous run is still going")
        log.warning("scheduled run not started", job=event.job_id, why=why)
        not_run(event.job_id, why)

    return report


def run_now(scheduler: BackgroundScheduler, job: JobName, now: datetime) -> None:
    """Make ``job`` due at once (its cron schedule goes on afterwards)."""
    scheduler.modify_job(job, next_run_time=now)


def backup_overdue(schedule: ScheduleConfig, newest_snapshot: datetime | None,
                   now: datetime) -> bool:
    """Whether the backup schedule fired since the newest snapshot (or there is none)."""
    if newest_snapshot is None:
        return True
    due = next_run_after(schedule.backup, schedule.timezone, newest_snapshot)
    return due is not None and due <= now
