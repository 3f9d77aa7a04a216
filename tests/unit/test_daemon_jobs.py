"""One run of one job (daemon/jobs.py): the gate, the outcome of every ending, the live
restore's journal, cancellation, and the run id on every log line.

The actions here are small functions with behaviour (they return a real ``BackupResult``,
raise the project's errors, wait on their cancel token); the real actions run in
tests/e2e/test_daemon.py.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from wicked_dr import log
from wicked_dr.actions.backup import BackupResult
from wicked_dr.actions.common import Result, RunOptions
from wicked_dr.config import Config
from wicked_dr.daemon.jobs import JobRunner
from wicked_dr.daemon.outcome import JobName, JobOutcome, JobStatus
from wicked_dr.errors import ExitCode, Interrupted, LockedError

RESULT = BackupResult("20261130T101500.000000Z-0a1b2c3d", files=10, bytes_read=100,
                      bytes_new=50, duration_s=1.0, lock_window_s=0.2, files_unchanged=0,
                      objects_written=3, errors=0, sources=("volume",),
                      damage=("pack ab12 unreadable",))


def _config(tmp_path: Path) -> Config:
    volume = tmp_path / "dynamic"
    volume.mkdir(exist_ok=True)
    return Config.model_validate({"state_dir": str(tmp_path / "state"),
                                  "volume": {"path": str(volume)},
                                  "daemon": {"lock_wait_s": 42}})


class Seen:
    def __init__(self) -> None:
        self.started: list[tuple[JobName, str]] = []
        self.outcomes: list[JobOutcome] = []
        self.options: list[RunOptions] = []


def _runner(tmp_path: Path, action: object, *, gate: str | None = None,
            seen: Seen | None = None) -> tuple[JobRunner, Seen]:
    seen = seen or Seen()

    def recorded(config: Config, options: RunOptions) -> Result:
        seen.options.append(options)
        return action(config, options)  # type: ignore[operator,no-any-return]

    runner = JobRunner(_config(tmp_path), gate=lambda job: gate,
                       started=lambda job, run_id: seen.started.append((job, run_id)),
                       finished=seen.outcomes.append, actions={"backup": recorded})
    return runner, seen


def test_a_run_that_returns_is_ok_with_its_result(tmp_path: Path) -> None:
    runner, seen = _runner(tmp_path, lambda c, o: RESULT)
    runner.run("backup")
    (outcome,) = seen.outcomes
    assert outcome.status is JobStatus.OK and outcome.result is RESULT
    assert outcome.damage == ("pack ab12 unreadable",)
    assert seen.started == [("backup", outcome.run_id)]
    assert seen.options[0].lock_wait_s == 42


def test_a_failed_run_carries_the_one_line_error_and_exit_code(tmp_path: Path) -> None:
    def locked(config: Config, options: RunOptions) -> Result:
        raise LockedError("repository locked by somebody")

    runner, seen = _runner(tmp_path, locked)
    runner.run("backup")
    (outcome,) = seen.outcomes
    assert outcome.status is JobStatus.FAILED
    assert outcome.exit_code == ExitCode.LOCKED
    assert outcome.error is not None and "locked by somebody" in outcome.error


def test_a_bug_in_a_job_is_a_failure_not_a_dead_schedule(tmp_path: Path) -> None:
    def buggy(config: Config, options: RunOptions) -> Result:
        raise KeyError("oops")

    runner, seen = _runner(tmp_path, buggy)
    runner.run("backup")
    assert seen.outcomes[0].status is JobStatus.FAILED
    assert "internal error (KeyError" in (seen.outcomes[0].error or "")
    assert not runner.busy


def test_the_gate_skips_a_run_before_it_starts(tmp_path: Path) -> None:
    runner, seen = _runner(tmp_path, lambda c, o: RESULT, gate="standby: not ours")
    runner.run("backup")
    assert [o.status for o in seen.outcomes] == [JobStatus.SKIPPED]
    assert seen.outcomes[0].error == "standby: not ours"
    assert seen.started == [] and seen.options == []


def test_an_unfinished_live_restore_refuses_every_job(tmp_path: Path) -> None:
    config = _config(tmp_path)
    workspace = config.volume.path.parent / ".wicked-dr-restore"
    workspace.mkdir()
    (workspace / "journal.json").write_text(json.dumps({"format": 1, "step": "swapping",
                                                        "holder": {}, "created": 0}))
    runner, seen = _runner(tmp_path, lambda c, o: RESULT)
    runner.run("backup")
    (outcome,) = seen.outcomes
    assert outcome.status is JobStatus.FAILED and outcome.exit_code == ExitCode.REFUSED
    assert "restore --resume" in (outcome.error or "")
    assert seen.options == []  # the action never ran


def test_cancel_current_stops_the_running_job_at_its_safe_point(tmp_path: Path) -> None:
    entered = threading.Event()

    def waits(config: Config, options: RunOptions) -> Result:
        entered.set()
        options.cancel.wait(60)
        options.cancel.check()
        return RESULT

    runner, seen = _runner(tmp_path, waits)
    thread = threading.Thread(target=runner.run, args=("backup",))
    thread.start()
    assert entered.wait(30)
    assert runner.busy and not runner.wait_idle(0)
    runner.cancel_current("daemon stopping")
    assert runner.wait_idle(30)
    thread.join(30)
    (outcome,) = seen.outcomes
    assert outcome.status is JobStatus.FAILED
    assert outcome.exit_code == Interrupted("x").exit_code


def test_every_log_line_of_a_run_carries_its_run_id(tmp_path: Path) -> None:
    stream = io.StringIO()
    log.configure("info", "json", stream=stream)

    def logs(config: Config, options: RunOptions) -> Result:
        log.get_logger("test").info("inside the action")
        return RESULT

    try:
        runner, seen = _runner(tmp_path, logs)
        runner.run("backup")
    finally:
        log.configure("warning")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    run_id = seen.outcomes[0].run_id
    assert {line["event"] for line in lines} >= {"job started", "inside the action",
                                                 "job ended"}
    assert all(line.get("run_id") == run_id and line.get("job") == "backup"
               for line in lines)


@pytest.mark.parametrize("status", list(JobStatus))
def test_outcome_json_is_plain_data(status: JobStatus) -> None:
    from datetime import UTC, datetime

    outcome = JobOutcome("backup", "r1", datetime(2026, 11, 30, tzinfo=UTC), 1.5, status,
                         result=RESULT if status is JobStatus.OK else None)
    data = json.loads(json.dumps(outcome.to_json()))
    assert data["status"] == str(status) and data["job"] == "backup"
