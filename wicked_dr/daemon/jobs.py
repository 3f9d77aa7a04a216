"""One run of one job: an action called with a cancel token, its end turned into a
``JobOutcome``.

The actions are the CLI's own (``actions/``); the daemon adds only what a person at a
terminal would otherwise do: it refuses while a live restore is unfinished, binds a run id
to every log line of the run, and never lets a job's exception escape into the scheduler
(a bug in one run must not stop the schedule).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from wicked_dr.actions.common import Result, RunOptions
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.daemon.outcome import JobName, JobOutcome, JobStatus
from wicked_dr.errors import ExitCode, WickedDRError
from wicked_dr.log import get_logger

log = get_logger(__name__)

Action = Callable[[Config, RunOptions], Result]


def _backup(config: Config, options: RunOptions) -> Result:
    from wicked_dr.actions.backup import run_backup

    return run_backup(config, options=options)


def _verify(config: Config, options: RunOptions) -> Result:
    from wicked_dr.actions.verify import run_verify

    return run_verify(config, "latest", options=options)


def _prune(config: Config, options: RunOptions) -> Result:
    from wicked_dr.actions.prune import run_prune

    return run_prune(config, options=options)


def _drill(config: Config, options: RunOptions) -> Result:
    from wicked_dr.actions.drill import run_drill

    return run_drill(config, options=options)


ACTIONS: dict[JobName, Action] = {"backup": _backup, "verify": _verify, "prune": _prune,
                                  "drill": _drill}


class JobRunner:
    """Runs jobs one at a time (the scheduler's single worker calls ``run``) and can stop
    the one running. ``gate`` says why a run must not start (None: it may);
    ``started``/``finished`` hear every run (notifiers, metrics)."""

    def __init__(self, config: Config, *, gate: Callable[[JobName], str | None],
                 started: Callable[[JobName, str], None],
                 finished: Callable[[JobOutcome], None],
                 actions: dict[JobName, Action] | None = None) -> None:
        self._config = config
        self._gate = gate
        self._started = started
        self._finished = finished
        self._actions = actions or ACTIONS
        self._current: CancelToken | None = None
        self._idle = threading.Condition()

    def run(self, job: JobName) -> None:
        """One run of ``job``, from the gate to the reported outcome."""
        run_id = secrets.token_hex(6)
        with structlog.contextvars.bound_contextvars(job=job, run_id=run_id):
            outcome = self._outcome(job, run_id)
            log.info("job ended", status=str(outcome.status),
                     duration_s=round(outcome.duration_s, 3), error=outcome.error)
            self._finished(outcome)

    def _outcome(self, job: JobName, run_id: str) -> JobOutcome:
        started, clock = datetime.now(UTC), time.monotonic()
        refused = self._gate(job)
        if refused is not None:
            return JobOutcome(job, run_id, started, 0.0, JobStatus.SKIPPED, error=refused)
        token = self._begin()
        log.info("job started")
        self._started(job, run_id)
        try:
            result = self._call(job, token)
        except WickedDRError as exc:
            return JobOutcome(job, run_id, started, time.monotonic() - clock,
                              JobStatus.FAILED, result=_result_of(exc),
                              error=exc.one_line(), exit_code=int(exc.exit_code))
        except Exception as exc:  # a bug: reported like a failure, the schedule goes on
            log.exception("job crashed")
            return JobOutcome(job, run_id, started, time.monotonic() - clock,
                              JobStatus.FAILED, error=f"internal error ({type(exc).__name__}: "
                              f"{exc})", exit_code=int(ExitCode.FAILED))
        finally:
            self._end()
        return JobOutcome(job, run_id, started, time.monotonic() - clock, JobStatus.OK,
                          result=result)

    def _call(self, job: JobName, token: CancelToken) -> Result:
        from wicked_dr.engine.live_journal import refuse_while_restoring

        refuse_while_restoring(self._config.volume.path, self._config.state_dir)
        options = RunOptions(lock_wait_s=float(self._config.daemon.lock_wait_s),
                             cancel=token)
        return self._actions[job](self._config, options)

    def _begin(self) -> CancelToken:
        with self._idle:
            self._current = CancelToken()
            return self._current

    def _end(self) -> None:
        with self._idle:
            self._current = None
            self._idle.notify_all()

    @property
    def busy(self) -> bool:
        """Whether a job is running now."""
        return self._current is not None

    def cancel_current(self, reason: str) -> None:
        """Ask the running job (if any) to stop at its next safe point."""
        with self._idle:
            if self._current is not None:
                self._current.cancel(reason)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job runs (at most ``timeout_s``); True when none runs."""
        with self._idle:
            return self._idle.wait_for(lambda: self._current is None, timeout=timeout_s)


def _result_of(exc: WickedDRError) -> Result | None:
    """The report a failed action carries (a failed verification's probes), if any."""
    result = getattr(exc, "result", None)
    return result if isinstance(result, Result) else None
