"""``wicked-dr restore --live`` and ``restore --resume``: the incident restore.

Safe by default, and the same flow with or without container control::

    0 preflight  exclusive repository lock; Docker and every configured container reachable;
                 portal-api must not answer /ping unless wicked-dr can stop it
    1 choose     the recovery point; guards (free space, dynamicVersion; for wicked's
                 database: its migration state, the schema's owner); the plan is shown and
                 confirmed (--dry-run stops here)
    2 stage      each swapped source restores beside the live data and checks it there
    3 stop       chatbot, mailer, Kong Adapter, portal-api (or: the operator stops them)
    4 swap       live data aside (the pre-restore copy), staged data in
    5 start      portal-api, until GET /ping answers OK           <- rollback until here
    6 rebuild    the Kong Adapter's full sync (POST /resync, or its start-up sync)
    7 tokens     the after-rebuild sources (Kong's tokens), then every Kong node restarted
    8 listeners  mailer and chatbot started; report written

A journal (``engine/live_journal.py``) records each step before it starts. A failure or an
interrupt before portal-api is healthy on the restored data rolls back (exit 7; 8 when the
rollback fails too); a failure after it leaves the restored data live and names the
command that finishes the step (exit 9). ``--resume`` finishes or rolls back a restore
whose process died, as its journal says is safe.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from wicked_dr.actions.common import (
    Result,
    RunOptions,
    open_repository,
    snapshot_reader,
    state_dir,
)
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.engine.catalog import resolve, snapshot_time
from wicked_dr.engine.live_journal import HEALTHY, Journal, find_journal, refuse_while_restoring
from wicked_dr.engine.restore import Ownership
from wicked_dr.errors import (
    ExitCode,
    FollowUpNeededError,
    IntegrityError,
    Interrupted,
    NotFoundError,
    RefusedError,
    UsageError,
    WickedDRError,
)
from wicked_dr.log import get_logger
from wicked_dr.portal.kong_adapter import KongAdapterClient
from wicked_dr.portal.portal_api import PortalApiClient
from wicked_dr.portal.singletons import Singletons
from wicked_dr.repository.locks import locked
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot
from wicked_dr.repository.verification import status_of
from wicked_dr.sources import source_named
from wicked_dr.sources.base import AfterRebuildSource, LiveSettings, SwappedSource

log = get_logger(__name__)
STEP_COUNT = 8


class Operator(Protocol):
    """The person running the command: sees each step and instruction, confirms the plan."""

    def show(self, line: str) -> None:
        """Print one line of progress or an instruction (stderr on a terminal)."""
        ...

    def confirm(self, plan: dict[str, Any]) -> bool:
        """Show the plan; True to go on."""
        ...


class _Silent:
    def show(self, line: str) -> None:
        log.info("restore --live", message=line)

    def confirm(self, plan: dict[str, Any]) -> bool:
        return True


@dataclass
class LiveRestoreReport(Result):
    """What the live restore did: every step with its duration, the measured RTO, where
    the pre-restore copy is, and what to check next."""

    restore_id: str
    snapshot: str
    outcome: str = "running"
    exit_code: int = 0
    dry_run: bool = False
    plan: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    data_age_s: float = 0.0
    total_s: float = 0.0
    portal_api_healthy_after_s: float | None = None
    pre_restore_copy: str | None = None
    pre_restore_schema: str | None = None  # wicked's database: the live schema kept aside
    tokens: dict[str, Any] | None = None
    kong_adapter: dict[str, Any] | None = None
    follow_up: list[str] = field(default_factory=list)
    next_checks: list[str] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False
    report_file: str | None = None
    mode: str = "live"


class LiveRestoreEnded(WickedDRError):
    """The live restore ended without full success; ``report`` says what happened and the
    exit code is the report's (7 rolled back, 8 rollback failed, 9 follow-up needed)."""

    def __init__(self, report: LiveRestoreReport, message: str) -> None:
        self.report = report
        self.exit_code = ExitCode(report.exit_code)
        super().__init__(message)


# --- entry points --------------------------------------------------------------------------------


def run_restore_live(config: Config, snapshot_ref: str, *, before: str | None = None,
                     dry_run: bool = False, tokens: bool = True, allow_newer: bool = False,
                     operator: Operator | None = None,
                     options: RunOptions | None = None) -> LiveRestoreReport:
    """Restore ``snapshot_ref`` over the live portal (see the module docstring)."""
    refuse_while_restoring(config.volume.path, config.state_dir)
    run = _LiveRun(config, options or RunOptions(), operator or _Silent(), _new_restore_id())
    repo = open_repository(config)
    with locked(repo, exclusive=True, operation="restore --live",
                wait_s=run.options.lock_wait_s, expiry_s=config.repository.lock_expiry_s,
                cancel=run.options.cancel):
        return run.restore(repo, snapshot_ref, before, dry_run=dry_run, tokens=tokens,
                           allow_newer=allow_newer)


def run_restore_resume(config: Config, *, operator: Operator | None = None,
                       options: RunOptions | None = None) -> LiveRestoreReport:
    """Finish (portal-api was healthy on the restored data) or roll back (it was not yet)
    the live restore whose journal is on the volume."""
    path = find_journal(config.volume.path, config.state_dir)
    if path is None:
        raise NotFoundError("no unfinished live restore (no journal on the volume nor in "
                            f"{config.state_dir}): nothing to resume")
    journal = Journal.load(path)
    run = _LiveRun(config, options or RunOptions(), operator or _Silent(),
                   str(journal.doc["restore_id"]))
    repo = open_repository(config)
    with locked(repo, exclusive=True, operation="restore --resume",
                wait_s=run.options.lock_wait_s, expiry_s=config.repository.lock_expiry_s,
                cancel=run.options.cancel):
        return run.resume(repo, journal)


def _new_restore_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


# --- the run -------------------------------------------------------------------------------------


class _JournalState:
    """One source's part of the journal (``sources.base.LiveState``)."""

    def __init__(self, journal: Journal | None, name: str, initial: dict[str, Any]) -> None:
        self._journal = journal
        self._name = name
        self._fields = initial

    def attach(self, journal: Journal) -> None:
        self._journal = journal
        self._save()

    def get(self) -> dict[str, Any]:
        return self._fields

    def put(self, **fields: Any) -> None:
        self._fields.update(fields)
        self._save()

    def _save(self) -> None:
        if self._journal is not None:
            sources = self._journal.doc.setdefault("sources", {})
            sources[self._name] = self._fields
            self._journal.save()


class _LiveRun:
    """One live restore (or resume): the steps, the report, the rollback."""

    def __init__(self, config: Config, options: RunOptions, operator: Operator,
                 restore_id: str) -> None:
        self.config = config
        self.options = options
        self.operator = operator
        self.cancel = options.cancel
        self.started = time.monotonic()
        self.report = LiveRestoreReport(restore_id, "")
        self.portal = PortalApiClient(config.wicked.portal_api_url)
        self.adapter = KongAdapterClient(config.wicked.kong_adapter_url)
        self.singletons = Singletons(config, operator.show, self.cancel)
        self.journal: Journal | None = None
        self.states: dict[str, _JournalState] = {}
        self.swapped: list[SwappedSource] = []

    # --- the forward path

    def restore(self, repo: Repository, ref: str, before: str | None, *, dry_run: bool,
                tokens: bool, allow_newer: bool) -> LiveRestoreReport:
        with self._step(1, "preflight"):
            self.singletons.preflight(self.portal)
        with self._step(2, "choose"):
            snapshot = resolve(repo, ref, before)
            self.report.snapshot = snapshot.id
            self.report.data_age_s = round(_age_s(snapshot), 1)
            reader = snapshot_reader(repo, self.config, snapshot, self.options)
            self.swapped = self._swapped_sources(snapshot)
            settings = self._settings(allow_newer)
            with _damage_refused(snapshot):
                guards = {s.name: s.live_guard(reader, snapshot.source(s.name), settings,
                                               self._state(s.name)) for s in self.swapped}
            self.report.plan = self._plan(repo, snapshot, guards, tokens)
        if dry_run:
            self.report.dry_run, self.report.outcome = True, "dry-run"
            return self._finish_report(write=False)
        if not self.operator.confirm(self.report.plan):
            raise UsageError("not confirmed; nothing changed")
        self.started = time.monotonic()  # the RTO counts from the confirmation
        self.journal = Journal.create(self._workspace(), restore_id=self.report.restore_id,
                                      snapshot=snapshot.id, step="staging", tokens=tokens,
                                      plan=self.report.plan)
        for state in self.states.values():
            state.attach(self.journal)
        try:
            with self._step(3, "stage"), _damage_refused(snapshot):
                for source in self.swapped:
                    detail = source.stage_live(reader, snapshot.source(source.name),
                                               settings, self._state(source.name))
                    self._detail(source.name, detail)
        except RefusedError:
            self._discard_staging()  # the snapshot failed its check: nothing live changed
            raise
        except (WickedDRError, OSError) as exc:
            return self._roll_back(exc)
        return self._live_part(repo, snapshot)

    def _live_part(self, repo: Repository, snapshot: Snapshot) -> LiveRestoreReport:
        """Steps 3 to 8, from staged data; rolls back what failed before portal-api ran
        healthy on the restored data."""
        journal = self._journal()
        try:
            self._stop_and_swap(journal)
            with self._step(6, "start portal-api"):
                journal.advance("starting")
                self.singletons.start_portal_api(self.portal)
                self.report.portal_api_healthy_after_s = round(
                    time.monotonic() - self.started, 3)
            journal.advance(HEALTHY)
        except (WickedDRError, OSError) as exc:
            return self._roll_back(exc)
        return self._after_healthy(repo, snapshot, journal)

    def _stop_and_swap(self, journal: Journal) -> None:
        with self._step(4, "stop singletons"):
            journal.advance("stopping", running_before=self.singletons.running_before())
            self.singletons.stop_all(self.portal)
        with self._step(5, "swap"):
            journal.advance("swapping")
            for source in self.swapped:
                self.cancel.check()
                detail = source.swap_live(self._state(source.name))
                self._detail(source.name, detail)
                self.report.pre_restore_copy = (detail.get("pre_restore_copy")
                                                or self.report.pre_restore_copy)
                self.report.pre_restore_schema = (detail.get("pre_restore_schema")
                                                  or self.report.pre_restore_schema)

    def _after_healthy(self, repo: Repository, snapshot: Snapshot,
                       journal: Journal) -> LiveRestoreReport:
        """Steps 7 to 9: failures here leave the restored data live (exit 9); an interrupt
        leaves the journal, so that --resume finishes them."""
        try:
            return self._finish_steps(repo, snapshot, journal)
        except Interrupted:
            self.report.interrupted = True
            self.report.outcome = "restored-follow-up"
            self.report.exit_code = int(ExitCode.FOLLOW_UP_NEEDED)
            self._follow_up(f"interrupted at step '{journal.step}' after portal-api ran "
                            "healthy on the restored data: run 'wicked-dr restore --resume' "
                            "to finish")
            report = self._finish_report(write=True)
            raise LiveRestoreEnded(report, FollowUpNeededError(
                "interrupted after the data was restored; "
                + "; ".join(self.report.follow_up)).one_line()) from None

    def _finish_steps(self, repo: Repository, snapshot: Snapshot,
                      journal: Journal) -> LiveRestoreReport:
        rebuilt = self._rebuild(journal)
        if rebuilt and journal.doc.get("tokens", True):
            self._tokens(repo, snapshot, journal)
        elif not rebuilt:
            self._skip_tokens(snapshot)
        with self._step(9, "start mailer and chatbot"):
            journal.advance("listeners")
            self.singletons.start_listeners()
        for source in self.swapped:
            self._detail(source.name, source.finish_live(self._state(source.name)))
        journal.remove()
        self.report.outcome = "restored" if not self.report.follow_up else "restored-follow-up"
        report = self._finish_report(write=True)
        if self.report.follow_up:
            self.report.exit_code = int(ExitCode.FOLLOW_UP_NEEDED)
            raise LiveRestoreEnded(report, FollowUpNeededError(
                "the data is restored and portal-api is healthy, but "
                + "; ".join(self.report.follow_up)).one_line())
        return report

    def _rebuild(self, journal: Journal) -> bool:
        try:
            with self._step(7, "rebuild Kong state"):
                journal.advance("rebuilding")
                self.report.kong_adapter = self.singletons.rebuild(self.adapter)
            return True
        except Interrupted:
            raise
        except (WickedDRError, OSError) as exc:
            self._follow_up(f"the Kong Adapter's rebuild failed ({_one_line(exc)}): run "
                            "'wicked-dr kong-resync'")
            return False

    def _tokens(self, repo: Repository, snapshot: Snapshot, journal: Journal) -> None:
        from wicked_dr.actions.restore import run_restore_tokens_into

        record = snapshot.sources.get("kong_tokens")
        tokens = source_named("kong_tokens", self.config)
        if record is None or not tokens.configured or not isinstance(tokens,
                                                                    AfterRebuildSource):
            self.report.tokens = {"skipped": "the snapshot holds no Kong tokens"
                                  if record is None else "kong_tokens.dsn is not set"}
            return
        try:
            with self._step(8, "restore tokens"):
                journal.advance("tokens")
                self.report.tokens = run_restore_tokens_into(
                    self.config, repo, snapshot, tokens, record, self.options)
        except Interrupted:
            raise
        except (WickedDRError, OSError) as exc:
            self._follow_up(f"putting Kong's tokens back failed ({_one_line(exc)}): run "
                            f"'wicked-dr restore {snapshot.id} --tokens-only --yes'")

    def _skip_tokens(self, snapshot: Snapshot) -> None:
        if "kong_tokens" in snapshot.sources:
            self.report.tokens = {"skipped": "the Kong Adapter's rebuild failed"}
            self._follow_up(f"then run 'wicked-dr restore {snapshot.id} --tokens-only --yes'")

    # --- rollback

    def _roll_back(self, cause: BaseException) -> LiveRestoreReport:
        journal = self._journal()
        self.report.error = _one_line(cause)
        self.report.interrupted = isinstance(cause, Interrupted)
        # The rollback runs to its end: a (further) signal must not leave half a swap.
        self.cancel = self.singletons.cancel = CancelToken()
        self.operator.show(f"rolling back: {self.report.error}")
        try:
            with self._step(0, "roll back", count=False):
                self._undo(journal)
        except (WickedDRError, OSError) as exc:
            return self._rollback_failed(journal, exc)
        self.report.outcome = "rolled-back"
        refused = isinstance(cause, RefusedError) and not journal.past("swapping")
        self.report.exit_code = int(ExitCode.REFUSED if refused else ExitCode.ROLLED_BACK)
        self.report.pre_restore_copy = self.report.pre_restore_schema = None
        report = self._finish_report(write=True)
        raise LiveRestoreEnded(report, f"restore failed and was rolled back (live data as "
                               f"before): {self.report.error}")

    def _undo(self, journal: Journal) -> None:
        """Stop what may run on restored data, put the live data back, restart what ran."""
        if journal.past("swapping"):
            self.singletons.stop_portal_api_for_rollback(self.portal)
            for source in reversed(self.swapped):
                source.undo_live(self._state(source.name))
        else:
            self._discard_staging()
        if journal.past("stopping"):
            self.singletons.restart_original(journal.doc.get("running_before") or {},
                                             self.portal)
        journal.remove()

    def _rollback_failed(self, journal: Journal, exc: BaseException) -> LiveRestoreReport:
        self.report.outcome = "rollback-failed"
        self.report.exit_code = int(ExitCode.ROLLBACK_FAILED)
        self.report.follow_up.append(
            f"the rollback failed ({_one_line(exc)}); the journal {journal.path} names the "
            "folders involved: the live data kept aside is in the workspace's pre-restore-* "
            "folder; put it back at volume.path, start portal-api, then remove the journal")
        report = self._finish_report(write=True)
        raise LiveRestoreEnded(report, f"restore failed ({self.report.error}) and the "
                               f"rollback failed too ({_one_line(exc)}): see {journal.path}")

    def _discard_staging(self) -> None:
        for source in self.swapped:
            # Best effort: a staging leftover must not hide why the restore was refused.
            with suppress(OSError, KeyError, WickedDRError):
                source.finish_live(self._state(source.name))
        if self.journal is not None:
            self.journal.remove()

    # --- resume

    def resume(self, repo: Repository, journal: Journal) -> LiveRestoreReport:
        self.journal = journal
        self.report.snapshot = str(journal.doc.get("snapshot"))
        self.report.plan = dict(journal.doc.get("plan") or {})
        for name, fields in (journal.doc.get("sources") or {}).items():
            self.states[name] = _JournalState(journal, name, dict(fields))
        self.swapped = [s for s in (source_named(n, self.config) for n in self.states)
                        if isinstance(s, SwappedSource)]
        self.operator.show(f"resuming {journal.describe()}")
        if not journal.past(HEALTHY):
            return self._roll_back(Interrupted(f"the restore process stopped at step "
                                               f"'{journal.step}'"))
        snapshot = resolve(repo, self.report.snapshot)
        return self._after_healthy(repo, snapshot, journal)

    # --- helpers

    def _swapped_sources(self, snapshot: Snapshot) -> list[SwappedSource]:
        found = []
        for name in snapshot.sources:
            source = source_named(name, self.config)
            if isinstance(source, SwappedSource):
                found.append(source)
        if not found:
            raise NotFoundError(f"snapshot {snapshot.id} holds neither a volume nor wicked's "
                                "database to restore live")
        return found

    def _settings(self, allow_newer: bool) -> LiveSettings:
        restore = self.config.restore
        ownership = Ownership.configured(restore)
        return LiveSettings(self.report.restore_id,
                            (ownership.uid, ownership.gid) if ownership.apply else None,
                            tuple(restore.empty_webhook_queues), restore.swap, allow_newer,
                            self.options.progress, self.cancel)

    def _state(self, name: str) -> _JournalState:
        if name not in self.states:
            self.states[name] = _JournalState(self.journal, name, {})
        return self.states[name]

    def _workspace(self) -> Path:
        """Where the journal goes: the volume's workspace (it survives with the volume),
        else, for wicked's database alone, ``state_dir`` (the schema swap is one
        transaction and its undo is judged from which schemas exist)."""
        for state in self.states.values():
            paths = state.get().get("paths")
            if paths:
                return Path(paths["workspace"])
        return state_dir(self.config).live_workspace()

    def _journal(self) -> Journal:
        assert self.journal is not None
        return self.journal

    def _plan(self, repo: Repository, snapshot: Snapshot, guards: dict[str, Any],
              tokens: bool) -> dict[str, Any]:
        summary = snapshot.summary
        status = status_of(repo, snapshot.id, set(repo.list_ids("verification")))
        return {"snapshot": snapshot.id, "taken": snapshot_time(snapshot.id).isoformat(),
                "age_s": self.report.data_age_s, "files": summary.files,
                "bytes": summary.bytes, "verification": status.value,
                "sources": guards,
                "tokens": tokens and "kong_tokens" in snapshot.sources,
                "containers": self.singletons.describe()}

    def _detail(self, name: str, detail: dict[str, Any]) -> None:
        if self.report.steps:
            self.report.steps[-1].setdefault("detail", {})[name] = detail

    def _follow_up(self, text: str) -> None:
        log.error("restore --live follow-up needed", follow_up=text)
        self.report.follow_up.append(text)

    @contextmanager
    def _step(self, number: int, name: str, *, count: bool = True) -> Iterator[None]:
        self.cancel.check()
        began = time.monotonic()
        label = f"[{number}/{STEP_COUNT + 1}] {name}" if count else name
        self.operator.show(f"{label} ...")
        log.info("restore --live step", step=name, restore=self.report.restore_id)
        entry: dict[str, Any] = {"step": name}
        self.report.steps.append(entry)
        try:
            yield
        except BaseException as exc:
            entry.update(seconds=round(time.monotonic() - began, 3), ok=False,
                         error=_one_line(exc))
            raise
        entry.update(seconds=round(time.monotonic() - began, 3), ok=True)
        self.operator.show(f"{label}: done in {entry['seconds']:.1f} s")

    def _finish_report(self, *, write: bool) -> LiveRestoreReport:
        self.report.total_s = round(time.monotonic() - self.started, 3)
        if self.report.outcome.startswith("restored"):
            self.report.next_checks = self._next_checks()
        if write:
            directory = state_dir(self.config).reports()
            path = directory / f"restore-{self.report.restore_id}.json"
            path.write_text(_json(self.report.to_json()))
            self.report.report_file = str(path)
        return self.report

    def _next_checks(self) -> list[str]:
        checks = [f"curl -s {self.portal.ping_url}  (portal-api: {{\"message\": \"OK\"}})",
                  f"curl -s {self.adapter.ping_url}  (Kong Adapter: {{\"healthy\": 1}})",
                  "log in to the portal as a user created before the snapshot and open "
                  "an application: its subscriptions and keys must be there",
                  "call an API through Kong with a client created before the snapshot"]
        if self.report.pre_restore_copy:
            checks.append(f"once satisfied, delete the pre-restore copy: rm -rf "
                          f"{self.report.pre_restore_copy}")
        if self.report.pre_restore_schema:
            checks.append(f"once satisfied, drop the pre-restore schema: DROP SCHEMA "
                          f"\"{self.report.pre_restore_schema}\" CASCADE")
        checks.append("take a backup now: wicked-dr backup (if it refuses because the "
                      "volume shrank, that is this restore: wicked-dr backup --force)")
        return checks


@contextmanager
def _damage_refused(snapshot: Snapshot) -> Iterator[None]:
    """A snapshot found damaged before anything live changed: refused (exit 6)."""
    try:
        yield
    except IntegrityError as exc:
        raise RefusedError(f"snapshot {snapshot.id} is damaged ({exc.one_line()}); nothing "
                           "live was touched; choose another snapshot ('wicked-dr "
                           "snapshots') and run 'wicked-dr check --read-data'") from None


def _age_s(snapshot: Snapshot) -> float:
    return (datetime.now(UTC) - snapshot_time(snapshot.id)).total_seconds()


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, WickedDRError):
        return exc.one_line()
    return " ".join(str(exc).split()) or type(exc).__name__


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, default=str)
