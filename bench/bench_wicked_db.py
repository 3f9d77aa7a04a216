"""Benchmark the wicked_db source (wicked 1.0's schema) next to pg_dump / pg_restore (by hand).

    PYTHONPATH=. .venv/bin/python bench/bench_wicked_db.py --users 20000 --repeats 3 \\
        --workdir /var/tmp/wdr-bench-wdb

Starts a throwaway PostgreSQL cluster (tests/fixtures/postgres.py), creates wicked's schema
(tests/fixtures/wicked_schema.sql) in database ``wicked`` and fills it from a generated
portal of ``--users`` users (tests/fixtures/wicked_pg.py ``populate``), then VACUUM ANALYZE
and a CHECKPOINT. Then ``--repeats`` times, each command its own process under
``/usr/bin/time -f '%e %M'`` (wall seconds, peak RSS of the client process; the server's
work is in the wall time only):

* backup: ``wicked-dr --config CFG backup --json`` of a DB-only config (``volume.path:
  null``, ``wicked_db.dsn``) into a fresh local repository, then a second (incremental)
  backup with nothing changed, and one after one row grew by 7 bytes; ``pg_dump -n wicked
  -Fc`` and ``pg_dump -n wicked -Fp``;
* restore to files: ``wicked-dr restore latest --target DIR --source wicked_db``;
* load into the database, each after ``DROP SCHEMA wicked CASCADE`` and a CHECKPOINT:
  ``load_into_schema`` fed by the snapshot's stream through the real snapshot reader
  (``LOAD_CODE`` as a script, its own process), ``psql -f load.psql`` in the restored directory,
  ``pg_restore -d`` of the custom dump (and with ``-1``, one transaction, as ours), and
  ``psql -f`` of the plain dump.

After every load (and for the CSV files) the row counts per table are compared with the
original's. ``--profile`` then runs one more backup, restore to files and load under
cProfile. Prints a JSON document and a Markdown table; writes ``results.json`` in the
workdir. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from bench.timing import timed
from tests.fixtures import wicked_pg
from tests.fixtures.postgres import PgServer, _free_port, start_pg_server

WDR = [sys.executable, "-m", "wicked_dr.cli"]


def _timed(argv: list[str], env: dict[str, str], cwd: Path | None = None
           ) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of one process under /usr/bin/time."""
    run, out = timed(argv, env=env, cwd=cwd)
    return run.seconds, run.rss_mib, out



def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [str(r[0]) for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'wicked'::regnamespace "
            "AND relkind = 'r' ORDER BY 1").fetchall()]
        return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM wicked.{}").format(
            sql.Identifier(t))).fetchone()[0]) for t in tables}  # type: ignore[index]


def _size(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(oid)) FROM pg_class WHERE relnamespace = "
            "'wicked'::regnamespace AND relkind = 'r'").fetchone()
    return int(row[0]) if row else 0


def _drop(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS wicked CASCADE")
        conn.execute("CHECKPOINT")


def _csv_counts(directory: Path) -> dict[str, int]:
    counts = {}
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            counts[path.stem] = sum(1 for _ in csv.reader(f)) - 1  # the header line
    return counts


def _config(work: Path, dsn: str, repo: Path, state: Path) -> Path:
    closed = _free_port()
    doc = {"state_dir": str(state), "repository": {"url": str(repo)},
           "volume": {"path": None}, "wicked_db": {"dsn": dsn},
           "wicked": {"portal_api_url": f"http://127.0.0.1:{closed}",
                      "kong_adapter_url": f"http://127.0.0.1:{closed}"},
           "log": {"level": "warning", "format": "json"}}
    path = work / "config.yaml"
    path.write_text(json.dumps(doc))
    return path


# The load, as its own process that imports only what a restore imports: the snapshot's
# stream (the real reader) into schema ``wicked`` with load_into_schema.
LOAD_CODE = """
import json, sys
from pathlib import Path
from wicked_dr.actions.common import open_repository, snapshot_reader
from wicked_dr.config import load_config
from wicked_dr.engine.catalog import resolve
from wicked_dr.sources.wicked_db import load_into_schema

config = load_config(Path(sys.argv[1]))
repo = open_repository(config)
snapshot = resolve(repo, "latest")
reader = snapshot_reader(repo, config, snapshot)
record = snapshot.source("wicked_db")
report = load_into_schema(config.wicked_db, reader.stream(record.stream), "wicked")
print(json.dumps(report.to_dict()))
"""


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def run(args: argparse.Namespace, server: PgServer, work: Path) -> dict[str, Any]:
    dsn = server.create_database("wicked")
    t0 = time.perf_counter()
    wicked_pg.create_schema(dsn)
    portal = wicked_pg.populate(dsn, work / "gen", users=args.users, seed=args.seed)
    populate_s = time.perf_counter() - t0
    shutil.rmtree(work / "gen", ignore_errors=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    original = _counts(dsn)
    results: dict[str, Any] = {
        "users": args.users, "populate_s": round(populate_s, 1), "rows": original,
        "rows_total": sum(original.values()), "populated": portal.rows,
        "db_bytes": _size(dsn), "repeats": args.repeats}
    print(json.dumps(results), flush=True)
    env = {**os.environ, "PGPASSWORD": server.password,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    conn_args = ["-h", server.host, "-p", str(server.port), "-U", "wdr_admin"]
    bin_dir = server.bin_dir
    helper = work / "load_helper.py"
    helper.write_text(LOAD_CODE)
    runs: dict[str, list[tuple[float, float]]] = {}
    extra: dict[str, list[Any]] = {}

    def record(name: str, seconds: float, rss: float, **more: Any) -> None:
        runs.setdefault(name, []).append((seconds, rss))
        for key, value in more.items():
            extra.setdefault(f"{name}.{key}", []).append(value)
        print(f"  {name}: {seconds:.2f} s, {rss:.0f} MiB {more or ''}", flush=True)

    def check(name: str, counts: dict[str, int]) -> None:
        if counts != original:
            raise RuntimeError(f"{name}: row counts differ: {counts} != {original}")

    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}", flush=True)
        repo, state, target = work / "repo", work / "state", work / "restored"
        for path in (repo, state, target):
            shutil.rmtree(path, ignore_errors=True)
        config = _config(work, dsn, repo, state)
        subprocess.run([*WDR, "--config", str(config), "init"], env=env, check=True,
                       capture_output=True)
        base_bytes = _tree_bytes(repo)
        for name in ("wdr_backup_full", "wdr_backup_incremental"):
            before = _tree_bytes(repo)
            s, rss, out = _timed([*WDR, "--config", str(config), "backup", "--json"], env)
            doc = json.loads(out)
            record(name, s, rss, duration_s=doc["duration_s"], bytes_new=doc["bytes_new"],
                   bytes_read=doc["bytes_read"], repo_growth=_tree_bytes(repo) - before)
        # One row changed, 7 bytes longer (a user's e-mail address, in the middle of the
        # users table): the stream is cut into fixed-size blobs, so what follows shifts.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE wicked.users SET email = 'longer.' || email WHERE id = "
                         "(SELECT id FROM wicked.users ORDER BY id OFFSET %s LIMIT 1)",
                         (args.users // 2,))
        before = _tree_bytes(repo)
        s, rss, out = _timed([*WDR, "--config", str(config), "backup", "--json"], env)
        doc = json.loads(out)
        record("wdr_backup_one_row_longer", s, rss, duration_s=doc["duration_s"],
               bytes_new=doc["bytes_new"], repo_growth=_tree_bytes(repo) - before)
        record_repo = _tree_bytes(repo)
        extra.setdefault("repo_bytes", []).append(record_repo)
        extra.setdefault("repo_bytes_after_init", []).append(base_bytes)
        dump_c, dump_p = work / "dump.custom", work / "dump.sql"
        s, rss, _ = _timed([str(bin_dir / "pg_dump"), *conn_args, "-d", "wicked", "-n",
                            "wicked", "-Fc", "-f", str(dump_c)], env)
        record("pg_dump_Fc", s, rss, bytes=dump_c.stat().st_size)
        s, rss, _ = _timed([str(bin_dir / "pg_dump"), *conn_args, "-d", "wicked", "-n",
                            "wicked", "-Fp", "-f", str(dump_p)], env)
        record("pg_dump_Fp", s, rss, bytes=dump_p.stat().st_size)
        s, rss, _ = _timed([*WDR, "--config", str(config), "restore", "latest", "--target",
                            str(target), "--source", "wicked_db"], env)
        record("wdr_restore_files", s, rss, bytes=_tree_bytes(target / "wicked_db"))
        check("restore --target CSV", _csv_counts(target / "wicked_db"))
        psql = [str(bin_dir / "psql"), "-X", "-q", *conn_args, "-d", "wicked",
                "-v", "ON_ERROR_STOP=1"]
        loads: list[tuple[str, list[str], Path | None]] = [
            ("wdr_load_into_schema", [sys.executable, str(helper), str(config)], None),
            ("psql_load_psql", [*psql, "-f", "load.psql"], target / "wicked_db"),
            ("pg_restore", [str(bin_dir / "pg_restore"), *conn_args, "-d", "wicked",
                            str(dump_c)], None),
            ("pg_restore_1", [str(bin_dir / "pg_restore"), *conn_args, "-d", "wicked", "-1",
                              str(dump_c)], None),
            ("psql_plain", [*psql, "-f", str(dump_p)], None),
        ]
        for name, argv, cwd in loads:
            _drop(dsn)
            s, rss, _ = _timed(argv, env, cwd)
            record(name, s, rss)
            check(name, _counts(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
    if args.profile:
        results["profile"] = _profile(work, dsn, env, config)
    results["runs"] = {k: [list(x) for x in v] for k, v in runs.items()}
    results["extra"] = extra
    results["median"] = {k: {"wall_s": _med([x[0] for x in v]),
                             "rss_mib": _med([x[1] for x in v])} for k, v in runs.items()}
    results["db_bytes_end"] = _size(dsn)
    return results


def _profile(work: Path, dsn: str, env: dict[str, str], config: Path) -> dict[str, str]:
    """One more full backup, restore to files and load under cProfile: the top functions
    by cumulative time (the profiler's own overhead included)."""
    import pstats

    out: dict[str, str] = {}
    prof = [sys.executable, "-m", "cProfile", "-o"]
    for path in (work / "repo", work / "state", work / "restored"):
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run([*WDR, "--config", str(config), "init"], env=env, check=True,
                   capture_output=True)
    steps = {
        "backup": ["-m", "wicked_dr.cli", "--config", str(config), "backup", "--json"],
        "restore_files": ["-m", "wicked_dr.cli", "--config", str(config), "restore", "latest",
                          "--target", str(work / "restored"), "--source", "wicked_db"],
        "load": [str(work / "load_helper.py"), str(config)],
    }
    for name, argv in steps.items():
        if name == "load":
            _drop(dsn)
        target = work / f"{name}.prof"
        subprocess.run([*prof, str(target), *argv], env=env, check=True, capture_output=True)
        text = io.StringIO()
        stats = pstats.Stats(str(target), stream=text)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(15)
        out[name] = text.getvalue()
        print(out[name], flush=True)
    return out


def _table(results: dict[str, Any]) -> str:
    ext = results["extra"]
    lines = ["| operation | wall s (median) | each run, s | peak RSS MiB | notes |",
             "|---|---:|---|---:|---|"]
    for name, med in results["median"].items():
        each = ", ".join(f"{x[0]:.2f}" for x in results["runs"][name])
        notes = "; ".join(f"{k.split('.', 1)[1]} {v}" for k, v in ext.items()
                          if k.startswith(name + "."))
        lines.append(f"| {name} | {med['wall_s']:.2f} | {each} | {med['rss_mib']:.0f} | "
                     f"{notes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/var/tmp/wdr-bench-wdb")
    parser.add_argument("--profile", action="store_true",
                        help="then one backup, restore and load under cProfile")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = start_pg_server()
    try:
        results = run(args, server, work)
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "profile"}, indent=2))
    print(_table(results))


if __name__ == "__main__":
    main()
