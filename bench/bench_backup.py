"""Benchmark ``wicked-dr`` backup/restore against ``tar | zstd -3`` and restic (run by hand).

    python bench/bench_backup.py --users 20000 --repeats 3 --workdir /var/tmp/wdr-bench

For each repeat: a full backup into a fresh repository, a ``mutate`` of 1 % of the files, an
incremental backup, and a restore of the newest snapshot into an empty directory. Caches are
warm (one untimed read of the volume first). Wall time and peak RSS come from ``/usr/bin/time``
per process. Prints a Markdown table (medians) and writes ``results.json`` in the workdir.
Not part of the test suite.

    python bench/bench_backup.py --users 20000 --restore-history 12 --repeats 2

instead builds one wicked-dr repository with a full backup and 12 incrementals of
``--change`` each, then alternates a restore of the first snapshot with one of the newest
(whose files are spread over the packs of every backup), ``--repeats`` times: what planning
the restore by pack (``engine/restore_plan.py``) is for.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.timing import Run, last_json, timed
from wicked_dr.testing.sample_volume import generate, mutate

TOOLS = ("tar+zstd", "restic", "wicked-dr")
OPS = ("full", "incremental", "restore")


@dataclass
class Results:
    """Every run, by tool and operation, plus the volume it ran on."""

    users: int
    files: int
    raw_bytes: int
    runs: dict[str, dict[str, list[Run]]] = field(default_factory=dict)

    def add(self, tool: str, op: str, run: Run) -> None:
        self.runs.setdefault(tool, {}).setdefault(op, []).append(run)


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under path."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def file_set(path: Path) -> set[str]:
    """Repository objects (a PUT each on S3). The local backend's own ``.locks/`` files are
    not objects: S3 does the same compare-and-swap server-side."""
    return {os.path.join(d, n) for d, _s, names in os.walk(path) for n in names
            if "/.locks" not in d and not d.endswith(".locks")}


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --- tar | zstd ---------------------------------------------------------------------------

def bench_tar(work: Path, volume: Path, results: Results, op: str) -> None:
    out = work / f"tar-{op}.tar.zst"
    if op == "restore":
        target = fresh(work / "restore-tar")
        src = shlex.quote(str(work / "tar-full.tar.zst"))
        run, _ = timed(f"zstd -d -q -c {src} | tar -C {shlex.quote(str(target))} -xf -")
        run.extra["files"] = tree_size(target)[0]
    else:
        # tar has no incremental mode comparable here: "incremental" is a second full archive.
        run, _ = timed(f"tar -C {shlex.quote(str(volume))} -cf - . "
                       f"| zstd -3 -q -f -o {shlex.quote(str(out))}")
        run.extra["repo_bytes"] = out.stat().st_size
    results.add("tar+zstd", op, run)


# --- restic -------------------------------------------------------------------------------

def restic_env(work: Path) -> dict[str, str]:
    return {**os.environ, "RESTIC_PASSWORD": "bench-only-password",
            "RESTIC_REPOSITORY": str(work / "restic-repo"),
            "RESTIC_CACHE_DIR": str(work / "restic-cache")}


def bench_restic(work: Path, volume: Path, results: Results, op: str) -> None:
    env = restic_env(work)
    repo = Path(env["RESTIC_REPOSITORY"])
    if op == "full":
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(env["RESTIC_CACHE_DIR"], ignore_errors=True)
        subprocess.run(["restic", "init", "--quiet"], env=env, check=True, capture_output=True)
    if op == "restore":
        target = fresh(work / "restore-restic")
        run, _ = timed(["restic", "restore", "latest", "--target", str(target), "--quiet"],
                       env=env)
        run.extra["files"] = tree_size(target)[0]
    else:
        before = file_set(repo)
        run, _ = timed(["restic", "backup", "--quiet", "--host", "bench", "."], env=env,
                       cwd=volume)
        run.extra["new_objects"] = len(file_set(repo) - before)
        run.extra["repo_bytes"] = tree_size(repo)[1]
    results.add("restic", op, run)


# --- wicked-dr ----------------------------------------------------------------------------

def wicked_config(work: Path, volume: Path) -> Path:
    cfg = work / "wicked-dr.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "state_dir": str(work / "wdr-state"),
        "repository": {"url": str(work / "wdr-repo")},
        # The default quiesce mode, so the lock window is measured too.
        "volume": {"path": str(volume), "quiesce": "wicked-lock"},
        "log": {"level": "warning"},
    }, indent=2))
    return cfg


def bench_wicked(work: Path, volume: Path, results: Results, op: str, cmd: list[str]) -> None:
    cfg = wicked_config(work, volume)
    repo = work / "wdr-repo"
    if op == "full":
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(work / "wdr-state", ignore_errors=True)
    if op == "restore":
        target = work / "restore-wdr"
        shutil.rmtree(target, ignore_errors=True)
        run, out = timed([*cmd, "--config", str(cfg), "restore", "latest", "--target",
                          str(target)])
        run.extra["files"] = tree_size(target)[0]
    else:
        before = file_set(repo)
        run, out = timed([*cmd, "--config", str(cfg), "backup", "--json"])
        run.extra.update(last_json(out))
        run.extra["new_objects"] = len(file_set(repo) - before)
        run.extra["repo_bytes"] = tree_size(repo)[1]
    results.add("wicked-dr", op, run)


def bench_restore_history(work: Path, volume: Path, results: Results, cmd: list[str],
                          incrementals: int, change: float, seed: int, repeats: int) -> None:
    """A full backup and ``incrementals`` backups of ``change`` each, then restores of the
    first and of the newest snapshot alternated ``repeats`` times (ops "restore first" and
    "restore after N"), so both see the same machine state."""
    cfg = wicked_config(work, volume)
    shutil.rmtree(work / "wdr-repo", ignore_errors=True)
    shutil.rmtree(work / "wdr-state", ignore_errors=True)
    first = str(last_json(subprocess.run([*cmd, "--config", str(cfg), "backup", "--json"],
                                          check=True, capture_output=True, text=True).stdout)
                ["snapshot"])
    for n in range(incrementals):
        mutate(volume, change, seed=seed * 1000 + n)
        subprocess.run([*cmd, "--config", str(cfg), "backup"], check=True, capture_output=True)
    for _ in range(repeats):
        for op, snapshot in (("restore first", first),
                             (f"restore after {incrementals}", "latest")):
            target = work / "restore-wdr"
            shutil.rmtree(target, ignore_errors=True)
            run, out = timed([*cmd, "--config", str(cfg), "restore", snapshot, "--target",
                              str(target), "--json"])
            run.extra["packs_fetched"] = last_json(out).get("packs_fetched")
            run.extra["files"] = tree_size(target)[0]
            print(f"{op}: {run}", file=sys.stderr)
            results.add("wicked-dr", op, run)


def history_table(results: Results) -> str:
    """Each restore of ``bench_restore_history``: wall time, packs fetched, peak RSS."""
    lines = ["| restore | run | wall s | packs fetched | files | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for op, runs in results.runs.get("wicked-dr", {}).items():
        for i, run in enumerate(runs, 1):
            lines.append(f"| {op} | {i} | {run.seconds:.2f} | {run.extra['packs_fetched']} "
                         f"| {run.extra['files']} | {run.rss_mib:.0f} |")
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------

def median(runs: Iterable[Run], key: str) -> float:
    values = [r.seconds if key == "seconds" else r.rss_mib if key == "rss" else r.extra[key]
              for r in runs]
    return float(statistics.median(values)) if values else float("nan")


def cell(results: Results, tool: str, op: str, key: str) -> float | None:
    runs = results.runs.get(tool, {}).get(op)
    if not runs or (key not in ("seconds", "rss") and key not in runs[0].extra):
        return None
    return median(runs, key)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: Results) -> str:
    base = cell(results, "tar+zstd", "full", "seconds")
    base_restore = cell(results, "tar+zstd", "restore", "seconds")
    lines = ["| tool | operation | wall s (median) | x tar+zstd | peak RSS MiB | repo MiB "
             "| raw/repo | new objects | wicked's lock held s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for tool in TOOLS:
        for op in OPS:
            secs = cell(results, tool, op, "seconds")
            if secs is None:
                continue
            ref = base_restore if op == "restore" else base
            repo = cell(results, tool, op, "repo_bytes")
            lines.append("| " + " | ".join([
                tool, op, fmt(secs), fmt(secs / ref if ref else None),
                fmt(cell(results, tool, op, "rss"), ".0f"),
                fmt(repo / 2**20 if repo else None, ".1f"),
                fmt(results.raw_bytes / repo if repo else None, ".1f"),
                fmt(cell(results, tool, op, "new_objects"), ".0f"),
                fmt(cell(results, tool, op, "lock_window_s"))]) + " |")
    return "\n".join(lines)


def targets(results: Results, big: bool) -> list[str]:
    """The project's performance targets, each PASS/FAIL with the measured value."""
    def w(op: str, key: str) -> float | None:
        return cell(results, "wicked-dr", op, key)
    tar_full = cell(results, "tar+zstd", "full", "seconds")
    tar_restore = cell(results, "tar+zstd", "restore", "seconds")
    checks: list[tuple[str, float | None, float | None]] = [
        ("full backup wall <= 2x tar|zstd", w("full", "seconds"),
         2 * tar_full if tar_full else None),
        ("incremental wall <= 1x tar|zstd full", w("incremental", "seconds"), tar_full),
        ("incremental new objects <= 10", w("incremental", "new_objects"), 10),
        ("restore wall <= 1.5x zstd -d|tar -x", w("restore", "seconds"),
         1.5 * tar_restore if tar_restore else None),
        (f"peak RSS <= {250 if big else 150} MiB",
         max((r.rss_mib for runs in results.runs.get("wicked-dr", {}).values() for r in runs),
             default=None), 250 if big else 150),
    ]
    out = []
    for name, value, limit in checks:
        verdict = "n/a" if value is None or limit is None else (
            "PASS" if value <= limit else "FAIL")
        out.append(f"- {verdict}: {name} (measured {fmt(value)}, limit {fmt(limit)})")
    return out


# --- main ---------------------------------------------------------------------------------

def default_wicked_cmd() -> list[str]:
    found = shutil.which("wicked-dr")
    return [found] if found else [sys.executable, "-m", "wicked_dr.cli"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--change", type=float, default=0.01, help="fraction mutated before the "
                   "incremental backup")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/wicked-dr-bench"))
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    p.add_argument("--wicked-dr", default=None, help="command to run wicked-dr "
                   "(default: wicked-dr on PATH, else python -m wicked_dr.cli)")
    p.add_argument("--restore-history", type=int, default=0, metavar="N", help="instead: "
                   "restore the first snapshot and the one after N incrementals, alternated")
    return p.parse_args(argv)


def prepare_volume(work: Path, users: int, seed: int) -> Path:
    volume = work / "volume"
    stamp = work / "volume.params"
    want = json.dumps({"users": users, "seed": seed})
    if not (stamp.exists() and stamp.read_text() == want):
        fresh(volume)
        stamp.unlink(missing_ok=True)
        stats = generate(volume, users, seed=seed)
        stamp.write_text(want)
        print(f"generated {stats.files} files, {stats.bytes / 2**20:.1f} MiB", file=sys.stderr)
    return volume


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    tools = [t for t in args.tools.split(",") if t]
    if "restic" in tools and not shutil.which("restic"):
        print("restic not installed: skipped", file=sys.stderr)
        tools.remove("restic")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    volume = prepare_volume(work, args.users, args.seed)
    wicked_cmd = shlex.split(args.wicked_dr) if args.wicked_dr else default_wicked_cmd()
    env_path = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    timed(f"tar -C {shlex.quote(str(volume))} -cf - . | cat > /dev/null")  # warm the cache
    files, raw = tree_size(volume)
    results = Results(args.users, files, raw)
    if args.restore_history:
        bench_restore_history(work, volume, results, wicked_cmd, args.restore_history,
                              args.change, args.seed, args.repeats)
        print(f"{args.users} users, {files} files, {raw / 2**20:.1f} MiB raw, "
              f"{os.cpu_count()} CPUs\n\n{history_table(results)}")
        return 0
    benches = {"tar+zstd": lambda op: bench_tar(work, volume, results, op),
               "restic": lambda op: bench_restic(work, volume, results, op),
               "wicked-dr": lambda op: bench_wicked(work, volume, results, op, wicked_cmd)}
    for repeat in range(args.repeats):
        for tool in tools:
            benches[tool]("full")
        # Every tool sees the same changed volume for its incremental run.
        changed = mutate(volume, args.change, seed=args.seed * 1000 + repeat)
        print(f"repeat {repeat + 1}: mutated {len(changed)} files", file=sys.stderr)
        for tool in tools:
            benches[tool]("incremental")
        for tool in tools:
            benches[tool]("restore")
    report = (f"{args.users} users, {files} files, {raw / 2**20:.1f} MiB raw, "
              f"{args.repeats} repeats, {os.cpu_count()} CPUs\n\n{table(results)}\n\n"
              + "\n".join(targets(results, big=args.users >= 100_000)))
    print(report)
    (work / "results.json").write_text(json.dumps(
        {"users": results.users, "files": files, "raw_bytes": raw,
         "runs": {t: {op: [asdict(r) for r in runs] for op, runs in ops.items()}
                  for t, ops in results.runs.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
