"""The wicked_db probe: a snapshot's wicked_db stream loaded into a scratch PostgreSQL server
the way a restore loads it, read back, and wicked's data model checked on its rows.

On this machine the stream is read once (every blob verified, the whole stream against its
SHA-256; each section's rows and SHA-256 against the trailer, the trailer against the
snapshot's manifest) and split into one COPY text file per table. A damaged stream is a
problem, not a crash, and nothing is started for it.

In a scratch container of ``verify.postgres_image`` (no network, as ``postgres``, the
cluster and its socket in the scratch volume: ``pg_probe.py``, shared with the token probe)
the restore's own psql script (``wicked_db.load_psql``: the same statements in the same
order as ``wicked_db_load.py``, one transaction) creates the schema under its recorded
name, runs ``pre_data``, ``\\copy``-loads each section's file, sets the sequences, runs the
model checks below and then ``post_data`` (keys, foreign keys, indexes, wicked's trigger),
and commits. A load that fails (a value that does not parse, a key or foreign key that does
not hold) is a problem naming the table. Then each table is read back with its section's
own query (``COPY (SELECT <columns> FROM <schema>.<table> ORDER BY <order_by>) TO STDOUT``,
the export's session settings) into ``sha256sum`` inside the container: it must equal the
trailer's SHA-256. The scratch cluster sorts text bytewise (``C``); when the source's
collation ordered a table's text keys differently, the rows sorted bytewise must still
equal the section's lines sorted bytewise. Only counts, checksums and capped lists of ids
come back, never rows.

The model checks (wicked's relations, as ``verify_data.py`` checks them on the JSON volume)
run inside the load's transaction after the rows and before ``post_data``, so that they
still report when a foreign key then refuses the load. Problems are what portal-api's own
schema guarantees (foreign keys with ``ON DELETE CASCADE``: a row that breaks one was not
written by portal-api, and the restore's load fails on it): owners without their user or
application, subscriptions without their application, approvals without their
subscription, registrations, verifications and grants without their user, webhook events
without their listener. Warnings are wicked's normal untidiness (no foreign key forbids it
and portal-api works with it): an application without any owner (portal-api refuses to
remove the last owner or a user who owns applications, but the schema does not), access
tokens of users that no longer exist (they expire), grants for applications that no longer
exist.
"""

from __future__ import annotations

import json
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wicked_dr.errors import DockerError, IntegrityError
from wicked_dr.log import get_logger
from wicked_dr.repository.snapshot import SourceRecord, StreamRef
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources import pg_probe
from wicked_dr.sources.base import ProbeBench, SnapshotReader
from wicked_dr.sources.wicked_db import copy_text_lines, load_psql
from wicked_dr.sources.wicked_db_stream import STREAM_NAME, Header, StreamReader, TableSection

log = get_logger(__name__)

NAME = STREAM_NAME
SECTIONS_DIR = "sections"  # the section files, relative to the volume's root
READBACK_DIR = "readback"  # one COPY ... TO STDOUT per table
LOAD_PSQL = "load.psql"
TABLE_LIST = "tables.list"
CHECK_PREFIX = "wdr-check "
SAMPLE = 10  # ids named per check at most
# The export's session (pg_copy.connect): the read-back bytes depend on these.
SESSION = {"PGOPTIONS": "-c DateStyle=ISO -c IntervalStyle=postgres "
                        "-c extra_float_digits=3 -c TimeZone=UTC"}

# The wicked_db probe's steps after the shared ``start``, as the postgres user.
_STEPS = r"""load)
    "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -f "$P/load.psql" </dev/null
    ;;
check)
    while read -r name file; do
        "$PSQL" -X -q -v ON_ERROR_STOP=1 -f "$P/$file" </dev/null >"$W/readback"
        ordered=$(sha256sum <"$W/readback" | cut -d' ' -f1)
        sums=$(sorted_sum)  # an assignment: a failure inside ends the script (set -e)
        set -- $sums
        echo "table $name $1 $ordered $2"
    done <"$P/tables.list"
    ;;
"""
_SCRIPT = pg_probe.script("wicked-dr's wicked_db probe, inside a scratch container without "
                          "network (sources/wicked_db_probe.py)", _STEPS)


# --- wicked's relations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """Every ``table.column`` (not NULL) must name a ``target.target_column``; rows that do
    not are listed by ``id_column`` (with the dangling value). ``problem`` says whether
    portal-api guarantees it (a foreign key) or leaves it broken (a warning)."""

    key: str
    table: str
    column: str
    target: str
    target_column: str
    problem: bool
    what: str  # what one offending row is, for the message
    id_column: str = "id"

    def applies(self, columns: Mapping[str, set[str]]) -> bool:
        """Whether the snapshot's schema has the tables and columns the check reads."""
        return ({self.column, self.id_column} <= columns.get(self.table, set())
                and self.target_column in columns.get(self.target, set()))

    def sql(self) -> str:
        """A query printing one ``wdr-check {json}`` line: how many rows break the relation
        and the first SAMPLE of them (id and dangling value)."""
        return (
            f"SELECT '{CHECK_PREFIX}' || json_build_object('check', '{self.key}', "
            "'count', count(*), 'sample', coalesce(json_agg(json_build_array(x.id, x.value) "
            f"ORDER BY x.id) FILTER (WHERE x.n <= {SAMPLE}), '[]'))::text FROM (\n"
            f"  SELECT d.id, d.value, row_number() OVER (ORDER BY d.id) AS n FROM (\n"
            f'    SELECT DISTINCT t."{self.id_column}"::text AS id, t."{self.column}"::text '
            f'AS value FROM "{self.table}" t WHERE t."{self.column}" IS NOT NULL\n'
            f'    AND NOT EXISTS (SELECT 1 FROM "{self.target}" r WHERE '
            f'r."{self.target_column}" = t."{self.column}")) d) x;\n')


RELATIONS = (
    Relation("owners_users", "owners", "users_id", "users", "id", True,
             "owner rows whose user does not exist"),
    Relation("owners_applications", "owners", "applications_id", "applications", "id", True,
             "owner rows whose application does not exist"),
    Relation("subscriptions_applications", "subscriptions", "applications_id",
             "applications", "id", True, "subscriptions whose application does not exist"),
    Relation("approvals_subscriptions", "approvals", "subscriptions_id", "subscriptions",
             "id", True, "approvals whose subscription does not exist"),
    Relation("registrations_users", "registrations", "users_id", "users", "id", True,
             "registrations whose user does not exist"),
    Relation("verifications_users", "verifications", "users_id", "users", "id", True,
             "verifications whose user does not exist"),
    Relation("grants_users", "grants", "users_id", "users", "id", True,
             "grants whose user does not exist"),
    Relation("webhook_events_listeners", "webhook_events", "webhook_listeners_id",
             "webhook_listeners", "id", True,
             "webhook events whose listener does not exist"),
    Relation("applications_owners", "applications", "id", "owners", "applications_id", False,
             "applications without any owner (only an admin can reach them)"),
    # Listed by the missing user only: a token's row is a credential.
    Relation("access_tokens_users", "access_tokens", "users_id", "users", "id", False,
             "users with access tokens who no longer exist (the tokens expire)",
             id_column="users_id"),
    Relation("grants_applications", "grants", "application_id", "applications", "id", False,
             "grants for applications that no longer exist"),
)


def model_checks(header: Header) -> tuple[list[Relation], str]:
    """The relations the snapshot's schema has the columns for, and their SQL."""
    columns = {s.name: set(s.column_names) for s in header.sections}
    relations = [r for r in RELATIONS if r.applies(columns)]
    return relations, "-- wicked-dr: wicked's model checks\n" + "".join(
        r.sql() for r in relations) + "\n"


def check_findings(relations: list[Relation], output: str) -> tuple[list[str], list[str]]:
    """The ``wdr-check`` lines of the load's output as (problems, warnings)."""
    found: dict[str, dict[str, Any]] = {}
    for line in output.splitlines():
        if line.startswith(CHECK_PREFIX):
            try:
                doc = json.loads(line[len(CHECK_PREFIX):])
            except ValueError:
                continue
            if isinstance(doc, dict):
                found[str(doc.get("check"))] = doc
    problems: list[str] = []
    warnings: list[str] = []
    for relation in relations:
        doc = found.get(relation.key)
        count = int(doc.get("count", 0)) if doc else 0
        if count:
            (problems if relation.problem else warnings).append(
                _finding(relation, count, doc.get("sample", []) if doc else []))
    return problems, warnings


def _finding(relation: Relation, count: int, sample: Any) -> str:
    pairs = [p for p in sample if isinstance(p, list) and len(p) == 2] \
        if isinstance(sample, list) else []
    if relation.id_column == relation.column:  # listed by the value itself
        names = ", ".join(str(p[0]) for p in pairs)
    else:
        names = ", ".join(f"{p[0]} ({relation.column} {p[1]})" for p in pairs)
    more = f" and {count - len(pairs)} more" if count > len(pairs) else ""
    return f"table {relation.table}: {count} {relation.what}: {names}{more}"


# --- this side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostTable:
    """One section as read on this machine: its rows, the trailer's SHA-256 (of the
    section's bytes in stream order) and the SHA-256 of its lines sorted bytewise."""

    index: int
    section: TableSection
    rows: int
    sha256: str
    sorted_sha256: str

    @property
    def name(self) -> str:
        return self.section.name

    @property
    def file(self) -> str:
        """The section's file, relative to the volume's root."""
        return f"{SECTIONS_DIR}/{self.index}-{self.name}.copy"

    @property
    def readback(self) -> str:
        """The file of the query that reads the table back."""
        return f"{READBACK_DIR}/{self.index}-{self.name}.sql"


def split_stream(reader: SnapshotReader, stream: StreamRef, metadata: Mapping[str, Any],
                 spool: Path) -> tuple[Header, list[HostTable], list[str]]:
    """Read the stream once into ``spool/<section file>``, the trailer checked
    (IntegrityError); the header, the tables, and where the manifest disagrees."""
    stream_reader = StreamReader(reader.stream(stream))
    header = stream_reader.header
    (spool / SECTIONS_DIR).mkdir()
    files = []
    for index, (section, rows) in enumerate(stream_reader.sections()):
        path = spool / f"{SECTIONS_DIR}/{index}-{section.name}.copy"
        with open(path, "wb") as out:
            for chunk in rows:
                out.write(chunk)
        files.append((index, section, path))
    trailer = stream_reader.check_trailer()
    tables = []
    for index, section, path in files:
        count, sorted_sha = pg_probe.sorted_lines_digest(path)
        digest = stream_reader.digests[section.name]
        tables.append(HostTable(index, section, count, digest.sha256, sorted_sha))
    return header, tables, _against_manifest(trailer.get("rows", {}), metadata)


def _against_manifest(declared: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[str]:
    recorded = metadata.get("rows")
    if not isinstance(recorded, Mapping):
        return []
    return [f"table {name}: the manifest records {recorded.get(name)} rows, the stream "
            f"{declared.get(name)}" for name in sorted(set(recorded) | set(declared))
            if recorded.get(name) != declared.get(name)]


def readback_sql(schema: str, section: TableSection) -> str:
    """The section's own query: its columns in its order, from the schema it was taken
    from. Names were checked against a strict pattern when the header was parsed."""
    columns = ", ".join(f'"{c}"' for c in section.column_names)
    order = ", ".join(f'"{c}"' for c in section.order_by)
    return (f'COPY (SELECT {columns} FROM "{schema}"."{section.name}" ORDER BY {order}) '
            "TO STDOUT;\n")


def probe_script(header: Header, tables: list[HostTable]) -> tuple[list[Relation], str]:
    """The restore's load script with the sections' files and the model checks."""
    files = {t.name: f"{pg_probe.MOUNT}/{t.file}" for t in tables}
    relations, checks = model_checks(header)
    return relations, load_psql(header, copy_text_lines(header, lambda s: files[s.name]),
                                before_post_data=checks)


def _write_tar(out: IO[bytes], header: Header, tables: list[HostTable], script: str,
               spool: Path) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        pg_probe.add_dir(tar, SECTIONS_DIR, 0o755)
        pg_probe.add_dir(tar, READBACK_DIR, 0o755)
        pg_probe.add_work_dir(tar)
        pg_probe.add_bytes(tar, pg_probe.SCRIPT, _SCRIPT.encode(), 0o555)
        pg_probe.add_bytes(tar, LOAD_PSQL, script.encode(), 0o444)
        pg_probe.add_bytes(tar, TABLE_LIST, "".join(
            f"{t.name} {t.readback}\n" for t in tables).encode(), 0o444)
        for table in tables:
            pg_probe.add_bytes(tar, table.readback,
                               readback_sql(header.schema, table.section).encode(), 0o444)
            pg_probe.add_file(tar, spool / table.file, table.file)


# --- the probe ------------------------------------------------------------------------------


def probe_wicked_db(reader: SnapshotReader, record: SourceRecord,
                    bench: ProbeBench) -> ProbeResult:
    """Load ``record``'s stream into a scratch PostgreSQL server, read it back, check
    wicked's relations on its rows."""
    started = time.monotonic()
    if record.stream is None:
        return ProbeResult(NAME, (f"the {record.name} record of the snapshot holds no "
                                  "stream",), duration_s=0.0)
    bench.scratch.ensure_image(bench.postgres_image, bench.pull)  # fails before reading
    with tempfile.TemporaryDirectory(prefix="wicked-db-probe-", dir=bench.spool_dir) as tmp:
        spool = Path(tmp)
        try:
            header, tables, problems = split_stream(reader, record.stream, record.metadata,
                                                    spool)
        except IntegrityError as exc:
            return ProbeResult(NAME, (f"the wicked_db stream cannot be read: "
                                      f"{exc.one_line()}",), duration_s=pg_probe.since(started))
        figures: dict[str, float] = {"tables": float(len(tables)),
                                     "rows": float(sum(t.rows for t in tables))}
        figures.update({f"rows_{t.name}": float(t.rows) for t in tables})
        figures["read_s"] = pg_probe.since(started)
        relations, script = probe_script(header, tables)
        with tempfile.TemporaryFile(dir=spool) as tar:
            _write_tar(tar, header, tables, script, spool)
            tar.seek(0)
            volume = bench.scratch.volume("wicked-db")
            bench.scratch.fill(volume, tar, bench.postgres_image, pg_probe.MOUNT)
    if bench.before_check is not None:
        bench.before_check(volume)
    found, warnings = _in_server(bench, volume, header, tables, relations, figures, started)
    log.info("wicked_db probe done", tables=len(tables), problems=len(problems + found),
             warnings=len(warnings))
    return ProbeResult(NAME, tuple(problems + found), tuple(warnings),
                       pg_probe.since(started), figures)


def _in_server(bench: ProbeBench, volume: str, header: Header, tables: list[HostTable],
               relations: list[Relation], figures: dict[str, float],
               started: float) -> tuple[list[str], list[str]]:
    """Start the server, load, check, read back: (problems, warnings). An image whose server
    does not start, or a container that cannot read back what it loaded, says nothing about
    the snapshot: DockerError, and no verdict is recorded."""
    server = pg_probe.ScratchServer(bench, volume, "wicked_db probe", started)
    figures["server_start_s"] = server.start()
    load = server.step("load", SESSION)
    figures["load_s"] = load.duration_s
    problems, warnings = check_findings(relations, load.stdout)
    figures["model_checks"] = float(len(relations))
    if load.exit_code != 0:
        return [*problems, load_problem(load.exit_code, load.stderr, header)], warnings
    check = server.step("check", SESSION)
    figures["check_s"] = check.duration_s
    if check.exit_code != 0:
        raise DockerError(f"reading wicked's tables back from the scratch server in "
                          f"{bench.postgres_image} failed (exit {check.exit_code}): "
                          f"{pg_probe.last_lines(check.stderr)}")
    read_back, reordered = compare(tables, check.stdout)
    figures["tables_reordered"] = float(reordered)
    return problems + read_back, warnings


def compare(tables: list[HostTable], output: str) -> tuple[list[str], int]:
    """The server's ``table NAME ROWS ORDERED_SHA SORTED_SHA`` lines against this side's:
    the problems, and how many tables matched only sorted bytewise (another collation)."""
    found: dict[str, tuple[int, str, str]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "table" and parts[2].isdigit():
            found[parts[1]] = (int(parts[2]), parts[3], parts[4])
    problems = []
    reordered = 0
    for table in tables:
        if table.name not in found:
            problems.append(f"table {table.name}: not read back from the scratch server")
            continue
        rows, ordered, sorted_sha = found[table.name]
        if rows != table.rows:
            problems.append(f"table {table.name}: {rows} rows read back, the snapshot holds "
                            f"{table.rows}")
        elif ordered != table.sha256:
            if sorted_sha == table.sorted_sha256:
                reordered += 1
            else:
                problems.append(f"table {table.name}: checksum differs (the rows read back "
                                "are not the snapshot's)")
    return problems, reordered


_COPY_CONTEXT = re.compile(r"COPY (\w+), line (\d+)(?:, column (\w+))?")
_ON_TABLE = re.compile(r'(?:on table|relation|table) "(\w+)"')
_CONSTRAINT = re.compile(r"CONSTRAINT (\w+)|INDEX (\w+)|TRIGGER (\w+)")


def load_problem(exit_code: int, stderr: str, header: Header) -> str:
    """A failed load as one line naming the table (and line and column, for a row that does
    not parse). Quoted values are left out: only names of the schema stay."""
    names = {header.schema} | {s.name for s in header.sections} \
        | {c for s in header.sections for c in s.column_names} \
        | {n for statement in header.post_data for m in _CONSTRAINT.finditer(statement)
           for n in m.groups() if n}
    error = pg_probe.first_error(stderr, names)
    where = _COPY_CONTEXT.search(stderr)
    if where is not None:
        column = f", column {where.group(3)}" if where.group(3) else ""
        return (f"table {where.group(1)}: line {where.group(2)}{column} does not load into "
                f"the scratch server: {error}")
    table = _ON_TABLE.search(error)
    if table is not None:
        return f"table {table.group(1)}: the snapshot does not load into the scratch " \
               f"server: {error}"
    return f"loading the wicked_db stream into the scratch server failed (exit " \
           f"{exit_code}): {error}"
