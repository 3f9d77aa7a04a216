"""The daemon's metrics: recorded from real job outcomes, read back through prometheus-client's
own parser (what a Prometheus server would see), not by string matching."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from wicked_dr.actions.backup import BackupResult
from wicked_dr.actions.common import Result
from wicked_dr.actions.drill import DrillResult
from wicked_dr.actions.verify import VerifyResult
from wicked_dr.daemon.metrics import DaemonMetrics
from wicked_dr.daemon.outcome import JOBS, JobName, JobOutcome, JobStatus
from wicked_dr.errors import ExitCode

STARTED = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
T0 = STARTED.timestamp()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(metrics: DaemonMetrics) -> Samples:
    """Every sample of the exposition as {(name, sorted labels): value}."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _backup(damage: tuple[str, ...] = ()) -> BackupResult:
    return BackupResult(snapshot="20261130T030000.000000Z-3fa2c1d0", files=120,
                        bytes_read=4_000_000, bytes_new=250_000, duration_s=42.5,
                        lock_window_s=1.25, files_unchanged=100, objects_written=7, errors=0,
                        sources=("volume", "kong_tokens"), damage=damage,
                        files_reread_under_lock=3)


def _verify(ok: bool) -> VerifyResult:
    return VerifyResult(snapshot="20261130T030000.000000Z-3fa2c1d0", ok=ok, duration_s=30.0,
                        probes=[], swept=0)


def _outcome(job: JobName, status: JobStatus = JobStatus.OK, *, result: Result | None = None,
             duration_s: float = 42.5, exit_code: int = 0) -> JobOutcome:
    return JobOutcome(job=job, run_id=f"{job}-1", started=STARTED, duration_s=duration_s,
                      status=status, result=result,
                      error="boom" if status is JobStatus.FAILED else None,
                      exit_code=exit_code)


def test_fresh_metrics_count_zero_for_every_job_and_hold_no_invented_values() -> None:
    samples = _samples(DaemonMetrics())
    for job in JOBS:
        assert _value(samples, "wicked_dr_job_failures_total", job=job) == 0
        for status in ("ok", "failed", "skipped"):
            assert _value(samples, "wicked_dr_job_runs_total", job=job, status=status) == 0
    names = {name for name, _ in samples}
    assert "wicked_dr_job_last_success_timestamp_seconds" not in names
    assert "wicked_dr_data_age_seconds" not in names
    assert "wicked_dr_repository_newest_snapshot_timestamp_seconds" not in names
    assert _value(samples, "wicked_dr_lease_held") == 0


def test_a_successful_backup_records_its_figures_and_times() -> None:
    metrics = DaemonMetrics()
    metrics.record(_outcome("backup", result=_backup()))
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_job_runs_total", job="backup", status="ok") == 1
    assert _value(samples, "wicked_dr_job_failures_total", job="backup") == 0
    assert _value(samples, "wicked_dr_job_last_run_timestamp_seconds", job="backup") == T0 + 42.5
    assert _value(samples, "wicked_dr_job_last_success_timestamp_seconds",
                  job="backup") == T0 + 42.5
    assert _value(samples, "wicked_dr_job_last_duration_seconds", job="backup") == 42.5
    assert _value(samples, "wicked_dr_job_duration_seconds_count", job="backup") == 1
    assert _value(samples, "wicked_dr_job_duration_seconds_sum", job="backup") == 42.5
    assert _value(samples, "wicked_dr_job_duration_seconds_bucket", job="backup",
                  le="60.0") == 1
    assert _value(samples, "wicked_dr_job_duration_seconds_bucket", job="backup",
                  le="30.0") == 0
    assert _value(samples, "wicked_dr_backup_last_files") == 120
    assert _value(samples, "wicked_dr_backup_last_read_bytes") == 4_000_000
    assert _value(samples, "wicked_dr_backup_last_new_bytes") == 250_000
    assert _value(samples, "wicked_dr_backup_last_lock_window_seconds") == 1.25
    assert _value(samples, "wicked_dr_backup_last_files_reread_under_lock") == 3
    assert _value(samples, "wicked_dr_backup_lock_window_seconds_bucket", le="1.0") == 0
    assert _value(samples, "wicked_dr_backup_lock_window_seconds_bucket", le="2.0") == 1
    assert _value(samples, "wicked_dr_backup_last_damage_problems") == 0
    assert _value(samples, "wicked_dr_backup_read_bytes_total") == 4_000_000
    assert _value(samples, "wicked_dr_backup_new_bytes_total") == 250_000


def test_a_failure_counts_and_keeps_the_last_success() -> None:
    metrics = DaemonMetrics()
    metrics.record(_outcome("backup", result=_backup()))
    later = JobOutcome(job="backup", run_id="backup-2", started=STARTED.replace(hour=4),
                       duration_s=3.0, status=JobStatus.FAILED, error="S3 unreachable",
                       exit_code=int(ExitCode.FAILED))
    metrics.record(later)
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_job_runs_total", job="backup", status="failed") == 1
    assert _value(samples, "wicked_dr_job_failures_total", job="backup") == 1
    assert _value(samples, "wicked_dr_job_last_success_timestamp_seconds",
                  job="backup") == T0 + 42.5
    assert _value(samples, "wicked_dr_job_last_run_timestamp_seconds",
                  job="backup") == T0 + 3600 + 3.0
    assert _value(samples, "wicked_dr_job_duration_seconds_count", job="backup") == 2
    # The failed run had no result: the figures are the last backup's that had one.
    assert _value(samples, "wicked_dr_backup_last_files") == 120


def test_a_skipped_run_is_counted_and_nothing_else() -> None:
    metrics = DaemonMetrics()
    metrics.record(_outcome("prune", JobStatus.SKIPPED))
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_job_runs_total", job="prune", status="skipped") == 1
    assert _value(samples, "wicked_dr_job_last_run_timestamp_seconds", job="prune") is None
    assert _value(samples, "wicked_dr_job_duration_seconds_count", job="prune") is None


def test_damage_is_counted() -> None:
    metrics = DaemonMetrics()
    metrics.record(_outcome("backup", result=_backup(damage=("index 1f2e: unreadable",
                                                              "snapshot x: tree missing"))))
    assert _value(_samples(metrics), "wicked_dr_backup_last_damage_problems") == 2


def test_verification_result_of_verify_and_drill() -> None:
    metrics = DaemonMetrics()
    metrics.record(_outcome("verify", result=_verify(True)))
    metrics.record(_outcome("drill", result=DrillResult(report={"id": "d1", "ok": True})))
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_job_verification_ok", job="verify") == 1
    assert _value(samples, "wicked_dr_job_verification_ok", job="drill") == 1
    # A failed verification raises VerifyFailed (exit 3) and may leave no result.
    metrics.record(_outcome("verify", JobStatus.FAILED, exit_code=int(ExitCode.INTEGRITY)))
    # A drill that failed before any probe ran (Docker down) says nothing about the data.
    metrics.record(_outcome("drill", JobStatus.FAILED, exit_code=int(ExitCode.FAILED)))
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_job_verification_ok", job="verify") == 0
    assert _value(samples, "wicked_dr_job_verification_ok", job="drill") == 1
    metrics.record(_outcome("verify", result=_verify(False)))
    assert _value(_samples(metrics), "wicked_dr_job_verification_ok", job="verify") == 0


def test_repository_state_and_data_age_from_the_clock_at_scrape_time() -> None:
    now = [T0 + 600.0]
    metrics = DaemonMetrics(clock=lambda: now[0])
    metrics.set_repository(snapshots=14, size_bytes=9_000_000, newest_snapshot=T0,
                           newest_verification_ok=True)
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_repository_snapshots") == 14
    assert _value(samples, "wicked_dr_repository_size_bytes") == 9_000_000
    assert _value(samples, "wicked_dr_repository_newest_snapshot_timestamp_seconds") == T0
    assert _value(samples, "wicked_dr_repository_newest_verification_ok") == 1
    assert _value(samples, "wicked_dr_data_age_seconds") == 600.0
    now[0] = T0 + 7200.0  # no job ran since: the age still grows
    assert _value(_samples(metrics), "wicked_dr_data_age_seconds") == 7200.0


def test_unknown_repository_values_are_absent_not_stale() -> None:
    metrics = DaemonMetrics(clock=lambda: T0)
    metrics.set_repository(1, 10, T0 - 5, False)
    assert _value(_samples(metrics), "wicked_dr_repository_newest_verification_ok") == 0
    metrics.set_repository(0, 0, None, None)
    samples = _samples(metrics)
    names = {name for name, _ in samples}
    assert "wicked_dr_data_age_seconds" not in names
    assert "wicked_dr_repository_newest_snapshot_timestamp_seconds" not in names
    assert "wicked_dr_repository_newest_verification_ok" not in names
    assert _value(samples, "wicked_dr_repository_snapshots") == 0


def test_lease_is_one_series_that_changes_its_holder() -> None:
    metrics = DaemonMetrics()
    metrics.set_lease(True, "dr-0")
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_lease_held") == 1
    assert _value(samples, "wicked_dr_lease_holder_info", holder="dr-0") == 1
    metrics.set_lease(False, "dr-1")
    samples = _samples(metrics)
    assert _value(samples, "wicked_dr_lease_held") == 0
    holders = [labels for name, labels in samples if name == "wicked_dr_lease_holder_info"]
    assert holders == [(("holder", "dr-1"),)]


def test_every_metric_is_prefixed_documented_and_registries_are_separate() -> None:
    first, second = DaemonMetrics(), DaemonMetrics()
    first.record(_outcome("backup", result=_backup()))
    assert _value(_samples(second), "wicked_dr_job_runs_total", job="backup",
                  status="ok") == 0
    for family in text_string_to_metric_families(first.render()[0].decode()):
        assert family.name.startswith("wicked_dr_"), family.name
        assert len(family.documentation) > 10, family.name
        for sample in family.samples:
            assert not math.isnan(sample.value), sample.name
