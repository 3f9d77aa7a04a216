"""Benchmark: Kong token backup/restore vs. pg_dump and psql \\copy on the same server.

Run by hand (not part of the test suite), as root or a user that can run PostgreSQL:

    python -m bench.bench_kong_tokens --tokens 1000000 --generation 0.14

It starts a throwaway cluster (tests/fixtures/postgres.py), fills Kong's tables with
``--tokens`` unexpired tokens, then measures rows/s and peak RSS. Results go to stdout as
JSON; record them in bench/README_kong_tokens.md.

References run on the same server and write to a file, as ours does:

* backup: ``pg_dump -t oauth2_tokens`` (the issue's yardstick, though it lacks what re-attaching
  and expiry need), ``pg_dump`` of every table our export reads (the same information) and
  ``psql \\copy (our SELECT) TO`` (the same rows). Best of two runs each, caches warm.
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
from wicked_dr.sources.base import StreamRecord
from wicked_dr.sources.kong_schema import detect_schema
from wicked_dr.sources.kong_tokens import KongTokensSource, _export_query, restore_tokens
from wicked_dr.testing.sample_volume import generate


class SpoolSink:
    """Hashes the stream and spools it to a file so restore can be timed on its own."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add_stream(self, name: str, chunks: Iterable[bytes]) -> StreamRecord:
        digest = hashlib.sha256()
        size = 0
        with self.path.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return StreamRecord(name, size, digest.hexdigest(), (digest.hexdigest(),))


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


def _best_of_two(command: list[str], env: dict[str, str]) -> float:
    return min(_timed(command, env), _timed(command, env))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--generation", default="0.14", choices=kong_data.GENERATIONS)
    args = parser.parse_args()
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
        print(json.dumps(_run(server, bin_dir, base, args.tokens, args.generation), indent=2))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _run(server: PgServer, bin_dir: Path, base: Path, n: int, generation: str) -> dict[str, Any]:
    dsn = server.create_database("kong")
    volume = base / "volume"
    generate(volume, 300, seed=1, untidy=False)
    subs = kong_data.subscriptions_from_volume(volume)
    with kong_data.connect(dsn) as conn:
        kong_data.load_ddl(conn, generation)
        kong_data.sync_like_adapter(conn, generation, subs)
        t0 = time.perf_counter()
        kong_data.bulk_tokens(conn, generation, n)
        conn.execute("VACUUM ANALYZE")
        populate_s = time.perf_counter() - t0
    env = {**os.environ, "PGPASSWORD": server.password}
    conn_args = ["-h", server.host, "-p", str(server.port), "-U", "wdr_admin", "-d", "kong"]
    config = KongTokensConfig(dsn=SecretStr(dsn), statement_timeout_s=3600)
    rss_start = _peak_rss_mib()
    results: dict[str, Any] = {"tokens": n, "generation": generation,
                               "populate_s": round(populate_s, 1)}

    spool = base / "stream.bin"
    backup_s: list[float] = []
    for _ in range(2):
        t0 = time.perf_counter()
        meta = KongTokensSource(config).backup(SpoolSink(spool))
        backup_s.append(time.perf_counter() - t0)
    results["backup"] = _rate(n, min(backup_s)) | {"bytes": meta["size"]}
    results["rss_after_backup_mib"] = round(_peak_rss_mib(), 1)
    with kong_data.connect(dsn) as conn:
        schema = detect_schema(conn)
        export_select = _export_query(schema).as_string(conn)[len("COPY "):-len(" TO STDOUT")]
        tables = sorted(schema.tables - {"consumers", "workspaces"})
    dump_file = base / "dump.sql"
    pg_dump = [str(bin_dir / "pg_dump"), *conn_args, "--data-only", "-f", str(dump_file)]
    results["pg_dump_tokens_table"] = _rate(n, _best_of_two([*pg_dump, "-t", "oauth2_tokens"],
                                                            env))
    results["pg_dump_same_tables"] = _rate(n, _best_of_two(
        [*pg_dump, *(arg for t in tables for arg in ("-t", t))], env)) | {"tables": tables}
    psql = [str(bin_dir / "psql"), *conn_args, "-v", "ON_ERROR_STOP=1", "-c"]
    # Our export sets the same work_mem for its join (kong_tokens._EXPORT_WORK_MEM).
    rows_file = base / "rows.copy"
    results["psql_copy_out_same_select"] = _rate(n, _best_of_two(
        [*psql, "SET work_mem = '64MB'", "-c", f"\\copy ({export_select}) TO '{rows_file}'"],
        env))
    copy_file = base / "tokens.copy"
    subprocess.run([*psql, f"\\copy oauth2_tokens TO '{copy_file}'"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    zero_x = generation in ("0.11", "0.14")
    ttls_file = base / "ttls.copy"
    if zero_x:
        subprocess.run([*psql, "\\copy (SELECT * FROM ttls WHERE table_name = 'oauth2_tokens') "
                        f"TO '{ttls_file}'"], check=True, env=env, stdout=subprocess.DEVNULL)

    ttls = " ttls," if zero_x else ""
    with kong_data.connect(dsn) as conn:
        conn.execute(f"TRUNCATE{ttls} oauth2_tokens")
        conn.execute("VACUUM ANALYZE")
    results["psql_copy_in_tokens"] = _rate(n, _timed(
        [*psql, f"\\copy oauth2_tokens FROM '{copy_file}'"], env))
    if zero_x:
        results["psql_copy_in_ttls"] = _rate(n, _timed(
            [*psql, f"\\copy ttls FROM '{ttls_file}'"], env))
    with kong_data.connect(dsn) as conn:
        conn.execute(f"TRUNCATE{ttls} oauth2_tokens")
        conn.execute("VACUUM ANALYZE")
    t0 = time.perf_counter()
    report = restore_tokens(config, _file_chunks(spool), metadata=meta, dry_run=False)
    restore_s = time.perf_counter() - t0
    results["restore"] = _rate(report.restored, restore_s) | {"ok": report.ok}
    results["rss_start_mib"] = round(rss_start, 1)
    results["rss_peak_mib"] = round(_peak_rss_mib(), 1)
    backup_rate = results["backup"]["rows_per_s"]
    for reference in ("pg_dump_tokens_table", "pg_dump_same_tables",
                      "psql_copy_out_same_select"):
        results[f"backup_vs_{reference}"] = _ratio(backup_rate, results[reference])
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
    return round(rate / reference["rows_per_s"], 2)


def _rate(rows: int, seconds: float) -> dict[str, Any]:
    return {"seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


if __name__ == "__main__":
    main()
