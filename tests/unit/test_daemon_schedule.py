"""The daemon's schedule: APScheduler as configured by daemon/schedule.py, driven by an
injected clock.

No sleeps and no short cron intervals: APScheduler asks ``datetime.now`` what time it is
(in ``apscheduler.schedulers.base`` when it looks for due jobs, in
``apscheduler.executors.base`` when it checks a run's misfire window); the ``clock`` fixture
answers both from a time the test sets, and ``scheduler.wakeup()`` makes the real scheduler
thread look again. The jobs are real functions on APScheduler's real worker thread; the test
waits for what they report (a queue, bounded only so a broken scheduler fails instead of
hanging). The assertions are about order, overlap and misfires, never about speed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from wicked_dr.config import ScheduleConfig
from wicked_dr.cron import cron_trigger, next_run_after, period_s
from wicked_dr.daemon.outcome import JobName
from wicked_dr.daemon.schedule import backup_overdue, build_scheduler, run_now

WAIT_S = 20.0  # only how long a broken scheduler may take to fail the test


class Clock:
    """The time APScheduler sees; the test moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def set(self, when: datetime) -> None:
        self.now = when


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(datetime(2026, 11, 30, 3, 20, tzinfo=UTC))

    class ClockedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return fake.now.astimezone(tz) if tz else fake.now.replace(tzinfo=None)

    monkeypatch.setattr("apscheduler.schedulers.base.datetime", ClockedDatetime)
    monkeypatch.setattr("apscheduler.executors.base.datetime", ClockedDatetime)
    return fake


class Recorder:
    """The jobs: each run is reported with the time it ran at; a job can be held running
    until the test releases it; runs that did not start are reported too."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: queue.Queue[tuple[str, str, datetime]] = queue.Queue()
        self.hold: dict[str, threading.Event] = {}
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def run(self, job: JobName) -> None:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.events.put(("ran", job, self.clock.now))
        gate = self.hold.get(job)
        if gate is not None:
            gate.wait(WAIT_S)
        with self._lock:
            self.running -= 1
        self.events.put(("done", job, self.clock.now))

    def not_run(self, job: JobName, why: str) -> None:
        self.events.put(("not run: " + why.split(":")[0], job, self.clock.now))

    def next(self) -> tuple[str, str, datetime]:
        return self.events.get(timeout=WAIT_S)

    def runs(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` reports other than 'done', in order."""
        seen: list[tuple[str, str]] = []
        while len(seen) < count:
            kind, job, _ = self.next()
            if kind != "done":
                seen.append((kind, job))
        return seen


def _schedule(**overrides: Any) -> ScheduleConfig:
    values: dict[str, Any] = {"backup": "*/15 * * * *", "verify": "30 3 * * *",
                              "prune": "0 4 * * *", "drill": "0 5 1 * *", "jitter_s": 0,
                              "misfire_grace_s": 600}
    values.update(overrides)
    return ScheduleConfig(**values)


@pytest.fixture
def started(clock: Clock) -> Iterator[tuple[BackgroundScheduler, Recorder]]:
    recorder = Recorder(clock)
    scheduler = build_scheduler(_schedule(), recorder.run, recorder.not_run)
    scheduler.start()
    yield scheduler, recorder
    for gate in recorder.hold.values():
        gate.set()
    scheduler.shutdown(wait=True)


def _at(clock: Clock, scheduler: BackgroundScheduler, when: datetime) -> None:
    clock.set(when)
    scheduler.wakeup()


def _utc(day: int, hour: int, minute: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_jobs_run_when_due_one_at_a_time(started: tuple[BackgroundScheduler, Recorder],
                                         clock: Clock) -> None:
    """03:30 backup and verify, 03:45 backup, 04:00 backup and prune: each at its time,
    never two at once (one worker: a verify due with a backup waits for it)."""
    scheduler, jobs = started
    _at(clock, scheduler, _utc(30, 3, 30))
    assert sorted(jobs.runs(2)) == [("ran", "backup"), ("ran", "verify")]
    _at(clock, scheduler, _utc(30, 3, 45))
    assert jobs.runs(1) == [("ran", "backup")]
    _at(clock, scheduler, _utc(30, 4, 0))
    assert sorted(jobs.runs(2)) == [("ran", "backup"), ("ran", "prune")]
    assert jobs.most_running == 1


def test_a_run_still_going_is_not_started_again(
        started: tuple[BackgroundScheduler, Recorder], clock: Clock) -> None:
    """A backup that runs past its next slot: that slot is not started (max_instances=1);
    the slot after it runs once the first run ended."""
    scheduler, jobs = started
    _at(clock, scheduler, _utc(30, 3, 30))
    assert sorted(jobs.runs(2)) == [("ran", "backup"), ("ran", "verify")]
    jobs.hold["backup"] = threading.Event()
    _at(clock, scheduler, _utc(30, 3, 45))
    assert jobs.runs(1) == [("ran", "backup")]
    _at(clock, scheduler, _utc(30, 4, 0))  # backup still running; prune waits for the worker
    assert jobs.runs(1) == [("not run: skipped", "backup")]
    jobs.hold["backup"].set()
    assert jobs.runs(1) == [("ran", "prune")]
    jobs.hold.clear()
    _at(clock, scheduler, _utc(30, 4, 15))
    assert jobs.runs(1) == [("ran", "backup")]
    assert jobs.most_running == 1


def test_missed_runs_coalesce_and_late_ones_are_skipped(
        started: tuple[BackgroundScheduler, Recorder], clock: Clock) -> None:
    """The daemon was paused for 26 hours: the 100 backup slots in between become one run;
    verify (03:30) and prune (04:00), more than misfire_grace_s late, are reported missed;
    the drill of the 1st at 05:00 is due right now and runs."""
    scheduler, jobs = started
    _at(clock, scheduler, _utc(1, 5, 0, month=12))
    seen = jobs.runs(4)
    assert sorted(seen) == [("not run: missed", "prune"), ("not run: missed", "verify"),
                            ("ran", "backup"), ("ran", "drill")]
    # One backup run stood for the 100 slots: none of them is reported missed, and the
    # schedule goes on from now.
    assert scheduler.get_job("backup").next_run_time == _utc(1, 5, 15, month=12)
    _at(clock, scheduler, _utc(1, 5, 15, month=12))
    assert jobs.runs(1) == [("ran", "backup")]


def test_a_job_waiting_past_the_grace_is_missed(clock: Clock) -> None:
    recorder = Recorder(clock)
    scheduler = build_scheduler(_schedule(misfire_grace_s=60), recorder.run,
                                recorder.not_run)
    scheduler.start()
    try:
        _at(clock, scheduler, _utc(30, 3, 30))
        assert sorted(recorder.runs(2)) == [("ran", "backup"), ("ran", "verify")]
        recorder.hold["backup"] = threading.Event()
        _at(clock, scheduler, _utc(30, 3, 45))
        assert recorder.runs(1) == [("ran", "backup")]
        _at(clock, scheduler, _utc(30, 4, 0))
        assert recorder.runs(1) == [("not run: skipped", "backup")]
        clock.set(_utc(30, 4, 5))   # the prune of 04:00 now waited 5 minutes > 60 s
        recorder.hold["backup"].set()
        assert recorder.runs(1) == [("not run: missed", "prune")]
    finally:
        for gate in recorder.hold.values():
            gate.set()
        scheduler.shutdown(wait=True)


def test_run_now_makes_a_job_due_at_once(started: tuple[BackgroundScheduler, Recorder],
                                         clock: Clock) -> None:
    scheduler, jobs = started
    run_now(scheduler, "backup", clock.now)
    scheduler.wakeup()
    assert jobs.runs(1) == [("ran", "backup")]


def test_only_configured_jobs_are_scheduled(clock: Clock) -> None:
    recorder = Recorder(clock)
    scheduler = build_scheduler(_schedule(verify=None, drill=""), recorder.run,
                                recorder.not_run)
    assert sorted(job.id for job in scheduler.get_jobs()) == ["backup", "prune"]


# --- the start-up rule: overdue judged from the newest snapshot ---------------------------


@pytest.mark.parametrize(("newest", "now", "overdue"), [
    (None, _utc(30, 10, 0), True),                       # no snapshot at all
    (_utc(30, 10, 0), _utc(30, 10, 14), False),          # the next slot (10:15) is ahead
    (_utc(30, 10, 0), _utc(30, 10, 15), True),           # 10:15 fired since
    (_utc(30, 10, 7), _utc(30, 10, 14), False),
    (_utc(30, 9, 59), _utc(30, 10, 0), True),
    (_utc(29, 23, 50), _utc(30, 10, 0), True),           # down overnight
])
def test_backup_overdue(newest: datetime | None, now: datetime, overdue: bool) -> None:
    assert backup_overdue(_schedule(), newest, now) is overdue


def test_backup_overdue_in_the_schedule_time_zone() -> None:
    """'0 2 * * *' in Europe/Berlin is 01:00 UTC in winter: a snapshot of 00:30 UTC is
    overdue at 01:00 UTC, not at 02:00 UTC."""
    schedule = _schedule(backup="0 2 * * *", timezone="Europe/Berlin")
    assert not backup_overdue(schedule, _utc(30, 0, 30), _utc(30, 0, 59))
    assert backup_overdue(schedule, _utc(30, 0, 30), _utc(30, 1, 0))


# --- cron: cron's weekday numbers, not APScheduler's ------------------------------------------


@pytest.mark.parametrize(("expression", "weekday"), [
    ("0 3 * * 0", "Sun"), ("0 3 * * 7", "Sun"), ("0 3 * * 1", "Mon"),
    ("0 3 * * 6", "Sat"), ("0 3 * * sun", "Sun"), ("0 3 * * 5-7", "Fri"),
])
def test_weekday_numbers_mean_what_cron_means(expression: str, weekday: str) -> None:
    """2026-11-30 is a Monday; after its 03:00 the next match falls on ``weekday``."""
    fire = next_run_after(expression, "UTC", _utc(30, 12, 0))
    assert fire is not None and fire.strftime("%a") == weekday


def test_weekday_steps_count_from_sunday() -> None:
    trigger = cron_trigger("0 3 * * */2", "UTC")
    fires = []
    when = _utc(30, 12, 0)
    for _ in range(4):
        fire = trigger.get_next_fire_time(None, when + timedelta(seconds=1))
        fires.append(fire.strftime("%a"))
        when = fire
    assert fires == ["Tue", "Thu", "Sat", "Sun"]


def test_period_is_the_longest_gap() -> None:
    assert period_s("30 3 * * *", "UTC", _utc(30, 12, 0)) == 86400
    assert period_s("0 3 * * 1-5", "UTC", _utc(30, 12, 0)) == 3 * 86400


@pytest.mark.parametrize("expression", ["* * * *", "61 * * * *", "0 3 * * 8", "x y z a b"])
def test_bad_cron_is_one_line_naming_the_key(expression: str) -> None:
    with pytest.raises(ValueError, match="cron expression"):
        ScheduleConfig(backup=expression)
