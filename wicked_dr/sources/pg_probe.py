"""What the database probes share (kong_probe.py, wicked_db_probe.py): a scratch PostgreSQL
server run from an image's own binaries, in a scratch volume, with no network.

A probe puts its files (section files, SQL, its part of the shell script) into a scratch
volume by streaming a tar; a scratch container of ``verify.postgres_image`` mounts it and
runs, as the ``postgres`` user, the script's steps with ``exec``: ``start`` (shared here:
``initdb`` and ``pg_ctl`` of the newest ``/usr/lib/postgresql/*/bin`` or of PATH, never the
image's entrypoint; the cluster and its unix socket in the volume, no TCP at all), then the
probe's own steps. Only what a step prints comes back (an exec's output is capped): counts
and checksums, never rows.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from wicked_dr.errors import DockerError
from wicked_dr.log import get_logger
from wicked_dr.sources.base import ProbeBench, ScratchOutcome, ScratchServiceHandle

log = get_logger(__name__)

MOUNT = "/probe"
WORK_DIR = "work"  # the cluster, its socket and the read-back files (writable by postgres)
SCRIPT = "probe.sh"
USER = "postgres"  # the server refuses root; both kinds of image have this user
# The environment of every command in the server's container.
ENVIRONMENT = {"LC_ALL": "C", "PGCLIENTENCODING": "UTF8", "PGTZ": "UTC",
               "PGHOST": f"{MOUNT}/{WORK_DIR}", "PGUSER": USER, "PGDATABASE": "postgres"}
# This side sorts a section's lines in runs of about this size (then merges them from files).
SORT_RUN_BYTES = 64 * 1024 * 1024
IMAGE_HINT = ("set verify.postgres_image to an official postgres image or a Debian image "
              "with the postgresql package")

# POSIX sh: the images may have nothing else (dash on Debian, busybox ash on Alpine). Run as
# the postgres user with a step's name; ``start`` is shared, a probe adds its own cases.
_PRELUDE = r"""set -eu
P=/probe
W=$P/work

# The server's binaries: the newest /usr/lib/postgresql/<major>/bin (Debian's package and
# the official images), else whatever PATH holds.
find_bin() {
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/psql" ]; then
            echo "$d"; return 0
        fi
    done
    i=$(command -v initdb 2>/dev/null || true)
    if [ -n "$i" ] && [ -x "$(dirname "$i")/pg_ctl" ] && command -v psql >/dev/null 2>&1; then
        dirname "$i"; return 0
    fi
    echo "no PostgreSQL server binaries (initdb, pg_ctl, psql) in this image" >&2
    return 1
}

# A read-back ($W/readback, removed): its line count and the SHA-256 of its lines sorted
# bytewise, on one line; the sort spills to $W, never to a small /tmp.
sorted_sum() {
    rows=$(wc -l <"$W/readback")
    LC_ALL=C sort -T "$W" -o "$W/sorted" "$W/readback"
    sum=$(sha256sum <"$W/sorted" | cut -d' ' -f1)
    rm -f "$W/readback" "$W/sorted"
    echo "$rows $sum"
}

BIN=$(find_bin)
PSQL=$BIN/psql
[ -x "$PSQL" ] || PSQL=$(command -v psql)

case "$1" in
start)
    "$BIN/postgres" --version
    if ! "$BIN/initdb" -D "$W/data" -U postgres -A trust -E UTF8 --locale=C -N \
            >"$W/initdb.log" 2>&1; then
        tail -n 5 "$W/initdb.log" >&2; exit 1
    fi
    # No TCP at all: the socket in the work directory is the only way in.
    OPTS="-c listen_addresses='' -c unix_socket_directories='$W' -c TimeZone=UTC"
    OPTS="$OPTS -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    OPTS="$OPTS -c max_connections=5"
    if ! "$BIN/pg_ctl" -D "$W/data" -l "$W/server.log" -w -t 120 -o "$OPTS" start \
            >/dev/null; then
        tail -n 5 "$W/server.log" >&2; exit 1
    fi
    ;;
"""


def script(title: str, steps: str) -> str:
    """The probe's shell script: the shared ``start`` step, then ``steps`` (``case``
    branches, each ended by ``;;``) of the probe named in ``title``."""
    names = "|".join(["start", *re.findall(r"^([a-z_]+)\)$", steps, re.MULTILINE)])
    return (f"#!/bin/sh\n# {title}\n" + _PRELUDE + steps
            + f'*)\n    echo "usage: probe.sh {names}" >&2; exit 2\n    ;;\nesac\n')


# --- the volume's content --------------------------------------------------------------------


def add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    """A directory entry owned by root."""
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    """A file entry holding ``data``, owned by root."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    """The file ``path`` as ``name``, readable by anybody, owned by root (streamed)."""
    info = tar.gettarinfo(str(path), arcname=name)
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, "", ""
    with open(path, "rb") as data:
        tar.addfile(info, data)


def add_work_dir(tar: tarfile.TarFile) -> None:
    """The work directory the server's user writes its cluster into."""
    add_dir(tar, WORK_DIR, 0o1777)


def sorted_lines_digest(path: Path, run_bytes: int = SORT_RUN_BYTES) -> tuple[int, str]:
    """How many lines ``path`` holds, and the SHA-256 of them sorted bytewise (what
    ``LC_ALL=C sort | sha256sum`` prints). Sorted in runs of about ``run_bytes`` spilled
    to unlinked files beside ``path`` and merged, so memory stays bounded."""
    count = 0
    with ExitStack() as stack:
        runs: list[IO[bytes]] = []
        with open(path, "rb") as source:
            while lines := source.readlines(run_bytes):
                count += len(lines)
                lines.sort()
                run = stack.enter_context(tempfile.TemporaryFile(dir=path.parent))
                run.writelines(lines)
                run.seek(0)
                runs.append(run)
        digest = hashlib.sha256()
        for line in heapq.merge(*runs):
            digest.update(line)
        return count, digest.hexdigest()


# --- the server ------------------------------------------------------------------------------


class ScratchServer:
    """A PostgreSQL server started in a scratch container of ``bench.postgres_image`` on the
    filled ``volume``; ``step(name)`` runs one step of the probe's script in it. Each step
    gets what remains of ``bench.timeout_s`` counted from ``started``."""

    def __init__(self, bench: ProbeBench, volume: str, probe: str, started: float) -> None:
        self._bench = bench
        self._started = started
        self._probe = probe
        try:
            self._service: ScratchServiceHandle = bench.scratch.service(
                bench.postgres_image, mounts={volume: MOUNT}, user=USER)
        except DockerError as exc:
            raise DockerError(f"the {probe}'s image {bench.postgres_image} cannot run its "
                              f"server as {USER}: {exc.one_line()}; {IMAGE_HINT}") from None

    def step(self, what: str, environment: Mapping[str, str] | None = None) -> ScratchOutcome:
        """Run ``probe.sh what`` as the postgres user, with the shared environment (plus
        ``environment``)."""
        remaining = max(1.0, self._bench.timeout_s - (time.monotonic() - self._started))
        return self._service.exec(["sh", f"{MOUNT}/{SCRIPT}", what], USER,
                                  timeout_s=remaining,
                                  environment={**ENVIRONMENT, **(environment or {})},
                                  cancel=self._bench.cancel)

    def start(self) -> float:
        """Initialise and start the cluster; the seconds it took. An image whose server does
        not start says nothing about the snapshot: DockerError, no verdict."""
        start = self.step("start")
        if start.exit_code != 0:
            raise DockerError(f"no PostgreSQL server could be started in "
                              f"{self._bench.postgres_image} (exit {start.exit_code}): "
                              f"{last_lines(start.stderr)}; {IMAGE_HINT}")
        log.info(f"{self._probe}: scratch server up", server=start.stdout.strip(),
                 seconds=start.duration_s)
        return start.duration_s


# --- what came back --------------------------------------------------------------------------

_QUOTED = re.compile(r'"([^"]*)"')


def first_error(stderr: str, names: set[str]) -> str:
    """psql's first ``ERROR:`` as one line (else the last lines of ``stderr``), quoted
    values left out unless they are one of ``names`` (columns, tables): a row's value must
    not go into records and logs."""
    error = next((line.split("ERROR:", 1)[1].strip() for line in stderr.splitlines()
                  if "ERROR:" in line), last_lines(stderr))
    return _QUOTED.sub(lambda m: m.group(0) if m.group(1) in names else '"..."', error)


def last_lines(text: str, count: int = 3) -> str:
    """The last ``count`` non-blank lines of ``text`` joined into one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"


def since(started: float) -> float:
    """Seconds since ``started`` (monotonic), rounded to milliseconds."""
    return round(time.monotonic() - started, 3)
