"""``wicked-dr daemon``: the sidecar that runs backups, verifications, prunes and drills on
their schedules for months, one replica at a time.

Threads: the main thread runs the *tick* (every ``min(10 s, lease expiry / 4)``): it renews
or takes the lease (every quarter of its expiry), clears a stale ``global.lock``, refreshes
what /readyz and /metrics say about the repository, and marks the daemon alive.
APScheduler's thread decides when jobs are due and hands them to its single worker thread,
which runs them (``jobs.JobRunner``). The HTTP listener answers on a thread of its own.

Stopping (SIGTERM/SIGINT cancel ``stop``): no new run starts; a running job gets
``daemon.stop_grace_s`` to finish, then is cancelled at its next safe point (which releases
``global.lock`` and the repository lock and leaves no snapshot visible); the lease is
released; the command exits 0.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.base import BaseScheduler

from wicked_dr.actions.common import open_or_create_repository
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.daemon.http import HealthServer
from wicked_dr.daemon.jobs import Action, JobRunner
from wicked_dr.daemon.lease import DaemonLease, check_replicas, probe_conditional_writes
from wicked_dr.daemon.metrics import DaemonMetrics
from wicked_dr.daemon.notify import Notifier
from wicked_dr.daemon.outcome import JobName, JobOutcome, JobStatus
from wicked_dr.daemon.schedule import backup_overdue, build_scheduler, run_now
from wicked_dr.daemon.startup import clear_stale_global_lock, unfinished_live_restore
from wicked_dr.engine.catalog import snapshot_ids, snapshot_time
from wicked_dr.errors import WickedDRError
from wicked_dr.log import get_logger
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.verification import Status, status_of

log = get_logger(__name__)

REFRESH_S = 60.0        # how often /readyz's view of the repository is refreshed
MAX_TICK_S = 10.0
CANCELLED_JOB_WAIT_S = 120.0  # a cancelled job stops at its next safe point; bound the wait


@dataclass
class RepositoryView:
    """What the last refresh saw of the repository (for /readyz and /metrics)."""

    reachable: bool = False
    checked: float = 0.0
    error: str = "not checked yet"
    snapshots: int = 0
    newest: float | None = None


class Daemon:
    """The composition: lease, scheduler, job runner, metrics, notifier, HTTP listener."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 actions: dict[JobName, Action] | None = None) -> None:
        self.config = config
        self._clock = clock
        self.metrics = DaemonMetrics(clock=clock)
        # First: a bad daemon.listen is refused before the repository is touched.
        self.server = HealthServer(config.daemon.listen, self.metrics,
                                   liveness=_Check(self._alive),
                                   readiness=_Check(self._ready))
        self.repo = open_or_create_repository(config)
        self.notifier = Notifier(config.notify, repository=self.repo.url,
                                 host=socket.gethostname())
        self.lease = DaemonLease(self.repo, expiry_s=config.daemon.lease_expiry_s,
                                 conditional=_conditional(self.repo, config), clock=clock)
        self.runner = JobRunner(config, gate=self._gate, started=self.notifier.job_started,
                                finished=self._finished, actions=actions)
        self.scheduler: BaseScheduler = build_scheduler(config.schedule, self.runner.run,
                                                        self._not_run)
        self.view = RepositoryView()
        self._size_bytes: int | None = None
        self._standby_of = ""   # the lease holder last logged while standing by
        self._lease_tried = -float("inf")
        self._heartbeat = clock()
        self._stopping = threading.Event()
        self._tick_s = min(MAX_TICK_S, config.daemon.lease_expiry_s / 4)

    # --- the main loop ---------------------------------------------------------------------

    def run(self, stop: CancelToken) -> None:
        """Serve until ``stop`` is cancelled, then stop cleanly."""
        clear_stale_global_lock(self.config.volume.path, self.repo)
        unfinished_live_restore(self.config.volume.path, self.config.state_dir)
        self.server.start()
        self.scheduler.start()
        log.info("daemon started", listen=self.config.daemon.listen,
                 jobs=[job.id for job in self.scheduler.get_jobs()])
        try:
            self._tick()
            while not stop.wait(self._tick_s):
                self._tick()
        finally:
            self._shut_down(stop.reason or "stopping")

    def _tick(self) -> None:
        self._heartbeat = self._clock()
        held_before = self.lease.held
        held = self._keep_lease()
        if held:
            self._clear_global_lock()  # before a catch-up backup needs global.lock
        if held and not held_before:
            self._on_lease_taken()
        elif held_before and not held:
            self.runner.cancel_current("the daemon lease was lost to another replica")
        if self._clock() - self.view.checked >= REFRESH_S:
            self._refresh()

    def _keep_lease(self) -> bool:
        """Renew or try to take the lease every quarter of its expiry (ticks in between only
        read ``held``, which turns false on our own clock when a renewal was missed)."""
        now = self._clock()
        if now - self._lease_tried >= self.config.daemon.lease_expiry_s / 4:
            self._lease_tried = now
            try:
                self.lease.try_acquire()
            except WickedDRError as exc:
                log.warning("lease renewal failed; retrying", error=exc.one_line())
        holder = self.lease.last_seen
        who = holder.holder.describe() if holder else ""
        self.metrics.set_lease(self.lease.held, who)
        if not self.lease.held and who != self._standby_of:
            log.info("standby: another replica holds the daemon lease", holder=who)
        self._standby_of = "" if self.lease.held else who
        return self.lease.held

    def _on_lease_taken(self) -> None:
        """This replica runs the jobs from now on: catch up on a missed backup."""
        log.info("daemon lease taken: this replica runs the jobs")
        self._refresh()
        newest = (datetime.fromtimestamp(self.view.newest, UTC)
                  if self.view.newest is not None else None)
        now = datetime.fromtimestamp(self._clock(), UTC)
        if self.view.reachable and backup_overdue(self.config.schedule, newest, now):
            log.info("backup overdue (the schedule fired since the newest snapshot): "
                     "running it now", newest=newest.isoformat() if newest else None)
            run_now(self.scheduler, "backup", datetime.now(UTC))

    def _clear_global_lock(self) -> None:
        try:
            clear_stale_global_lock(self.config.volume.path, self.repo)
        except (WickedDRError, OSError) as exc:
            log.warning("could not look for a stale global.lock", error=str(exc))

    # --- jobs ------------------------------------------------------------------------------

    def _gate(self, job: JobName) -> str | None:
        if self._stopping.is_set():
            return "the daemon is stopping"
        if not self.lease.held:
            holder = self.lease.last_seen
            return ("standby: another replica holds the daemon lease"
                    + (f" ({holder.holder.describe()})" if holder else ""))
        return None

    def _finished(self, outcome: JobOutcome) -> None:
        self.metrics.record(outcome)
        self.notifier.job_finished(outcome)
        if outcome.status is not JobStatus.SKIPPED:
            self._refresh(size=True)

    def _not_run(self, job: JobName, why: str) -> None:
        self.metrics.record(JobOutcome(job, "-", datetime.now(UTC), 0.0, JobStatus.SKIPPED,
                                       error=why))

    # --- health ----------------------------------------------------------------------------

    def _refresh(self, *, size: bool = False) -> None:
        """Look at the repository: reachable, snapshot count, newest snapshot (and its
        size after a job: listing every pack is not done every minute)."""
        try:
            ids = snapshot_ids(self.repo)
            newest = snapshot_time(ids[-1]).timestamp() if ids else None
            verified = _newest_verified_ok(self.repo, ids)
            if size or self._size_bytes is None:
                self._size_bytes = _size(self.repo)
        except (WickedDRError, OSError) as exc:
            self.view.reachable, self.view.error = False, str(exc)
            self.view.checked = self._clock()
            log.warning("repository unreachable", error=self.view.error)
            return
        self.view = RepositoryView(True, self._clock(), "", len(ids), newest)
        self.metrics.set_repository(len(ids), self._size_bytes, newest, verified)

    def _alive(self) -> tuple[bool, str]:
        silent = self._clock() - self._heartbeat
        if not self.scheduler.running:
            return False, "the scheduler stopped"
        if silent > max(60.0, 3 * self._tick_s):
            return False, f"the daemon loop has been silent for {silent:.0f} s"
        return True, "scheduler running"

    def _ready(self) -> tuple[bool, str]:
        view = self.view
        if not view.reachable:
            return False, f"repository unreachable: {view.error}"
        if self._clock() - view.checked > 3 * REFRESH_S:
            return False, "the repository has not been checked for a while"
        if view.newest is None:
            return False, "no snapshot yet"
        age = self._clock() - view.newest
        if age > self.config.daemon.max_backup_age_s:
            return False, (f"the newest snapshot is {age:.0f} s old (more than "
                           f"daemon.max_backup_age_s={self.config.daemon.max_backup_age_s})")
        return True, f"newest snapshot {age:.0f} s old"

    # --- stopping --------------------------------------------------------------------------

    def _shut_down(self, reason: str) -> None:
        self._stopping.set()
        log.info("daemon stopping", reason=reason)
        grace = self.config.daemon.stop_grace_s
        if not self.runner.wait_idle(grace):
            log.warning("the running job did not finish within daemon.stop_grace_s; "
                        "cancelling it", stop_grace_s=grace)
            self.runner.cancel_current(f"daemon stopping ({reason})")
            self.runner.wait_idle(CANCELLED_JOB_WAIT_S)
        self.scheduler.shutdown(wait=False)
        self.lease.release()
        self.server.stop()
        self.notifier.close(timeout=2 * self.config.notify.timeout_s)
        log.info("daemon stopped")


class _Check:
    """A health probe from a function (HealthServer's ``Probe``)."""

    def __init__(self, check: Callable[[], tuple[bool, str]]) -> None:
        self._check = check

    def check(self) -> tuple[bool, str]:
        return self._check()


def _conditional(repo: Repository, config: Config) -> bool:
    """Probe the store's conditional writes; refuse several replicas without them."""
    reason = probe_conditional_writes(repo.backend)
    if reason is not None:
        log.error("the repository store does not honour conditional writes: two replicas "
                  "would both run jobs", reason=reason)
    return check_replicas(reason, config.daemon.replicas)


def _newest_verified_ok(repo: Repository, ids: list[str]) -> bool | None:
    """Whether the newest snapshot with a verification record passed it (None: none)."""
    recorded = set(repo.list_ids("verification"))
    for snapshot_id in reversed(ids):
        if snapshot_id in recorded:
            return status_of(repo, snapshot_id, recorded) is Status.VERIFIED
    return None


def _size(repo: Repository) -> int:
    """Bytes stored in the repository (every object)."""
    return sum(info.size for info in repo.backend.list(""))


def run_daemon(config: Config, stop: CancelToken) -> None:
    """The ``daemon`` command: serve until ``stop`` is cancelled."""
    Daemon(config).run(stop)
