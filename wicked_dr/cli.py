"""The command line: parse, load the config, run one action, map errors to exit codes.

This is the only place that prints for humans and the only place that turns exceptions into
exit codes (table in wicked_dr/errors.py and the README).

SIGTERM and SIGINT cancel the command's token (``wicked_dr.cancel``): a command that takes
the token stops at its next safe point and unwinds normally (exit 130, "interrupted"); one
that does not (reading the config, listing snapshots), and any command at a second signal,
is interrupted at once, as Ctrl-C always did.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from wicked_dr import __version__, log
from wicked_dr.cancel import CancelToken, SignalBridge, cancel_on_signals
from wicked_dr.config import (
    Config,
    example_yaml,
    load_config,
    masked_dict,
    resolve_config_path,
    secret_values,
)
from wicked_dr.errors import (
    ConfigError,
    ExitCode,
    Interrupted,
    UsageError,
    WickedDRError,
)

if TYPE_CHECKING:
    from wicked_dr.actions.common import RunOptions
    from wicked_dr.progress import Progress

DESCRIPTION = """\
Backup and disaster recovery for the wicked.haufe.io API portal.

wicked-dr snapshots portal-api's dynamic data volume (and, optionally, Kong's OAuth2 token
tables) into a content-addressed, encrypted repository on S3 or a local directory, proves
snapshots restorable, and brings them back during an incident.
"""

EPILOG = """\
exit codes:
  0    success
  1    operation failed (I/O, S3, database, Docker, HTTP; the message says which)
  2    usage or configuration error
  3    integrity problem (check/verify failed, corrupt object, wrong encryption key)
  4    locked by another holder after --lock-wait
  5    not found (snapshot, repository, bucket)
  6    refused by a safety guard; nothing changed
  7    restore failed and was rolled back (live state as before)
  8    restore failed and the rollback failed too: manual action needed
  9    restore --live put the data back and portal-api is healthy, but a later step (Kong
       Adapter rebuild, tokens, Kong restart) failed: the report names the command to run
  130  interrupted

signals:
  SIGTERM/SIGINT stop backup, check, export, restore --target, repair, prune, verify and
  drill at their next safe point (locks released, staging and scratch containers removed, no
  snapshot or record written); a second signal stops at once

environment:
  WICKED_DR_CONFIG                 configuration file (default /etc/wicked-dr/config.yaml)
  WICKED_DR_<SECTION>__<KEY>       overrides one key, e.g. WICKED_DR_REPOSITORY__URL
  WICKED_DR_<SECTION>__<KEY>_FILE  reads a secret key from a file (Docker secrets)

examples:
  wicked-dr init
  wicked-dr backup --json
  wicked-dr snapshots
  wicked-dr restore latest --target /tmp/restore
  wicked-dr check --read-data-subset 10%
  wicked-dr export latest --tar - | tar -t
  wicked-dr repair packs --dry-run
  wicked-dr prune --dry-run
  wicked-dr verify-data /tmp/restore --manifest files.jsonl
"""

RESTORE_MODES = """\
restore needs exactly one mode:
  --target DIR    write the snapshot's files into DIR (safe: nothing live is touched)
  --live          replace the live volume (portal-api stopped, rollback on failure)
  --tokens-only   put Kong's OAuth2 tokens back after the Kong Adapter rebuilt Kong
  --resume        finish or roll back a live restore whose process died (its journal)"""

RESTORE_DESCRIPTION = RESTORE_MODES + """

restore --live, step by step (each logged and timed; the report is stored in state_dir):
  1 preflight  exclusive repository lock; Docker and the containers.* reachable; without
               containers.portal_api, refuse while portal-api answers GET /ping
  2 choose     SNAPSHOT (default latest-verified), --before; guards: free space on the
               volume's file system, meta.json dynamicVersion not newer than the live one
               (--allow-newer-data); wicked_db: the meta migration not newer than the live
               one, wicked_db.dsn's role owns the live schema; the plan; --dry-run stops here
  3 stage      restore beside the live data (hidden .wicked-dr-restore folder; wicked_db: a
               schema <schema>_restore_<id>, one transaction), check every hash and wicked's
               data model, empty the mailer/chatbot queues
  4 stop       chatbot, mailer, Kong Adapter, portal-api (without containers.*: printed as
               instructions; the command waits for /ping as the signal)
  5 swap       live data kept as the pre-restore copy (path in the report), staged data in;
               wicked_db: both schemas renamed in one transaction (<schema>_pre_restore_<id>)
  6 start      portal-api, until GET /ping answers OK
  7 rebuild    Kong Adapter: start-up sync, POST /resync when allowed; wait for healthy: 1
  8 tokens     Kong's tokens re-attached (--no-tokens skips), every Kong node restarted
  9 listeners  mailer and chatbot started
A failure or SIGINT/SIGTERM before step 6 succeeded rolls back: exit 7 (8 if the rollback
failed). Later failures leave the restored data live: exit 9, the report names the command
that finishes the step (kong-resync, restore --tokens-only). While a journal exists every
other command refuses (exit 6); 'restore --resume' finishes or rolls back."""


# --- parsing -------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use e.g. 30s, 5m, 1h")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * factor


def parse_duration_days(text: str) -> timedelta:
    """'30d', '12h', '90m' -> a time span (drill windows)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhm])\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid window {text!r}; use e.g. 30d, 12h")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
    return timedelta(**{unit: float(match.group(1))})


def parse_percent(text: str) -> float:
    """'10%' or '10' -> 0.10."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if not match or not 0 < float(match.group(1)) <= 100:
        raise argparse.ArgumentTypeError(f"invalid share {text!r}; use e.g. 10%")
    return float(match.group(1)) / 100


class _ModeRequired(UsageError):
    """restore without a mode: the explanation keeps its lines (one per mode)."""

    def one_line(self) -> str:
        return str(self)


class _AlreadyReported(WickedDRError):
    """A failure whose result (e.g. check's report) was printed on stdout: stderr still gets
    the one line, and the exit code is the original error's."""

    def __init__(self, error: WickedDRError) -> None:
        self.exit_code = error.exit_code
        super().__init__(error.one_line())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, documented like a man page."""
    parser = _Parser(prog="wicked-dr", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wicked-dr {__version__}")
    _add_globals(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_backup_commands(sub)
    _add_restore_command(sub)
    _add_operations_commands(sub)
    _add_config_command(sub)
    return parser


def _add_globals(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Global options; also accepted after the command (``backup --json``), where their
    defaults are suppressed so they never overwrite a value given before the command."""
    common = parser.add_argument_group("global options")
    if suppress:
        common.argument_default = argparse.SUPPRESS
    common.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $WICKED_DR_CONFIG or "
                        "/etc/wicked-dr/config.yaml)")
    common.add_argument("--json", action="store_true",
                        help="machine output on stdout (logs stay on stderr)")
    zero = argparse.SUPPRESS if suppress else 0
    common.add_argument("-v", "--verbose", action="count", default=zero, help="more logging")
    common.add_argument("-q", "--quiet", action="count", default=zero, help="less logging")
    common.add_argument("--lock-wait", type=parse_duration,
                        default=argparse.SUPPRESS if suppress else 0.0, metavar="DURATION",
                        help="wait this long for a repository lock, or wicked's "
                        "global.lock, held by another process (e.g. 30s, 5m; default: do "
                        "not wait)")


def _command(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_globals(parser, suppress=True)
    return parser


def _add_backup_commands(sub: Any) -> None:
    init = _command(sub, "init", "create the repository",
                    "Create the repository at repository.url, encrypted when "
                    "repository.encryption_key_file is set. Only a location that holds no "
                    "object at all is used; an existing repository is left as it is. "
                    "(backup also creates one in an empty location, unless state_dir "
                    "remembers another repository there.)")
    init.add_argument("--create-bucket", action="store_true",
                      help="create the S3 bucket when it does not exist (never done otherwise)")
    backup = _command(sub, "backup", "take a snapshot now",
                      "Snapshot the dynamic data volume (none when volume.path is null), "
                      "wicked's Postgres schema when wicked_db.dsn is set, and Kong's OAuth2 "
                      "tokens when kong_tokens.dsn is set. The volume is read first; wicked's "
                      "global.lock (portal writes get HTTP 423 meanwhile) is then held only "
                      "to re-read what changed, named by an inotify watch (volume.watch) or "
                      "found by re-statting every file; --json reports lock_window_s and "
                      "files_reread_under_lock.")
    backup.add_argument("--force", action="store_true",
                        help="snapshot even a volume that does not look like wicked's or "
                        "that shrank suspiciously, or an empty wicked schema")
    _command(sub, "snapshots", "list snapshots", "List the repository's snapshots.")
    check = _command(sub, "check", "check the repository's integrity",
                     "Check that every snapshot's objects exist and indexes agree; with "
                     "--read-data also download and verify packs. Reports every problem.")
    group = check.add_mutually_exclusive_group()
    group.add_argument("--read-data", action="store_true", help="read and verify every pack")
    group.add_argument("--read-data-subset", type=parse_percent, metavar="N%",
                       help="read and verify a random share of the packs")
    _add_repair_command(sub)
    export = _command(sub, "export", "write a snapshot as a plain tar",
                      "Write a snapshot as a tar archive: the way out of wicked-dr's format.")
    export.add_argument("snapshot", metavar="SNAPSHOT", help="id, id prefix or 'latest'")
    export.add_argument("--tar", required=True, metavar="FILE|-", help="tar file, - for stdout")


REPAIR_DESCRIPTION = """\
Repair a damaged repository. Each repair holds the exclusive repository lock, reports what
it found with --dry-run before changing anything, and is safe to kill and run again.

  index      rebuild the index from the stored packs (packs describe themselves)
  packs      drop damaged packs (default: those check recorded); lists the files each
             snapshot loses; the next backup stores again what the volume still holds
  snapshots  list snapshots whose data is gone; --forget removes them

After 'check --read-data' reported damage: repair packs, backup, repair snapshots --forget."""


def _add_repair_command(sub: Any) -> None:
    repair = _command(sub, "repair", "repair a damaged repository (index, packs, snapshots)",
                      REPAIR_DESCRIPTION)
    what = repair.add_subparsers(dest="repair_what", metavar="WHAT", parser_class=_Parser,
                                 required=True)
    index = _command(what, "index", "rebuild the index from the packs",
                     "Index every stored, readable pack; leave out packs that are missing or "
                     "damaged; replace damaged or lost index objects.")
    index.add_argument("--read-all-packs", action="store_true",
                       help="read and verify every pack, not only those no index lists "
                       "correctly")
    packs = _command(what, "packs", "drop damaged packs",
                     "Drop damaged packs from the index and the repository (a pack is one "
                     "sealed frame: its blobs cannot be salvaged one by one) and list the "
                     "files each snapshot loses with them. A pack that reads intact is never "
                     "dropped.")
    packs.add_argument("packs", nargs="*", metavar="PACK",
                       help="pack ids (default: every pack check or a restore recorded "
                       "damaged)")
    snapshots = _command(what, "snapshots", "list (and forget) snapshots whose data is gone",
                         "List the snapshots that cannot be restored whole; with --forget "
                         "remove them. Intact snapshots are never touched.")
    snapshots.add_argument("--forget", action="store_true",
                           help="remove the snapshots listed")
    for parser in (index, packs, snapshots):
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")


def _add_restore_command(sub: Any) -> None:
    restore = _command(sub, "restore", "bring a snapshot back", RESTORE_DESCRIPTION)
    restore.add_argument("snapshot", nargs="?", default="latest-verified", metavar="SNAPSHOT",
                         help="id, id prefix, 'latest' or 'latest-verified' (default)")
    mode = restore.add_mutually_exclusive_group()
    mode.add_argument("--target", type=Path, metavar="DIR", help="restore into DIR")
    mode.add_argument("--live", action="store_true", help="restore the live volume")
    mode.add_argument("--tokens-only", action="store_true", help="restore Kong's tokens only")
    mode.add_argument("--resume", action="store_true",
                      help="finish or roll back an interrupted restore --live")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--dry-run", action="store_true", help="report, change nothing")
    restore.add_argument("--tokens", action=argparse.BooleanOptionalAction, default=True,
                         help="with --live: also restore Kong's tokens (default: yes)")
    restore.add_argument("--before", metavar="TIMESTAMP",
                         help="the newest matching snapshot taken before this UTC time "
                         "(ISO 8601, e.g. 2026-11-26T03:00)")
    restore.add_argument("--force", action="store_true",
                         help="with --target: write into a non-empty directory")
    restore.add_argument("--allow-newer-data", action="store_true",
                         help="with --live: restore data written by a newer portal-api "
                         "(meta.json dynamicVersion) than the live one")
    restore.add_argument("--source", action="append", metavar="NAME",
                         help="with --target: restore only this source's data (repeatable; "
                         "default: the volume's files; e.g. kong_tokens writes "
                         "DIR/kong_tokens.stream, wicked_db writes DIR/wicked_db/ with one "
                         "CSV per table, schema.sql and load.psql)")


def _add_operations_commands(sub: Any) -> None:
    verify = _command(sub, "verify", "prove a snapshot restorable in scratch containers",
                      "Restore a snapshot into throwaway Docker containers and volumes (no "
                      "network, no host path mounted, removed afterwards) and check it "
                      "there: every file against the manifest and wicked's data model. "
                      "Nothing live is touched. The outcome is stored with the snapshot: "
                      "'snapshots' shows verified/failed, and restore without a selector "
                      "takes the newest verified snapshot. Exit 3 when a probe found "
                      "problems (all listed).")
    verify.add_argument("snapshot", nargs="?", default="latest", metavar="SNAPSHOT",
                        help="id, id prefix or 'latest' (default)")
    drill = _command(sub, "drill", "run the monthly restore drill",
                     "Restore the latest snapshot (or a random one) from the real repository "
                     "into scratch containers, run every probe, and measure RTO (the data "
                     "path's time), the data's age and the largest gap between snapshots "
                     "(RPO). The report is stored in the repository and, with --report-dir, "
                     "written as Markdown and JSON. Exit 3 when a probe failed (the report "
                     "is still written).")
    drill.add_argument("--random-within", type=parse_duration_days, metavar="DURATION",
                       help="drill a random snapshot taken within this window (e.g. 30d)")
    drill.add_argument("--report-dir", type=Path, metavar="DIR",
                       help="also write drill-<id>.md and drill-<id>.json here")
    drill.add_argument("--history", action="store_true",
                       help="print the last drills instead of running one")
    prune = _command(sub, "prune", "apply the retention policy", PRUNE_DESCRIPTION)
    prune.add_argument("--dry-run", action="store_true",
                       help="show the plan (snapshots kept and why, packs to delete or "
                       "repack), delete nothing")
    _command(sub, "kong-resync", "make the Kong Adapter rebuild Kong",
             "Make the Kong Adapter rebuild Kong's consumers and credentials from wicked's "
             "data (e.g. after Kong's database was lost): POST /resync when the adapter "
             "allows it (ALLOW_RESYNC), else restart containers.kong_adapter (it syncs at "
             "every start; without it, you are asked to restart the adapter); then wait "
             "until its /ping reports healthy: 1. Tokens are not touched: restore them "
             "afterwards with 'restore --tokens-only'.")
    _command(sub, "daemon", "run scheduled backups as a sidecar", DAEMON_DESCRIPTION)
    _add_verify_data_command(sub)


DAEMON_DESCRIPTION = """\
Run next to wicked for months: backup, verify, prune and drill on the cron schedules of
the schedule section (in schedule.timezone), one job at a time. A backup missed while the
daemon was down runs at start-up when the schedule fired since the newest snapshot.

Several replicas may run: the daemon lease in the repository (leases/daemon) lets one run
jobs while the others stand by, and a standby takes over when the holder stops renewing it
for daemon.lease_expiry_s (a store without conditional writes needs daemon.replicas: 1).
Jobs take their repository locks inside the lease, so a live restore makes them wait.

At start-up and while it holds the lease, a global.lock left by a crashed wicked-dr of this
deployment is removed. While a live restore's journal exists every job refuses (and
alerts) until 'wicked-dr restore --resume' ran.

HTTP on daemon.listen: /healthz (the scheduler is alive), /readyz (repository reachable,
newest snapshot younger than daemon.max_backup_age_s), /metrics (Prometheus). Failures,
repository damage and optionally successes are POSTed to notify.webhook_url(s); per job,
notify.healthchecks URLs are pinged at start, success (/) and failure (/fail).

SIGTERM/SIGINT: no new job starts; a running job gets daemon.stop_grace_s to finish, then is
cancelled at its next safe point (global.lock and locks released, no partial snapshot);
exit 0. Logs are JSON lines with a run id per job."""


PRUNE_DESCRIPTION = """\
Forget the snapshots the retention section lets go (GFS: keep_last, keep_hourly,
keep_daily, keep_weekly, keep_monthly, keep_yearly by calendar buckets in
schedule.timezone, plus keep_within), then delete the packs and trees only they used;
packs whose used share fell below retention.repack_below_percent are repacked. Holds the
exclusive repository lock; safe to kill and run again. The newest verified snapshot is
always kept.

Refuses (exit 6, nothing deleted) when the newest snapshot shrank by more than
volume.max_shrink_percent against the newest verified one (take a snapshot with 'backup
--force' if the loss is intended), and, where schedule.verify is set, when the newest
verification failed, is missing, or is older than two verify periods (run 'verify')."""


VERIFY_DATA_DESCRIPTION = """\
Check a directory of wicked dynamic data (e.g. after 'restore --target DIR'), without a
repository and without a configuration file. It runs the standard-library-only checker
wicked_dr/verify_data.py, the same file a restore drill runs inside a scratch container
(python3 verify_data.py DIR [--manifest FILE] [--json]).

  --manifest FILE  JSON lines, one per regular file of the snapshot:
                   {"path": "users/u1.json", "size": 12, "sha256": "<hex>"}
                   every listed file must be there with that size and SHA-256, and no
                   regular file may be there unlisted
  always           every *.json parses; users/_index.json <-> users/<id>.json;
                   application owners <-> the users' application lists;
                   applications/_index.json <-> applications/<id>.json <->
                   subscriptions/<id>.subs.json; approvals point to existing subscriptions

problems (exit 3) name the file and what is wrong. wicked's normal untidiness is reported
as warnings and exits 0: stale subscription_index/ and subscription_api_index/ entries
(rebuilt at every portal-api start), orphaned subscriptions/<appId>.subs.json of deleted
applications, leftover *.lock files. exit 2: DIR is not a directory or the manifest is
unreadable. --config and --lock-wait are accepted and ignored: no configuration is read."""


def _add_verify_data_command(sub: Any) -> None:
    verify_data = _command(sub, "verify-data", "check a restored dynamic-data directory",
                           VERIFY_DATA_DESCRIPTION)
    verify_data.add_argument("directory", type=Path, metavar="DIR",
                             help="the dynamic data to check (portal-api's JSON folder)")
    verify_data.add_argument("--manifest", type=Path, metavar="FILE",
                             help="the snapshot's files as JSON lines {path, size, sha256}")


def _add_config_command(sub: Any) -> None:
    config = _command(sub, "config", "validate, show or generate the configuration",
                      "validate: check the file and environment (every problem at once); "
                      "show: the effective configuration, secrets masked; "
                      "example: the commented example generated from the schema.")
    config.add_argument("config_action", choices=["validate", "show", "example"],
                        metavar="{validate,show,example}")


# --- running -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wicked-dr`` console script."""
    json_output = "--json" in (argv if argv is not None else sys.argv[1:])
    log.configure("warning")  # until the config is loaded; structlog's default is stdout
    try:
        with cancel_on_signals(CancelToken()) as signals:
            return _run(argv, signals, json_output)
    except Interrupted:  # a signal after the command ended, before the handlers were removed
        return _fail("interrupted", ExitCode.INTERRUPTED, json_output)


def _run(argv: Sequence[str] | None, signals: SignalBridge, json_output: bool) -> int:
    """Parse and run one command; what it raises becomes one line and an exit code."""
    try:
        args = build_parser().parse_args(argv)
        args.signals = signals
        return _dispatch(args)
    except WickedDRError as exc:
        # A failure whose report is already on stdout adds no {"error"} object to it.
        return _fail(exc.one_line(), exc.exit_code,
                     json_output and not isinstance(exc, _AlreadyReported))
    except KeyboardInterrupt:  # raised by something else: our handler raises Interrupted
        return _fail("interrupted", ExitCode.INTERRUPTED, json_output)
    except OSError as exc:
        # An I/O failure no layer translated (a path that is a file, a full disk): one line.
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"I/O error at{where}: {exc.strerror or exc}", ExitCode.FAILED,
                     json_output)
    except Exception as exc:
        # A bug: one scrubbed line for the user; the redacted traceback with -v.
        log.get_logger(__name__).debug("internal error", exc_info=exc)
        return _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with -v for the "
                     "traceback and report it", ExitCode.FAILED, json_output)


def _fail(message: str, code: int, json_output: bool) -> int:
    scrubbed = log.REDACTOR.scrub(message)
    if json_output:
        print(json.dumps({"error": scrubbed, "exit_code": int(code)}))
    for line in scrubbed.splitlines():
        # One write per line: a log line of another thread (the signal watcher) must not
        # land between the message and its newline.
        sys.stderr.write(f"wicked-dr: error: {line}\n")
    sys.stderr.flush()
    return int(code)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command is None:
        build_parser().print_help()
        return int(ExitCode.USAGE)
    if args.command == "config" and args.config_action == "example":
        sys.stdout.write(example_yaml())
        return 0
    if args.command == "verify-data":
        # Needs no repository: it runs without a configuration file (logging from -v/-q).
        log.configure(_level("warning", args.verbose - args.quiet))
        _emit(args, _data(_verify_data(args)))
        return 0
    config = _load(args)
    if not _may_run_during_live_restore(args):
        from wicked_dr.engine.live_journal import refuse_while_restoring

        refuse_while_restoring(config.volume.path, config.state_dir)
    handler = _HANDLERS[args.command]
    result = _data(handler(config, args))
    _emit(args, result)
    if isinstance(result, dict) and result.get("ok") is False:
        # e.g. a token restore that could not put every token in place: the report is
        # printed, but scripts must not read success.
        print("wicked-dr: error: not every item is in place; see the report above",
              file=sys.stderr)
        return int(ExitCode.FAILED)
    return 0


def _may_run_during_live_restore(args: argparse.Namespace) -> bool:
    """While a live restore's journal exists only its --resume (and config) may run."""
    return (args.command in ("config", "daemon")  # the daemon's jobs refuse one by one
            or (args.command == "restore" and bool(args.resume)))


def _load(args: argparse.Namespace) -> Config:
    path = resolve_config_path(args.config, os.environ)
    config = load_config(path)
    log.REDACTOR.add(secret_values(config))
    level = _level(config.log.level, args.verbose - args.quiet)
    log.configure(level, config.log.format)
    return config


def _level(configured: str, shift: int) -> str:
    levels = ["debug", "info", "warning", "error"]
    index = min(max(levels.index(configured) - shift, 0), len(levels) - 1)
    return levels[index]


def _data(result: Any) -> Any:
    """An action's typed result as the JSON-able data ``--json`` prints."""
    from wicked_dr.actions.common import Result

    return result.to_json() if isinstance(result, Result) else result


def _emit(args: argparse.Namespace, result: Any) -> None:
    if result is None:
        return  # e.g. export --tar -: stdout carries the tar, not a byte more
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        print(_human(args.command, result))


def _human(command: str, result: Any) -> str:
    from wicked_dr.report import render

    return render(command, result)


# --- handlers: thin adapters from arguments to actions ---------------------------------------


def _with_progress(args: argparse.Namespace, title: str,
                   run: Callable[[Any], Any]) -> Any:
    from wicked_dr.progress import progress_reporter

    with progress_reporter(title, enabled=not args.json) as progress:
        return run(_options(args, progress))


def _options(args: argparse.Namespace, progress: Progress | None = None) -> RunOptions:
    """The action's RunOptions, with the token the signals cancel: from here on a first
    SIGTERM/SIGINT lets the action stop at its next safe point."""
    from wicked_dr.actions.common import RunOptions

    signals: SignalBridge = args.signals
    signals.defer()
    return RunOptions(lock_wait_s=args.lock_wait, progress=progress, cancel=signals.token)


def _init(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.init import run_init

    return run_init(config, create_bucket=args.create_bucket)


def _backup(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.backup import run_backup

    return _with_progress(args, "backup", lambda o: run_backup(config, force=args.force,
                                                               options=o))


def _snapshots(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.snapshots import run_snapshots

    return run_snapshots(config)


def _check(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.check import CheckFailed, run_check

    fraction = 1.0 if args.read_data else (args.read_data_subset or 0.0)
    try:
        return _with_progress(args, "check", lambda o: run_check(
            config, read_fraction=fraction, options=o))
    except CheckFailed as exc:
        _emit(args, _data(exc.result))  # every problem, as data with --json; then exit 3
        raise _AlreadyReported(exc) from exc


def _repair(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions import repair

    title = f"repair {args.repair_what}"
    if args.repair_what == "index":
        return _with_progress(args, title, lambda o: repair.run_repair_index(
            config, dry_run=args.dry_run, read_all=args.read_all_packs, options=o))
    if args.repair_what == "packs":
        return repair.run_repair_packs(config, args.packs, dry_run=args.dry_run,
                                       options=_options(args))
    return repair.run_repair_snapshots(config, forget=args.forget, dry_run=args.dry_run,
                                       options=_options(args))


def _prune(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.prune import run_prune

    return _with_progress(args, "prune", lambda o: run_prune(config, dry_run=args.dry_run,
                                                             options=o))


def _verify(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.verify import VerifyFailed, run_verify

    try:
        return run_verify(config, args.snapshot, options=_options(args))
    except VerifyFailed as exc:
        _emit(args, _data(exc.result))  # every problem, as data with --json; then exit 3
        raise _AlreadyReported(exc) from exc


def _drill(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.drill import DrillFailed, run_drill, run_drill_history

    if args.history:
        return run_drill_history(config)
    try:
        return run_drill(config, random_within=args.random_within,
                         report_dir=args.report_dir, options=_options(args))
    except DrillFailed as exc:
        _emit(args, _data(exc.result))  # the report, then exit 3
        raise _AlreadyReported(exc) from exc


def _export(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.export import run_export

    result = run_export(config, args.snapshot, args.tar, _options(args))
    if args.tar == "-":
        args.json = False
        return None
    return result


def _restore(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions import restore

    ref = str(args.snapshot)
    if args.target is not None:
        return _with_progress(args, "restore", lambda o: restore.run_restore_to_dir(
            config, ref, args.target, force=args.force, dry_run=args.dry_run,
            before=args.before, sources=args.source, options=o))
    if args.live or args.resume:
        return _restore_live(config, args, ref)
    if not args.tokens_only:
        raise _ModeRequired(RESTORE_MODES)
    if not args.dry_run:
        _confirm(args, "--tokens-only")
    return restore.run_restore_tokens(config, ref, dry_run=args.dry_run, before=args.before)


class _Operator:
    """The person at the terminal: sees steps and instructions on stderr, confirms."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def show(self, line: str) -> None:
        if self.args.quiet <= 0 or "ACTION" in line:
            sys.stderr.write(f"wicked-dr: {line}\n")
            sys.stderr.flush()

    def confirm(self, plan: dict[str, Any]) -> bool:
        from wicked_dr.report import render_plan

        sys.stderr.write(render_plan(plan) + "\n")
        _confirm(self.args, "--live")
        return True


def _restore_live(config: Config, args: argparse.Namespace, ref: str) -> Any:
    from wicked_dr.actions.restore_live import (
        LiveRestoreEnded,
        run_restore_live,
        run_restore_resume,
    )

    operator = _Operator(args)
    if args.live and not args.dry_run and not args.yes and not sys.stdin.isatty():
        _confirm(args, "--live")  # refuses before any I/O: nobody can answer
    try:
        if args.resume:
            return run_restore_resume(config, operator=operator, options=_options(args))
        return _with_progress(args, "stage", lambda o: run_restore_live(
            config, ref, before=args.before, dry_run=args.dry_run, tokens=args.tokens,
            allow_newer=args.allow_newer_data, operator=operator, options=o))
    except LiveRestoreEnded as exc:
        _emit(args, _data(exc.report))  # the report, then exit 7, 8 or 9
        raise _AlreadyReported(exc) from exc


def _kong_resync(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.actions.kong_resync import run_kong_resync

    return run_kong_resync(config, show=_Operator(args).show, options=_options(args))


def _daemon(config: Config, args: argparse.Namespace) -> Any:
    from wicked_dr.daemon.service import run_daemon

    signals: SignalBridge = args.signals
    signals.defer()  # a first SIGTERM stops the daemon cleanly; a second one at once
    run_daemon(config, signals.token)
    return None


def _confirm(args: argparse.Namespace, mode: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"restore {mode} changes live state; pass --yes to confirm "
                         "(no terminal to ask)")
    answer = input(f"restore {mode} changes live state. Type 'yes' to go on: ")
    if answer.strip().lower() != "yes":
        raise UsageError("not confirmed; nothing changed")


def _verify_data(args: argparse.Namespace) -> Any:
    from wicked_dr.actions.verify_data import VerifyDataFailed, run_verify_data

    try:
        return run_verify_data(args.directory, args.manifest)
    except VerifyDataFailed as exc:
        _emit(args, _data(exc.result))  # every problem, as data with --json; then exit 3
        raise _AlreadyReported(exc) from exc


def _config(config: Config, args: argparse.Namespace) -> Any:
    if args.config_action == "show":
        return masked_dict(config)
    return {"valid": True, "config": str(resolve_config_path(args.config, os.environ))}


_HANDLERS: dict[str, Callable[[Config, argparse.Namespace], Any]] = {
    "init": _init,
    "backup": _backup,
    "snapshots": _snapshots,
    "check": _check,
    "export": _export,
    "repair": _repair,
    "restore": _restore,
    "config": _config,
    "verify": _verify,
    "drill": _drill,
    "prune": _prune,
    "kong-resync": _kong_resync,
    "daemon": _daemon,
}

__all__ = ["ConfigError", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
