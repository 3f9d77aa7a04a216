"""Benchmark ``wicked-dr prune`` next to ``restic forget --prune``; the daemon at rest (by hand).

    python bench/bench_prune.py --users 20000 --history 24 --repeats 3 \\
        --workdir /var/tmp/wdr-bench-prune

Builds a history once: a volume (``sample_volume.generate``), then ``--history`` backups (1 full
and the rest incremental), with ``--change`` of the files mutated before each incremental, into
a wicked-dr repository and, of the same volume state each time, into a restic repository.
Then, ``--repeats`` times, on fresh ``cp -a`` copies of both repositories (and of wicked-dr's
state directory and restic's cache, so each prune starts from the same state and a warm local
cache): ``wicked-dr prune --dry-run --json``, ``wicked-dr prune --json`` keeping the newest
``--keep-last`` (every other rule 0, ``schedule.verify`` off so no verification is required),
``restic forget --keep-last N --prune`` (and its ``--dry-run``), and, unless
``--no-repack-scenario``, a wicked-dr prune with ``retention.repack_below_percent: 0``. The
order of wicked-dr and restic alternates between repeats. Wall time and peak RSS per process
come from ``/usr/bin/time``; sizes are the bytes of the repository directories.

Then, unless ``--daemon-seconds 0``, ``wicked-dr daemon`` runs on the last pruned copy with a
yearly backup schedule (nothing runs after start-up) and is sampled once a second: VmRSS,
utime+stime, the lease object's mtime (renewals); ``/metrics`` is scraped once.

Prints Markdown tables (medians) and writes ``results.json`` in the workdir. Not part of the
test suite. ``--profile`` adds one wicked-dr prune under cProfile (top functions printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.timing import Run, last_json, timed
from wicked_dr.testing.sample_volume import generate, mutate

RESTIC_PASSWORD = "bench-only-password"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under path (restic's lock files and wicked's lease included)."""
    return sum(os.lstat(os.path.join(d, n)).st_size
               for d, _s, names in os.walk(path) for n in names)


def tree_files(path: Path) -> int:
    return sum(len(names) for _d, _s, names in os.walk(path))


def copy_tree(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


# --- configuration -----------------------------------------------------------------------------

def wicked_config(path: Path, base: Path, volume: Path, *, repack: float = 50.0,
                  keep_last: int = 6, daemon: dict[str, Any] | None = None) -> Path:
    """A wicked-dr config (JSON is YAML) for the repository and state under ``base``."""
    doc: dict[str, Any] = {
        "state_dir": str(base / "wdr-state"),
        "repository": {"url": str(base / "wdr-repo")},
        "volume": {"path": str(volume), "quiesce": "wicked-lock"},
        "retention": {"keep_last": keep_last, "keep_hourly": 0, "keep_daily": 0,
                      "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0,
                      "repack_below_percent": repack},
        "schedule": {"verify": None},
        "log": {"level": "warning"},
    }
    if daemon is not None:
        doc["schedule"] = {"backup": "0 0 1 1 *", "verify": None, "prune": None,
                           "drill": None}
        doc["daemon"] = daemon
    path.write_text(json.dumps(doc, indent=2))
    return path


def restic_env(base: Path) -> dict[str, str]:
    return {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_REPOSITORY": str(base / "restic-repo"),
            "RESTIC_CACHE_DIR": str(base / "restic-cache")}


# --- the history -------------------------------------------------------------------------------

def build_history(work: Path, cmd: list[str], users: int, seed: int, history: int,
                  change: float) -> dict[str, Any]:
    """The volume and both repositories under ``work/base`` (reused when the parameters
    match); what was built and how long the backups took."""
    base = work / "base"
    stamp = work / "base.params"
    want = json.dumps({"users": users, "seed": seed, "history": history, "change": change})
    info_file = work / "base.json"
    if stamp.exists() and stamp.read_text() == want and info_file.exists():
        info: dict[str, Any] = json.loads(info_file.read_text())
        return info
    stamp.unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    volume = base / "volume"
    stats = generate(volume, users, seed=seed)
    print(f"generated {stats.files} files, {stats.bytes / 2**20:.1f} MiB", file=sys.stderr)
    cfg = wicked_config(base / "wicked-dr.yaml", base, volume)
    env = restic_env(base)
    subprocess.run(["restic", "init", "--quiet"], env=env, check=True, capture_output=True)
    wdr_s: list[float] = []
    restic_s: list[float] = []
    for n in range(history):
        if n:
            mutate(volume, change, seed=seed * 1000 + n)
        run, _ = timed([*cmd, "--config", str(cfg), "backup", "--json"])
        wdr_s.append(run.seconds)
        run, _ = timed(["restic", "backup", "--quiet", "--host", "bench", "."], env=env,
                       cwd=volume)
        restic_s.append(run.seconds)
        print(f"backup {n + 1}/{history}: wicked-dr {wdr_s[-1]:.2f} s, restic "
              f"{restic_s[-1]:.2f} s", file=sys.stderr)
    info = {"files": tree_files(volume), "raw_bytes": tree_bytes(volume),
            "wdr_backup_s": wdr_s, "restic_backup_s": restic_s,
            "wdr_packs": tree_files(base / "wdr-repo" / "data")
            if (base / "wdr-repo" / "data").exists() else None}
    info_file.write_text(json.dumps(info))
    stamp.write_text(want)
    return info


# --- prune -------------------------------------------------------------------------------------

WDR_FIELDS = ("packs_deleted", "packs_repacked", "packs_written", "bytes_deleted",
              "bytes_written", "trees_deleted", "index_objects_written",
              "index_objects_removed", "duration_s")


def prune_wicked(work: Path, base: Path, cmd: list[str], label: str, repack: float,
                 keep_last: int, dry_run_too: bool) -> dict[str, Run]:
    """Copy the base repository and state, then (dry run and) prune it."""
    run_dir = work / f"run-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    copy_tree(base / "wdr-repo", run_dir / "wdr-repo")
    copy_tree(base / "wdr-state", run_dir / "wdr-state")
    cfg = wicked_config(run_dir / "wicked-dr.yaml", run_dir, base / "volume", repack=repack,
                        keep_last=keep_last)
    out: dict[str, Run] = {}
    before = tree_bytes(run_dir / "wdr-repo")
    if dry_run_too:
        run, stdout = timed([*cmd, "--config", str(cfg), "prune", "--dry-run", "--json"])
        doc = last_json(stdout)
        run.extra = {k: doc.get(k) for k in WDR_FIELDS if k in doc}
        out["dry-run"] = run
    run, stdout = timed([*cmd, "--config", str(cfg), "prune", "--json"])
    doc = last_json(stdout)
    run.extra = {k: doc.get(k) for k in WDR_FIELDS if k in doc}
    run.extra.update(kept=len(doc.get("kept", ())), removed=len(doc.get("removed", ())),
                     repo_before=before, repo_after=tree_bytes(run_dir / "wdr-repo"),
                     packs_after=tree_files(run_dir / "wdr-repo" / "data"))
    out["prune"] = run
    return out


def prune_restic(work: Path, base: Path, label: str, keep_last: int) -> dict[str, Run]:
    run_dir = work / f"run-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    copy_tree(base / "restic-repo", run_dir / "restic-repo")
    if (base / "restic-cache").exists():
        copy_tree(base / "restic-cache", run_dir / "restic-cache")
    env = restic_env(run_dir)
    argv = ["restic", "forget", "--keep-last", str(keep_last), "--prune"]
    out: dict[str, Run] = {}
    try:
        out["dry-run"], _ = timed([*argv, "--dry-run"], env=env)
    except RuntimeError as exc:
        print(f"restic dry run failed: {exc}", file=sys.stderr)
    before = tree_bytes(run_dir / "restic-repo")
    run, _ = timed(argv, env=env)
    snapshots = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=env,
                                          check=True, capture_output=True, text=True).stdout)
    run.extra.update(kept=len(snapshots), repo_before=before,
                     repo_after=tree_bytes(run_dir / "restic-repo"),
                     packs_after=tree_files(run_dir / "restic-repo" / "data"))
    out["prune"] = run
    return out


def profile_prune(work: Path, base: Path, keep_last: int) -> str:
    """One wicked-dr prune (default repack) under cProfile; the top functions."""
    run_dir = work / "run-profile"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    copy_tree(base / "wdr-repo", run_dir / "wdr-repo")
    copy_tree(base / "wdr-state", run_dir / "wdr-state")
    cfg = wicked_config(run_dir / "wicked-dr.yaml", run_dir, base / "volume",
                        keep_last=keep_last)
    prof = run_dir / "prune.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "wicked_dr.cli",
                    "--config", str(cfg), "prune", "--json"], check=True, capture_output=True)
    code = ("import pstats, sys; s = pstats.Stats(sys.argv[1]); "
            "s.sort_stats('cumulative').print_stats(30); s.sort_stats('tottime').print_stats(15)")
    return subprocess.run([sys.executable, "-c", code, str(prof)], check=True,
                          capture_output=True, text=True).stdout


# --- the daemon at rest ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_sample(pid: int) -> tuple[float, float, int]:
    """(VmRSS MiB, CPU seconds utime+stime, threads) of a live process."""
    rss_kib = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return rss_kib / 1024, ticks / os.sysconf("SC_CLK_TCK"), threads


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def bench_daemon(work: Path, cmd: list[str], run_dir: Path, volume: Path,
                 seconds: float) -> dict[str, Any]:
    """Start the daemon on a pruned copy, wait for /healthz, sample it at rest."""
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    cfg = wicked_config(run_dir / "daemon.yaml", run_dir, volume, daemon={
        "listen": f"127.0.0.1:{port}"})
    log = (work / "daemon.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen([*cmd, "--config", str(cfg), "daemon"], stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    healthy_after: float | None = None
    result: dict[str, Any] = {"port": port}
    try:
        while time.monotonic() - started < 60:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}; see {work}/daemon.log")
            try:
                status, _ = http_get(base_url + "/healthz", timeout=1)
            except OSError:
                status = 0
            if status == 200:
                healthy_after = time.monotonic() - started
                break
            time.sleep(0.05)
        if healthy_after is None:
            raise RuntimeError("the daemon did not answer /healthz within 60 s")
        result["healthy_after_s"] = round(healthy_after, 3)
        time.sleep(2)  # let the first tick and the start-up refresh settle
        lease = run_dir / "wdr-repo" / "leases" / "daemon"
        rss0, cpu0, threads = proc_sample(proc.pid)
        result["cpu_s_startup"] = cpu0
        result["threads"] = threads
        t0 = time.monotonic()
        rss: list[float] = []
        mtimes: set[int] = set()
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            sample_rss, _cpu, _thr = proc_sample(proc.pid)
            rss.append(sample_rss)
            with contextlib.suppress(OSError):
                mtimes.add(lease.stat().st_mtime_ns)
        rss1, cpu1, _ = proc_sample(proc.pid)
        wall = time.monotonic() - t0
        result.update(window_s=round(wall, 1), rss_start_mib=round(rss0, 1),
                      rss_end_mib=round(rss1, 1), rss_min_mib=round(min(rss), 1),
                      rss_max_mib=round(max(rss), 1), cpu_s=round(cpu1 - cpu0, 3),
                      cpu_percent=round(100 * (cpu1 - cpu0) / wall, 3),
                      lease_writes_seen=len(mtimes))
        status, body = http_get(base_url + "/metrics")
        families = list(text_string_to_metric_families(body.decode()))
        result.update(metrics_status=status, metrics_bytes=len(body),
                      metrics_families=len(families),
                      metrics_samples=sum(len(f.samples) for f in families))
        result["readyz"] = http_get(base_url + "/readyz")[1].decode()
        (work / "metrics.txt").write_bytes(body)
    finally:
        stop_t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            result["exit_code"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["exit_code"] = proc.wait()
        result["stop_s"] = round(time.monotonic() - stop_t, 2)
        log.close()
    result["log_lines"] = len((work / "daemon.log").read_text().splitlines())
    return result


# --- report ------------------------------------------------------------------------------------

def med(runs: list[Run], key: str) -> float | None:
    values = [r.seconds if key == "seconds" else r.rss_mib if key == "rss" else r.extra.get(key)
              for r in runs]
    nums = [float(v) for v in values if v is not None]
    return float(statistics.median(nums)) if nums else None


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def prune_table(runs: dict[str, list[Run]]) -> str:
    lines = ["| tool | operation | wall s (median) | each run, s | peak RSS MiB | repo MiB "
             "before | repo MiB after | snapshots kept | packs after |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for key, rs in runs.items():
        tool, op = key.split(" ", 1)
        lines.append("| " + " | ".join([
            tool, op, fmt(med(rs, "seconds")), ", ".join(f"{r.seconds:.2f}" for r in rs),
            fmt(med(rs, "rss"), ".0f"), mib(med(rs, "repo_before")),
            mib(med(rs, "repo_after")), fmt(med(rs, "kept"), ".0f"),
            fmt(med(rs, "packs_after"), ".0f")]) + " |")
    return "\n".join(lines)


def wicked_table(runs: dict[str, list[Run]]) -> str:
    lines = ["| run | packs deleted | packs repacked | packs written | MiB deleted | MiB written "
             "| trees deleted | index objects written / removed | duration_s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, rs in runs.items():
        if not key.startswith("wicked-dr"):
            continue
        lines.append("| " + " | ".join([
            key, fmt(med(rs, "packs_deleted"), ".0f"), fmt(med(rs, "packs_repacked"), ".0f"),
            fmt(med(rs, "packs_written"), ".0f"), mib(med(rs, "bytes_deleted")),
            mib(med(rs, "bytes_written")), fmt(med(rs, "trees_deleted"), ".0f"),
            f"{fmt(med(rs, 'index_objects_written'), '.0f')} / "
            f"{fmt(med(rs, 'index_objects_removed'), '.0f')}",
            fmt(med(rs, "duration_s"))]) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--history", type=int, default=24, help="backups: 1 full + N-1 incremental")
    p.add_argument("--change", type=float, default=0.01,
                   help="fraction mutated before each incremental")
    p.add_argument("--keep-last", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/wdr-bench-prune"))
    p.add_argument("--no-repack-scenario", action="store_true",
                   help="leave out the prune with repack_below_percent 0")
    p.add_argument("--daemon-seconds", type=float, default=120.0,
                   help="how long to sample the daemon at rest (0: not at all)")
    p.add_argument("--profile", action="store_true", help="one more prune under cProfile")
    p.add_argument("--wicked-dr", default=None, help="command to run wicked-dr "
                   "(default: python -m wicked_dr.cli)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not shutil.which("restic"):
        print("restic is not installed", file=sys.stderr)
        return 2
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cmd = (shlex.split(args.wicked_dr) if args.wicked_dr
           else [sys.executable, "-m", "wicked_dr.cli"])
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    info = build_history(work, cmd, args.users, args.seed, args.history, args.change)
    base = work / "base"
    runs: dict[str, list[Run]] = {}

    def add(key: str, run: Run | None) -> None:
        if run is not None:
            runs.setdefault(key, []).append(run)

    for repeat in range(args.repeats):
        order = ["wicked-dr", "restic"] if repeat % 2 == 0 else ["restic", "wicked-dr"]
        for tool in order:
            if tool == "wicked-dr":
                got = prune_wicked(work, base, cmd, "wdr", 50.0, args.keep_last, True)
                add("wicked-dr prune --dry-run", got.get("dry-run"))
                add("wicked-dr prune", got["prune"])
            else:
                got = prune_restic(work, base, "restic", args.keep_last)
                add("restic forget --prune --dry-run", got.get("dry-run"))
                add("restic forget --prune", got["prune"])
            print(f"repeat {repeat + 1} {tool}: "
                  + ", ".join(f"{k} {r.seconds:.2f} s" for k, r in got.items()), file=sys.stderr)
        if not args.no_repack_scenario:
            got = prune_wicked(work, base, cmd, "wdr-norepack", 0.0, args.keep_last, False)
            add("wicked-dr prune (repack_below_percent 0)", got["prune"])
            print(f"repeat {repeat + 1} no repack: {got['prune'].seconds:.2f} s",
                  file=sys.stderr)
    report = [f"{args.users} users, {info['files']} files, {info['raw_bytes'] / 2**20:.1f} MiB "
              f"raw; history of {args.history} backups ({args.change:.0%} changed before each "
              f"incremental); keep the newest {args.keep_last}; {args.repeats} repeats; "
              f"{os.cpu_count()} CPUs",
              f"history built: wicked-dr backups {sum(info['wdr_backup_s']):.1f} s in all, "
              f"restic {sum(info['restic_backup_s']):.1f} s",
              "", prune_table(runs), "", wicked_table(runs)]
    daemon: dict[str, Any] | None = None
    if args.daemon_seconds > 0:
        daemon = bench_daemon(work, cmd, work / "run-wdr", base / "volume", args.daemon_seconds)
        report += ["", "daemon at rest: " + json.dumps(daemon, indent=1)]
    profile = profile_prune(work, base, args.keep_last) if args.profile else None
    if profile:
        (work / "prune-profile.txt").write_text(profile)
        report += ["", f"profile: {work / 'prune-profile.txt'}"]
    print("\n".join(report))
    (work / "results.json").write_text(json.dumps({
        "history": info, "runs": {k: [asdict(r) for r in rs] for k, rs in runs.items()},
        "daemon": daemon}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
