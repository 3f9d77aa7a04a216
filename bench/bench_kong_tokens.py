"""Benchmark: Kong token backup/restore vs. pg_dump and psql \\copy on the same server.

Run by hand (not part of the test suite), as root or a user that can run PostgreSQL:

    python -m bench.bench_kong_tokens --tokens 1000000 --generation 0.14

It starts a throwaway cluster (tests/fixtures/postgres.py), fills Kong's tables with
``--tokens`` unexpired tokens, then measures rows/s and peak RSS. Results go to stdout as
JSON; record them in bench/README_kong_tokens.md.
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
from wicked_dr.sources.kong_tokens import KongTokensSource, restore_tokens
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
    t0 = time.perf_counter()
    meta = KongTokensSource(config).backup(SpoolSink(spool))
    backup_s = time.perf_counter() - t0
    results["backup"] = _rate(n, backup_s) | {"bytes": meta["size"]}
    results["rss_after_backup_mib"] = round(_peak_rss_mib(), 1)
    results["pg_dump"] = _rate(n, _timed(
        [str(bin_dir / "pg_dump"), *conn_args, "--data-only", "-t", "oauth2_tokens",
         "-f", "/dev/null"], env))
    copy_file = base / "tokens.copy"
    results["psql_copy_out"] = _rate(n, _timed(
        [str(bin_dir / "psql"), *conn_args, "-c", f"\\copy oauth2_tokens TO '{copy_file}'"],
        env))

    ttls = " ttls," if generation in ("0.11", "0.14") else ""
    with kong_data.connect(dsn) as conn:
        conn.execute(f"TRUNCATE{ttls} oauth2_tokens")
    results["psql_copy_in"] = _rate(n, _timed(
        [str(bin_dir / "psql"), *conn_args, "-c", f"\\copy oauth2_tokens FROM '{copy_file}'"],
        env))
    with kong_data.connect(dsn) as conn:
        conn.execute(f"TRUNCATE{ttls} oauth2_tokens")
        conn.execute("VACUUM ANALYZE oauth2_tokens")
    t0 = time.perf_counter()
    report = restore_tokens(config, _file_chunks(spool), metadata=meta, dry_run=False)
    restore_s = time.perf_counter() - t0
    results["restore"] = _rate(report.restored, restore_s) | {"ok": report.ok}
    results["rss_start_mib"] = round(rss_start, 1)
    results["rss_peak_mib"] = round(_peak_rss_mib(), 1)
    results["backup_vs_pg_dump"] = round(results["backup"]["rows_per_s"]
                                         / results["pg_dump"]["rows_per_s"], 2)
    results["restore_vs_psql_copy_in"] = round(results["restore"]["rows_per_s"]
                                               / results["psql_copy_in"]["rows_per_s"], 2)
    return results


def _rate(rows: int, seconds: float) -> dict[str, Any]:
    return {"seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


if __name__ == "__main__":
    main()
