"""Benchmark ``wicked-dr restore --live`` next to ``restore --target`` of one snapshot (by hand).

    python bench/bench_restore_live.py --users 20000 --repeats 3 --workdir /var/tmp/wdr-live

Starts a throwaway PostgreSQL cluster (the Kong database), moto's S3 server on 127.0.0.1 with
one bucket (the repository), and the stand-in wicked deployment of
``tests/fixtures/portal_standins.py`` (portal-api, Kong Adapter, mailer, chatbot, two Kong
nodes, in real containers on host networking) with a generated volume of ``--users`` users
and ``--tokens`` OAuth2 tokens in Kong. Takes one backup into S3, then ``--repeats`` times:
``restore latest --target`` into an empty directory (timed), ``mutate`` of 1 % of the live
volume, and ``restore latest --live --yes --json`` (timed: stop, swap, start portal-api,
the Kong Adapter's rebuild, the tokens, mailer and chatbot). Each command is its own
``python -m wicked_dr.cli`` process. Prints each run, the medians, the live restore's median
seconds per step, and whether live <= target + 30 s (the issue's target). The stand-in
portal-api runs the checker over the whole volume before it answers /ping, so "start
portal-api" includes that check. Not part of the test suite; needs the Docker engine and
PostgreSQL (scripts/test-env.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import docker
import yaml

from tests.fixtures import kong_data
from tests.fixtures.images import ImageBuilder
from tests.fixtures.portal_standins import Deployment
from tests.fixtures.postgres import NoPostgres, PgServer, start_pg_server
from tests.fixtures.s3 import (
    DUMMY_KEY_ID,
    DUMMY_SECRET,
    REGION,
    s3_test_client,
    start_moto_server,
    stop_server,
)
from wicked_dr.testing.sample_volume import mutate

TARGET_SLACK_S = 30.0


def main() -> None:
    args = _parser().parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pg = _start_pg()
    s3 = None
    deployment = None
    try:
        s3 = start_moto_server()
        bucket = f"wdr-bench-{uuid.uuid4().hex[:12]}"
        s3_test_client(s3.endpoint_url).create_bucket(Bucket=bucket)
        client = docker.from_env()
        image = ImageBuilder(client).standin()
        began = time.monotonic()
        deployment = Deployment(client, image, pg, work / "deployment", "subdir",
                                allow_resync=True, generation="1.x", users=args.users)
        built = time.monotonic() - began
        began = time.monotonic()
        deployment.start_all()
        print(f"deployment: volume generated in {built:.1f} s, all stand-ins up in "
              f"{time.monotonic() - began:.1f} s", flush=True)
        tokens = _add_tokens(deployment, args.tokens)
        config = _config(work, deployment, s3.endpoint_url, bucket, args.verbose)
        backup = _timed(config, "backup", "--json")
        print(f"backup to S3: {backup[0]:.2f} s, {tokens} tokens in Kong", flush=True)
        _runs(args, work, config, deployment)
    finally:
        if deployment is not None:
            deployment.close()
        if s3 is not None:
            stop_server(s3)
        pg.stop()
        shutil.rmtree(pg.base, ignore_errors=True)


def _runs(args: argparse.Namespace, work: Path, config: Path, d: Deployment) -> None:
    targets: list[float] = []
    lives: list[float] = []
    reports: list[dict[str, Any]] = []
    for n in range(args.repeats):
        target = work / f"restore-{n}"
        targets.append(_timed(config, "restore", "latest", "--target", str(target))[0])
        shutil.rmtree(target)
        mutate(d.volume_path, 0.01, seed=n)
        seconds, report = _timed(config, "restore", "latest", "--live", "--yes", "--json")
        lives.append(seconds)
        reports.append(report)
        (work / f"report-{n}.json").write_text(json.dumps(report, indent=1))
        pre = report.get("pre_restore_copy")
        if pre:
            shutil.rmtree(pre, ignore_errors=True)
        print(f"run {n + 1}: restore --target {targets[-1]:.2f} s, restore --live "
              f"{seconds:.2f} s (report total_s {report['total_s']:.2f}, portal-api healthy "
              f"after {report['portal_api_healthy_after_s']:.2f} s, outcome "
              f"{report.get('outcome')}, {_tokens(report)})", flush=True)
        checked = _find(report, "checked")
        if checked:
            print(f"   stage: checker over the staged volume {checked.get('duration_s')} s "
                  f"({checked.get('files_checked')} files)", flush=True)
        print("   " + ", ".join(f"{s['step']} {s['seconds']:.2f}"
                                + ("" if s["ok"] else " (FAILED)") for s in report["steps"]),
              flush=True)
    target_m, live_m = statistics.median(targets), statistics.median(lives)
    print(f"\n{args.users} users, medians of {args.repeats}: restore --target {target_m:.2f} s, "
          f"restore --live {live_m:.2f} s (report total_s "
          f"{statistics.median(r['total_s'] for r in reports):.2f}, portal-api healthy after "
          f"{statistics.median(r['portal_api_healthy_after_s'] for r in reports):.2f} s)")
    print("median seconds per step of restore --live:")
    for step in [s["step"] for s in reports[0]["steps"]]:
        values = [s["seconds"] for r in reports for s in r["steps"] if s["step"] == step]
        print(f"  {step:28s} {statistics.median(values):7.2f}")
    verdict = "met" if live_m <= target_m + TARGET_SLACK_S else "NOT met"
    print(f"target live <= target-restore + {TARGET_SLACK_S:.0f} s: {verdict} "
          f"(live - target = {live_m - target_m:.2f} s)")


def _find(doc: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a JSON document."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            found = _find(item, key)
            if found is not None:
                return found
    return None


def _tokens(report: dict[str, Any]) -> str:
    tokens = report.get("tokens") or {}
    restarts = ", ".join(f"{r.get('seconds', 0):.2f}" for r in tokens.get("kong_restarts", []))
    return (f"tokens restored {tokens.get('restored')}/{tokens.get('total')}, "
            f"Kong restarts {restarts} s")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=300,
                        help="OAuth2 tokens added to Kong before the backup")
    parser.add_argument("--workdir", default="/var/tmp/wdr-live")
    parser.add_argument("--verbose", action="store_true", help="log level info, not warning")
    return parser


def _start_pg() -> PgServer:
    try:
        return start_pg_server()
    except NoPostgres as exc:
        sys.exit(f"PostgreSQL is not available: {exc}")


def _add_tokens(d: Deployment, count: int) -> int:
    subs = kong_data.subscriptions_from_volume(d.volume_path)[:count]
    with kong_data.connect(d.kong_dsn) as conn:
        tokens = [kong_data.live_token(s.client_id, s.api_id) for s in subs]
        kong_data.add_tokens(conn, d.generation, tokens)
    return len(subs)


def _config(work: Path, d: Deployment, endpoint_url: str, bucket: str, verbose: bool) -> Path:
    overrides = d.config_overrides()
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(work / "state"),
        "repository": {"url": f"s3://{bucket}/repo", "endpoint_url": endpoint_url,
                       "region": REGION, "access_key_id": DUMMY_KEY_ID,
                       "secret_access_key": DUMMY_SECRET},
        **overrides,
        "volume": {**overrides["volume"], "quiesce": "wicked-lock"},
        "log": {"level": "info" if verbose else "warning"}}))
    return path


def _cli(config: Path, *args: str) -> str:
    command = [sys.executable, "-m", "wicked_dr.cli", "--config", str(config), *args]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"{' '.join(args)} failed (exit {run.returncode}):\n{run.stdout.strip()}\n"
                 f"{run.stderr.strip()}")
    return run.stdout


def _timed(config: Path, *args: str) -> tuple[float, Any]:
    began = time.monotonic()
    out = _cli(config, *args)
    seconds = time.monotonic() - began
    return seconds, json.loads(out) if "--json" in args else None


if __name__ == "__main__":
    main()
