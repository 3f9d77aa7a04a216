"""Benchmark: Kong token backup/restore vs. pg_dump and psql \\copy on the same server.

Run by hand (not part of the test suite), as root or a user that can run PostgreSQL:

    python -m bench.bench_kong_tokens --tokens 1000000 --generation 0.14

It starts a throwaway cluster (tests/fixtures/postgres.py), fills Kong's tables with
``--tokens`` unexpired tokens (``--expired`` of them made expired), runs VACUUM ANALYZE and a
CHECKPOINT (so that no step is timed while the load is still being written out), then
measures rows/s and peak RSS. Results go to stdout as JSON; record them in
bench/README_kong_tokens.md.

References run on the same server and write to a file, as ours does:

* backup: ``pg_dump -t oauth2_tokens`` (the issue's yardstick, though it lacks what re-attaching
  and expiry need), ``pg_dump`` of every table our export reads (the same information) and
  ``psql`` running our COPY statements with ``\\copy`` in one transaction (the same rows).
  ``--runs`` rounds (default 3), each running ours and every reference once, interleaved so
  that drift on a noisy machine hits all alike; best and median are reported, ratios from
  the best.
* restore: ``psql \\copy oauth2_tokens FROM`` into the same table with the same indexes and
  foreign keys; on 0.x also ``psql \\copy ttls FROM`` (we write both tables).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tests.fixtures import kong_data
from tests.fixtures.postgres import OS_USER, PgServer, _free_port, _newest_bin
from wicked_dr.config import KongTokensConfig
from wicked_dr.repository.snapshot import StreamRef
from wicked_dr.sources import kong_export
from wicked_dr.sources.base import BackupContext
from wicked_dr.sources.kong_export import expired_tokens, export_plan
from wicked_dr.sources.kong_restore import restore_tokens
from wicked_dr.sources.kong_schema import detect_schema
from wicked_dr.sources.kong_tokens import KongTokensSource
from wicked_dr.testing.sample_volume import generate


class SpoolSink:
    """Hashes the stream and spools it to a file so restore can be timed on its own."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add_stream(self, name: str, chunks: Iterable[bytes]) -> StreamRef:
        digest = hashlib.sha256()
        size = 0
        with self.path.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return StreamRef(size, digest.hexdigest(), (digest.hexdigest(),))


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _summary(rows: int, seconds: list[float]) -> dict[str, Any]:
    """Rate of the best run, and the median's seconds (runs on a noisy machine)."""
    return _rate(rows, min(seconds)) | {"median_s": round(statistics.median(seconds), 2),
                                        "runs_s": [round(x, 2) for x in seconds]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--generation", default="0.14", choices=kong_data.GENERATIONS)
    parser.add_argument("--expired", type=int, default=0,
                        help="make this many of the tokens expired (exercises the filter)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved backup rounds")
    parser.add_argument("--expired-ids-max", type=int, default=kong_export.EXPIRED_IDS_MAX,
                        help="carry at most this many expired token ids into the token COPY "
                             "(0.x); 0 forces the server-side anti-join")
    parser.add_argument("--backup-only", action="store_true",
                        help="skip the restore measurements")
    args = parser.parse_args()
    kong_export.EXPIRED_IDS_MAX = args.expired_ids_max
    bin_dir = _newest_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found under /usr/lib/postgresql")
    base = Path(tempfile.mkdtemp(prefix="wdr-bench-pg-"))
    server = PgServer(bin_dir, base, _free_port(), uuid.uuid4().hex)
    if os.geteuid() == 0:
        shutil.chown(base, OS_USER, OS_USER)
    server.socket_dir.mkdir()
    server._chown(server.socket_dir)
    server.init_and_start()
    try:
        print(json.dumps(_run(server, bin_dir, base, args.tokens, args.generation,
                              args.expired, args.runs, backup_only=args.backup_only),
                         indent=2))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _expire(conn: Any, generation: str, count: int) -> None:
    """Make ``count`` tokens expired, as they are between two of Kong's cleanups."""
    if generation in ("0.11", "0.14"):
        conn.execute("UPDATE ttls SET expire_at = (now() - interval '1 hour') AT TIME ZONE "
                     "'UTC' WHERE ctid IN (SELECT ctid FROM ttls LIMIT %s)", (count,))
    else:
        conn.execute("UPDATE oauth2_tokens SET ttl = now() - interval '1 hour' "
                     "WHERE ctid IN (SELECT ctid FROM oauth2_tokens LIMIT %s)", (count,))


def _psql_copy_statements(dsn: str, base: Path) -> list[str]:
    """psql arguments running our export's COPY statements into files, in one transaction.

    The statements go into a script file: with expired tokens the token COPY carries their
    ids, more than a command-line argument may hold."""
    with kong_data.connect(dsn) as conn:
        schema = detect_schema(conn)
        plan = export_plan(conn, schema, expired=expired_tokens(conn, schema))
        statements = [query.as_string(conn)[len("COPY "):-len(" TO STDOUT")]
                      for _, query in plan]
    lines = ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;"]
    for index, select in enumerate(statements):
        lines.append(f"\\copy {select} TO '{base / f'section{index}.copy'}'")
    script = base / "copy_out.sql"
    script.write_text("\n".join([*lines, "COMMIT;", ""]))
    return ["-f", str(script)]


def _run(server: PgServer, bin_dir: Path, base: Path, n: int, generation: str, expired: int,
         runs: int, *, backup_only: bool = False) -> dict[str, Any]:
    dsn = server.create_database("kong")
    volume = base / "volume"
    generate(volume, 300, seed=1, untidy=False)
    subs = kong_data.subscriptions_from_volume(volume)
    with kong_data.connect(dsn) as conn:
        kong_data.load_ddl(conn, generation)
        kong_data.sync_like_adapter(conn, generation, subs)
        t0 = time.perf_counter()
        kong_data.bulk_tokens(conn, generation, n)
        if expired:
            _expire(conn, generation, expired)
        conn.execute("VACUUM ANALYZE")
        populate_s = time.perf_counter() - t0
        conn.execute("CHECKPOINT")
    env = {**os.environ, "PGPASSWORD": server.password}
    conn_args = ["-h", server.host, "-p", str(server.port), "-U", "wdr_admin", "-d", "kong"]
    config = KongTokensConfig(dsn=SecretStr(dsn), statement_timeout_s=3600)
    rss_start = _peak_rss_mib()
    results: dict[str, Any] = {"tokens": n, "expired": expired, "generation": generation,
                               "populate_s": round(populate_s, 1), "runs": runs}
    with kong_data.connect(dsn) as conn:
        tables = sorted(detect_schema(conn).tables - {"consumers", "workspaces"})
    dump_file = base / "dump.sql"
    pg_dump = [str(bin_dir / "pg_dump"), *conn_args, "--data-only", "-f", str(dump_file)]
    psql = [str(bin_dir / "psql"), *conn_args, "-v", "ON_ERROR_STOP=1"]
    spool = base / "stream.bin"
    meta: dict[str, Any] = {}

    def ours() -> None:
        meta.update(KongTokensSource(config).backup(SpoolSink(spool), BackupContext()).metadata)

    steps: dict[str, Any] = {
        "backup": ours,
        "pg_dump_tokens_table": [*pg_dump, "-t", "oauth2_tokens"],
        "pg_dump_same_tables": [*pg_dump, *(arg for t in tables for arg in ("-t", t))],
        "psql_copy_out_same_statements": [*psql, *_psql_copy_statements(dsn, base)],
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(runs):
        for name, step in steps.items():
            t0 = time.perf_counter()
            if callable(step):
                step()
            else:
                subprocess.run(step, check=True, env=env, stdout=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - t0)
    for name, times in seconds.items():
        results[name] = _summary(n, times)
    results["backup"] |= {"bytes": meta["size"], "sections": meta["sections"],
                          "skipped_expired": meta["skipped_expired"]}
    results["pg_dump_same_tables"]["tables"] = tables
    results["rss_after_backup_mib"] = round(_peak_rss_mib(), 1)
    results["expired_ids_max"] = kong_export.EXPIRED_IDS_MAX
    backup_rate = results["backup"]["rows_per_s"]
    for reference in ("pg_dump_tokens_table", "pg_dump_same_tables",
                      "psql_copy_out_same_statements"):
        results[f"backup_vs_{reference}"] = _ratio(backup_rate, results[reference])
        results[f"backup_vs_{reference}_median"] = round(
            results[reference]["median_s"] / results["backup"]["median_s"], 2)
    if backup_only:
        results["rss_start_mib"] = round(rss_start, 1)
        return results
    copy_file = base / "tokens.copy"
    subprocess.run([*psql, "-c", f"\\copy oauth2_tokens TO '{copy_file}'"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    zero_x = generation in ("0.11", "0.14")
    ttls_file = base / "ttls.copy"
    if zero_x:
        subprocess.run([*psql, "-c", "\\copy (SELECT * FROM ttls WHERE table_name = "
                        f"'oauth2_tokens') TO '{ttls_file}'"], check=True, env=env,
                       stdout=subprocess.DEVNULL)

    ttls = " ttls," if zero_x else ""
    with kong_data.connect(dsn) as conn:
        conn.execute(f"TRUNCATE{ttls} oauth2_tokens")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    results["psql_copy_in_tokens"] = _rate(n, _timed(
        [*psql, "-c", f"\\copy oauth2_tokens FROM '{copy_file}'"], env))
    if zero_x:
        results["psql_copy_in_ttls"] = _rate(n, _timed(
            [*psql, "-c", f"\\copy ttls FROM '{ttls_file}'"], env))
    with kong_data.connect(dsn) as conn:
        conn.execute(f"TRUNCATE{ttls} oauth2_tokens")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    t0 = time.perf_counter()
    report = restore_tokens(config, _file_chunks(spool), metadata=meta, dry_run=False)
    restore_s = time.perf_counter() - t0
    results["restore"] = _rate(report.restored, restore_s) | {"ok": report.ok}
    results["rss_start_mib"] = round(rss_start, 1)
    results["rss_peak_mib"] = round(_peak_rss_mib(), 1)
    restore_rate = results["restore"]["rows_per_s"]
    results["restore_vs_psql_copy_in_tokens"] = _ratio(restore_rate,
                                                       results["psql_copy_in_tokens"])
    if zero_x:
        both_s = (results["psql_copy_in_tokens"]["seconds"]
                  + results["psql_copy_in_ttls"]["seconds"])
        results["restore_vs_psql_copy_in_tokens_and_ttls"] = _ratio(
            restore_rate, _rate(n, both_s))
    return results


def _ratio(rate: float, reference: dict[str, Any]) -> float:
    return round(float(rate) / float(reference["rows_per_s"]), 2)


def _rate(rows: int, seconds: float) -> dict[str, Any]:
    return {"seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


if __name__ == "__main__":
    main()
