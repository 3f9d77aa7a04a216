"""The daemon's Prometheus metrics, read from each job's ``JobOutcome``.

The registry is the daemon's own (never prometheus-client's global one): tests build as many
``DaemonMetrics`` as they like, and ``/metrics`` shows only what this module defines, not the
process/platform collectors a library might have registered globally.

What a job run reports is recorded by ``record`` (the scheduler calls it once per run); what
the repository holds (snapshots, size, the newest snapshot and its verification) by
``set_repository`` after each job. The data age is computed when Prometheus scrapes, from the
injected ``clock``: a gauge set after each job would freeze between jobs and hide a stalled
schedule, which is what the data age is there to reveal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wicked_dr import __version__
from wicked_dr.actions.backup import BackupResult
from wicked_dr.actions.drill import DrillResult
from wicked_dr.actions.verify import VerifyResult
from wicked_dr.daemon.outcome import JOBS, JobOutcome, JobStatus
from wicked_dr.errors import ExitCode

PREFIX = "wicked_dr_"
# Jobs run from seconds (a prune of a small repository) to hours (a first backup, a drill).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                    7200.0, 14400.0, 43200.0, float("inf"))
VERIFYING_JOBS = ("verify", "drill")
# wicked's writers get HTTP 423 while global.lock exists: the window is milliseconds when a
# change watch names what changed, a fraction of a second when every file is re-statted.
LOCK_WINDOW_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.3, 1.0, 2.0, 5.0, 10.0)


class _RepositoryTimes(Collector):
    """The newest snapshot's time, its verification, and the data age, at scrape time.

    ``wicked_dr_data_age_seconds`` is now (the injected clock) minus the newest snapshot's
    time. Each of the three is absent (not NaN) while it is not known, so ``absent()``
    alerts can tell "no snapshot yet" from a value."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._newest: float | None = None
        self._verified: bool | None = None

    def update(self, newest: float | None, verified: bool | None) -> None:
        with self._lock:
            self._newest, self._verified = newest, verified

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            newest, verified = self._newest, self._verified
        families: list[Metric] = []
        if newest is not None:
            families.append(_gauge(
                "repository_newest_snapshot_timestamp_seconds",
                "Unix time the newest snapshot was taken.", newest))
            families.append(_gauge(
                "data_age_seconds", "Seconds since the newest snapshot was taken, computed at "
                "scrape time: what an incident now would lose (the RPO now).",
                max(0.0, self._clock() - newest)))
        if verified is not None:
            families.append(_gauge(
                "repository_newest_verification_ok", "Verification record of the newest "
                "verified snapshot: 1 passed, 0 failed.", 1.0 if verified else 0.0))
        return families

    def describe(self) -> Iterable[Metric]:
        # Nothing to describe up front: the registry would otherwise collect() to learn the
        # names, and the names are checked against the other metrics' by the parser tests.
        return []


def _gauge(name: str, documentation: str, value: float) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}{name}", documentation)
    family.add_metric([], value)
    return family


class DaemonMetrics:
    """Every metric the daemon exposes, in a registry of its own. Thread-safe: the
    scheduler records while the HTTP listener renders."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._define_jobs()
        self._define_backup()
        self._define_repository()
        self._times = _RepositoryTimes(clock)
        self.registry.register(self._times)
        self._initialise()

    # -- definitions ------------------------------------------------------------------------

    def _define_jobs(self) -> None:
        r = self.registry
        self.runs = Counter(
            f"{PREFIX}job_runs", "Job runs by how they ended: ok, failed, or skipped (did not "
            "start its work: another replica holds the lease, a live restore runs).",
            ["job", "status"], registry=r)
        self.failures = Counter(
            f"{PREFIX}job_failures", "Job runs that failed (the action raised).",
            ["job"], registry=r)
        self.last_run = Gauge(
            f"{PREFIX}job_last_run_timestamp_seconds", "Unix time the job's last run (ok or "
            "failed, not skipped) ended.", ["job"], registry=r)
        self.last_success = Gauge(
            f"{PREFIX}job_last_success_timestamp_seconds", "Unix time the job's last "
            "successful run ended.", ["job"], registry=r)
        self.last_duration = Gauge(
            f"{PREFIX}job_last_duration_seconds", "How long the job's last run (ok or "
            "failed) took.", ["job"], registry=r)
        self.durations = Histogram(
            f"{PREFIX}job_duration_seconds", "How long job runs (ok or failed) took.",
            ["job"], buckets=DURATION_BUCKETS, registry=r)
        self.verification_ok = Gauge(
            f"{PREFIX}job_verification_ok", "Result of the job's last verification: 1 the "
            "probes passed, 0 they failed (verify and drill jobs only).", ["job"], registry=r)

    def _define_backup(self) -> None:
        r = self.registry
        self.backup_files = Gauge(
            f"{PREFIX}backup_last_files", "Files in the last backup's snapshot.", registry=r)
        self.backup_read = Gauge(
            f"{PREFIX}backup_last_read_bytes", "Bytes the last backup read from its sources.",
            registry=r)
        self.backup_new = Gauge(
            f"{PREFIX}backup_last_new_bytes", "Bytes the last backup added to the repository "
            "(after deduplication).", registry=r)
        self.backup_lock_window = Gauge(
            f"{PREFIX}backup_last_lock_window_seconds", "How long the last backup held wicked's "
            "global.lock (the window in which the portal could not write).", registry=r)
        self.backup_lock_windows = Histogram(
            f"{PREFIX}backup_lock_window_seconds", "How long each backup held wicked's "
            "global.lock.", buckets=LOCK_WINDOW_BUCKETS, registry=r)
        self.backup_reread = Gauge(
            f"{PREFIX}backup_last_files_reread_under_lock", "Files the last backup read again "
            "under wicked's global.lock (what changed while it read the volume).", registry=r)
        self.backup_lock_wait = Gauge(
            f"{PREFIX}backup_last_lock_wait_seconds", "How long the last backup waited for "
            "the repository lock (a live restore or a prune held it).", registry=r)
        self.backup_damage = Gauge(
            f"{PREFIX}backup_last_damage_problems", "Repository damage the last backup met and "
            "went around (its snapshot is sound, but a person must look): the count.",
            registry=r)
        self.backup_read_total = Counter(
            f"{PREFIX}backup_read_bytes", "Bytes read by all backups since the daemon "
            "started.", registry=r)
        self.backup_new_total = Counter(
            f"{PREFIX}backup_new_bytes", "Bytes added to the repository by all backups "
            "since the daemon started.", registry=r)

    def _define_repository(self) -> None:
        r = self.registry
        self.snapshots = Gauge(
            f"{PREFIX}repository_snapshots", "Snapshots in the repository.", registry=r)
        self.repository_size = Gauge(
            f"{PREFIX}repository_size_bytes", "Bytes the repository's objects take in the "
            "store.", registry=r)
        self.lease_held = Gauge(
            f"{PREFIX}lease_held", "1 while this daemon holds the repository lease (it runs "
            "the jobs), 0 while it stands by.", registry=r)
        self.lease_holder = Info(
            f"{PREFIX}lease_holder", "Who holds the repository lease, as this daemon last "
            "saw it (one series: the label changes, no series accumulate).", registry=r)
        self.lease_holder.info({"holder": ""})
        Info(f"{PREFIX}build", "The wicked-dr version of this daemon.",
             registry=r).info({"version": __version__})

    def _initialise(self) -> None:
        """Counters start at 0 for every job and status, so ``rate()`` and ``increase()``
        see the first failure instead of a series appearing out of nowhere."""
        for job in JOBS:
            self.failures.labels(job=job)
            for status in JobStatus:
                self.runs.labels(job=job, status=str(status))

    # -- updates ----------------------------------------------------------------------------

    def record(self, outcome: JobOutcome) -> None:
        """Count one run of a job and keep what its result reports."""
        job = outcome.job
        self.runs.labels(job=job, status=str(outcome.status)).inc()
        if outcome.status is JobStatus.SKIPPED:
            return
        ended = outcome.started.timestamp() + outcome.duration_s
        self.last_run.labels(job=job).set(ended)
        self.last_duration.labels(job=job).set(outcome.duration_s)
        self.durations.labels(job=job).observe(outcome.duration_s)
        if outcome.status is JobStatus.OK:
            self.last_success.labels(job=job).set(ended)
        else:
            self.failures.labels(job=job).inc()
        if isinstance(outcome.result, BackupResult):
            self._record_backup(outcome.result)
        verified = _verification(outcome)
        if verified is not None:
            self.verification_ok.labels(job=job).set(1 if verified else 0)

    def _record_backup(self, result: BackupResult) -> None:
        self.backup_files.set(result.files)
        self.backup_read.set(result.bytes_read)
        self.backup_new.set(result.bytes_new)
        self.backup_lock_window.set(result.lock_window_s)
        self.backup_lock_windows.observe(result.lock_window_s)
        self.backup_reread.set(result.files_reread_under_lock)
        self.backup_lock_wait.set(result.lock_wait_s)
        self.backup_damage.set(len(result.damage))
        self.backup_read_total.inc(result.bytes_read)
        self.backup_new_total.inc(result.bytes_new)

    def set_repository(self, snapshots: int, size_bytes: int, newest_snapshot: float | None,
                       newest_verification_ok: bool | None) -> None:
        """What the repository holds now (unix seconds); ``None``: not known, and the
        series is left out rather than shown at a stale or invented value."""
        self.snapshots.set(snapshots)
        self.repository_size.set(size_bytes)
        self._times.update(newest_snapshot, newest_verification_ok)

    def set_lease(self, held: bool, holder: str) -> None:
        """Whether this daemon holds the lease, and who does (one series, relabelled)."""
        self.lease_held.set(1 if held else 0)
        self.lease_holder.info({"holder": holder})

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _verification(outcome: JobOutcome) -> bool | None:
    """Whether a verify or drill run's probes passed; ``None`` when the run says nothing
    about it (another job, or a failure before the probes ran, e.g. Docker down).

    A failed verification raises ``VerifyFailed``/``DrillFailed`` (an ``IntegrityError``,
    exit 3), so the outcome may carry no result: exit 3 of a verifying job counts as failed.
    """
    result = outcome.result
    if isinstance(result, VerifyResult):
        return result.ok
    if isinstance(result, DrillResult):
        return bool(result.report.get("ok"))
    if (outcome.job in VERIFYING_JOBS and outcome.status is JobStatus.FAILED
            and outcome.exit_code == ExitCode.INTEGRITY):
        return False
    return None
