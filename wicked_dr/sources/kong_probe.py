"""The token probe: a snapshot's token stream loaded into a scratch PostgreSQL server and read
back, section by section.

On this machine the stream is read once (every blob verified, the whole stream against its
SHA-256) and split into one COPY text file per section; per section the probe keeps the row
count and the SHA-256 of its lines sorted bytewise, and checks the count against the stream's
trailer and the snapshot's manifest. The files, a shell script and the SQL that loads them go
into a scratch volume (streamed, nothing of this machine mounted). A scratch container of
``verify.postgres_image`` then runs, as the ``postgres`` user and with no network, the
image's own server binaries (found under ``/usr/lib/postgresql/*/bin`` or on PATH, never
the image's entrypoint): ``initdb`` and ``pg_ctl`` put the cluster and its unix socket in
the volume, one table per section with the header's columns and types is loaded with
``COPY ... FROM``, and ``COPY ... TO STDOUT`` reads every table back into
``LC_ALL=C sort | sha256sum`` and ``wc -l`` inside the container: only the counts and
checksums come back (an exec's output is capped), and they must equal this side's.

Section files and the cluster live in the volume, not on a tmpfs: a million tokens would not
fit in the scratch container's memory limit. This side sorts in bounded runs spilled to
``bench.spool_dir`` and merges them. The scratch server, the volume's tar and the sorted
digest are shared with the wicked_db probe (``pg_probe.py``).
"""

from __future__ import annotations

import re
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wicked_dr.errors import DockerError, IntegrityError
from wicked_dr.repository.snapshot import SourceRecord, StreamRef
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources import kong_stream, pg_probe
from wicked_dr.sources.base import ProbeBench, SnapshotReader

NAME = "kong_tokens"
MOUNT = pg_probe.MOUNT
SECTIONS_DIR = "sections"  # the section files, relative to the volume's root
SCRIPT = pg_probe.SCRIPT
LOAD_SQL = "load.sql"
SECTION_LIST = "sections.list"
SORT_RUN_BYTES = pg_probe.SORT_RUN_BYTES
sorted_lines_digest = pg_probe.sorted_lines_digest

# The token probe's steps after the shared ``start`` (pg_probe.py), as the postgres user.
_STEPS = r"""load)
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -f "$P/load.sql" </dev/null
    ;;
check)
    while read -r name; do
        "$PSQL" -X -q -v ON_ERROR_STOP=1 -c "COPY \"$name\" TO STDOUT" </dev/null >"$W/readback"
        sums=$(sorted_sum)  # an assignment: a failure inside ends the script (set -e)
        echo "section $name $sums"
    done <"$P/sections.list"
    ;;
"""
_SCRIPT = pg_probe.script("wicked-dr's token probe, inside a scratch container without "
                          "network (sources/kong_probe.py)", _STEPS)


@dataclass(frozen=True)
class HostSection:
    """One section as read on this machine."""

    index: int
    section: kong_stream.Section
    rows: int
    sha256: str  # of the section's lines, sorted bytewise

    @property
    def name(self) -> str:
        return self.section.name

    @property
    def file(self) -> str:
        """The section's file, relative to the volume's root."""
        return section_file(self.index, self.name)


def section_file(index: int, name: str) -> str:
    """Where the ``index``-th section (``name``) lies in the probe's volume."""
    return f"{SECTIONS_DIR}/{index}-{name}.copy"


def probe_tokens(reader: SnapshotReader, record: SourceRecord,
                 bench: ProbeBench) -> ProbeResult:
    """Load ``record``'s token stream into a scratch PostgreSQL server and read it back."""
    started = time.monotonic()
    if record.stream is None:
        return ProbeResult(NAME, (f"the {record.name} record of the snapshot holds no "
                                  "stream",), duration_s=0.0)
    # Before the stream is read: a missing image fails fast.
    bench.scratch.ensure_image(bench.postgres_image, bench.pull)
    with tempfile.TemporaryDirectory(prefix="token-probe-", dir=bench.spool_dir) as tmp:
        spool = Path(tmp)
        try:
            sections, problems = split_stream(reader, record.stream, record.metadata, spool)
        except IntegrityError as exc:
            return ProbeResult(NAME, (f"the token stream cannot be read: {exc.one_line()}",),
                               duration_s=pg_probe.since(started))
        figures: dict[str, float] = {f"rows_{s.name}": float(s.rows) for s in sections}
        figures["read_s"] = pg_probe.since(started)
        with tempfile.TemporaryFile(dir=spool) as tar:
            _write_tar(tar, sections, spool)
            tar.seek(0)
            volume = bench.scratch.volume("tokens")
            bench.scratch.fill(volume, tar, bench.postgres_image, MOUNT)
    if bench.before_check is not None:
        bench.before_check(volume)
    problems += _in_server(bench, volume, sections, figures, started)
    return ProbeResult(NAME, tuple(problems), (), pg_probe.since(started), figures)


# --- this side -----------------------------------------------------------------------------


def split_stream(reader: SnapshotReader, stream: StreamRef, metadata: Mapping[str, Any],
                 spool: Path, run_bytes: int = SORT_RUN_BYTES,
                 ) -> tuple[list[HostSection], list[str]]:
    """Read the stream once into ``spool/<section file>``; the sections and what is wrong
    with their counts (trailer against lines, manifest against trailer)."""
    header, data = kong_stream.split_header(reader.stream(stream))
    layout = kong_stream.parse_layout(header)
    sections_reader = kong_stream.SectionReader(data, marked=layout.version >= 2)
    (spool / SECTIONS_DIR).mkdir()
    sections = [_spool_section(index, section, sections_reader.section(), spool, run_bytes)
                for index, section in enumerate(layout.sections)]
    declared = kong_stream.declared_rows(layout, sections_reader)  # reads the trailer
    problems = []
    for section in sections:
        if section.rows != declared[section.name]:
            problems.append(f"section {section.name}: the stream holds {section.rows} rows, "
                            f"its trailer says {declared[section.name]}")
    problems += _against_manifest(layout, declared, metadata)
    return sections, problems


def _spool_section(index: int, section: kong_stream.Section, rows: Iterator[bytes],
                   spool: Path, run_bytes: int) -> HostSection:
    path = spool / section_file(index, section.name)
    last = b"\n"
    with open(path, "wb") as out:
        for chunk in rows:
            out.write(chunk)
            last = chunk[-1:] or last
    if last != b"\n":
        raise IntegrityError(f"the token stream's section {section.name} does not end with "
                             "a newline")
    count, digest = sorted_lines_digest(path, run_bytes)
    return HostSection(index, section, count, digest)


def _against_manifest(layout: kong_stream.Layout, declared: Mapping[str, int],
                      metadata: Mapping[str, Any]) -> list[str]:
    """The snapshot's manifest (``sections``, version 3; ``exported``) against the stream."""
    problems = []
    recorded = metadata.get("sections")
    if layout.version == 3 and isinstance(recorded, Mapping):
        for name in sorted(set(recorded) | set(declared)):
            if recorded.get(name) != declared.get(name):
                problems.append(f"section {name}: the manifest records {recorded.get(name)} "
                                f"rows, the stream {declared.get(name)}")
    exported = metadata.get("exported")
    tokens = declared.get(kong_stream.TOKENS, declared.get(kong_stream.JOINED))
    if isinstance(exported, int) and tokens is not None and exported != tokens:
        problems.append(f"the manifest records {exported} exported tokens, the stream holds "
                        f"{tokens}")
    return problems


def load_sql(sections: list[HostSection]) -> str:
    """One table per section with the header's columns and types, loaded from its file.
    Names and types were checked against strict patterns when the header was parsed."""
    statements = ["SET TimeZone = 'UTC';"]
    for section in sections:
        columns = ", ".join(f'"{c.name}" {c.type}' for c in section.section.columns)
        statements.append(f'CREATE TABLE "{section.name}" ({columns});')
        statements.append(f"COPY \"{section.name}\" FROM '{MOUNT}/{section.file}';")
    return "\n".join(statements) + "\n"


def _write_tar(out: IO[bytes], sections: list[HostSection], spool: Path) -> None:
    """The volume's content: the script, the SQL, the section list, the section files
    (readable by anybody) and a work directory the server's user can write."""
    with tarfile.open(fileobj=out, mode="w") as tar:
        pg_probe.add_dir(tar, SECTIONS_DIR, 0o755)
        pg_probe.add_work_dir(tar)
        pg_probe.add_bytes(tar, SCRIPT, _SCRIPT.encode(), 0o555)
        pg_probe.add_bytes(tar, LOAD_SQL, load_sql(sections).encode(), 0o444)
        pg_probe.add_bytes(tar, SECTION_LIST,
                           "".join(f"{s.name}\n" for s in sections).encode(), 0o444)
        for section in sections:
            pg_probe.add_file(tar, spool / section.file, section.file)


# --- the server's side ---------------------------------------------------------------------


def _in_server(bench: ProbeBench, volume: str, sections: list[HostSection],
               figures: dict[str, float], started: float) -> list[str]:
    """Start the server, load the sections, read them back; the problems found. An image
    whose server does not start, or a container that cannot read back what it loaded, says
    nothing about the snapshot: ``DockerError``, and no verdict is recorded."""
    server = pg_probe.ScratchServer(bench, volume, "token probe", started)
    figures["server_start_s"] = server.start()
    load = server.step("load")
    figures["load_s"] = load.duration_s
    if load.exit_code != 0:
        return [load_problem(load.exit_code, load.stderr, sections)]
    check = server.step("check")
    figures["check_s"] = check.duration_s
    if check.exit_code != 0:
        # Everything loaded: a failure now is the container's (its disk), not the data's.
        raise DockerError(f"reading the token sections back from the scratch server in "
                          f"{bench.postgres_image} failed (exit {check.exit_code}): "
                          f"{pg_probe.last_lines(check.stderr)}")
    return compare(sections, check.stdout)


def compare(sections: list[HostSection], output: str) -> list[str]:
    """The server's counts and checksums (``section NAME ROWS SHA256`` lines) against this
    side's, section by section."""
    found: dict[str, tuple[int, str]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "section" and parts[2].isdigit():
            found[parts[1]] = (int(parts[2]), parts[3])
    problems = []
    for section in sections:
        if section.name not in found:
            problems.append(f"section {section.name}: not read back from the scratch server")
            continue
        rows, digest = found[section.name]
        if rows != section.rows:
            problems.append(f"section {section.name}: {rows} rows read back, the snapshot "
                            f"holds {section.rows}")
        elif digest != section.sha256:
            problems.append(f"section {section.name}: checksum differs (the rows read back "
                            "are not the snapshot's)")
    return problems


_COPY_CONTEXT = re.compile(r"COPY (\w+), line (\d+)(?:, column (\w+))?")


def load_problem(exit_code: int, stderr: str, sections: list[HostSection]) -> str:
    """A failed load as one line naming the section, line and column, when psql said so.
    Quoted values are left out (a token's row would go into records and logs): only the
    section's column names stay."""
    columns = {c.name for s in sections for c in s.section.columns}
    error = pg_probe.first_error(stderr, columns)
    where = _COPY_CONTEXT.search(stderr)
    if where is None:
        return f"loading the sections into the scratch server failed (exit {exit_code}): " \
               f"{error}"
    column = f", column {where.group(3)}" if where.group(3) else ""
    return f"section {where.group(1)}: line {where.group(2)}{column} does not load into " \
           f"the scratch server: {error}"
