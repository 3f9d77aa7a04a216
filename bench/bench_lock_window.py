"""How long a backup holds wicked's ``global.lock``, old code against new (run by hand).

    python bench/bench_lock_window.py --users 20000 --repeats 3 --workdir /var/tmp/bench-lw

Three configurations: the old code (the whole scan under the lock; a checkout given by
``--old``, default /work/wt-old), the new code (this checkout) with ``volume.watch: true`` (an
inotify watch names what changed while the volume was read; only that is re-read under the
lock) and with ``volume.watch: false`` (every file re-statted under the lock). For each repeat
and each configuration, on a fresh copy of the same pristine volume (N users, ``--seed``):

- ``full``: a backup into a fresh repository and state directory;
- ``mutate 1%``: ``mutate`` of ``--change`` of the files (seed differs per repeat, same for
  every configuration), then an incremental backup;
- ``nothing changed``: another incremental backup;
- ``writer``: ``wicked_dr.testing.wicked_writer --respect-locks --chunks 2
  --chunk-sleep-ms 3`` started on the volume, its ready line awaited, 0.5 s, then an
  incremental backup; the writer is stopped (SIGTERM) afterwards.

Every backup is ``python -m wicked_dr.cli --config CFG --json -q backup`` under
``/usr/bin/time`` (``bench/timing.py``): wall seconds, peak RSS, and the JSON's
``duration_s``, ``lock_window_s``, ``files_reread_under_lock``. Prints a Markdown table of
medians and the ratio new/old per case (when "old" ran); writes ``results.json`` in the workdir.
``--configs`` runs only the named configurations (comma-separated, default all).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.timing import Run, last_json, timed
from wicked_dr.testing.sample_volume import generate, mutate

ROOT = Path(__file__).resolve().parent.parent

CASES = ("full", "mutate 1%", "nothing changed", "writer")
CONFIGS = ("old", "new watch=true", "new watch=false")


def config_file(work: Path, name: str, volume: Path, watch: bool | None) -> Path:
    slug = name.replace(" ", "-").replace("=", "-")
    vol: dict[str, object] = {"path": str(volume)}
    if watch is not None:  # the old code has no volume.watch
        vol["watch"] = watch
    cfg = work / f"{slug}.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "repository": {"url": f"file://{work / 'repo'}"},
        "volume": vol,
        "state_dir": str(work / "state"),
        "log": {"level": "warning"},
    }, indent=2))
    return cfg


def backup(cmd: list[str], cfg: Path, env: dict[str, str]) -> Run:
    # cwd outside both checkouts: ``python -m`` puts the cwd ahead of PYTHONPATH.
    run, out = timed([*cmd, "--config", str(cfg), "--json", "-q", "backup"], env=env,
                     cwd=cfg.parent)
    doc = last_json(out)
    for key in ("duration_s", "lock_window_s", "files_reread_under_lock", "files",
                "files_unchanged"):
        if key in doc:
            run.extra[key] = doc[key]
    return run


def with_writer(volume: Path, action) -> tuple[Run, dict]:
    """Run ``action()`` while wicked_writer (this checkout's) rewrites files on the volume;
    its run and the writer's closing counters."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.testing.wicked_writer", str(volume),
         "--seconds", "3600", "--respect-locks", "--chunks", "2", "--chunk-sleep-ms", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=volume.parent)
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        if not json.loads(line or "{}").get("ready"):
            raise RuntimeError(f"writer not ready: {line!r} {writer.stderr.read()[-2000:]}")
        time.sleep(0.5)
        run = action()
    finally:
        writer.send_signal(signal.SIGTERM)
        out, err = writer.communicate(timeout=60)
    if writer.returncode != 0:
        raise RuntimeError(f"writer failed ({writer.returncode}): {err[-2000:]}")
    return run, last_json(out)


def restore_volume(pristine: Path, volume: Path) -> None:
    shutil.rmtree(volume, ignore_errors=True)
    subprocess.run(["cp", "-a", str(pristine), str(volume)], check=True)
    # Warm the cache as the volume of a running portal would be.
    subprocess.run(f"tar -C '{volume}' -cf - . | cat > /dev/null", shell=True, check=True)


def median(runs: list[Run], key: str) -> float | None:
    if key == "seconds":
        values = [r.seconds for r in runs]
    elif key == "rss":
        values = [r.rss_mib for r in runs]
    else:
        values = [r.extra[key] for r in runs if key in r.extra]
    return float(statistics.median(values)) if values else None


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: dict[str, dict[str, list[Run]]]) -> str:
    lines = ["| code / watch | case | duration s | lock window s | files re-read under lock "
             "| peak RSS MiB | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in CONFIGS:
        for case in CASES:
            rs = runs.get(name, {}).get(case)
            if not rs:
                continue
            lines.append("| " + " | ".join([
                name, case, fmt(median(rs, "duration_s")), fmt(median(rs, "lock_window_s"), ".3f"),
                fmt(median(rs, "files_reread_under_lock"), ".0f"), fmt(median(rs, "rss"), ".0f"),
                fmt(median(rs, "seconds"))]) + " |")
    return "\n".join(lines)


def ratios(runs: dict[str, dict[str, list[Run]]]) -> str:
    lines = ["| case | " + " | ".join(f"{n} / old: duration | wall" for n in CONFIGS[1:]) + " |",
             "|---|" + "---:|---:|" * (len(CONFIGS) - 1)]
    for case in CASES:
        old = runs.get("old", {}).get(case)
        if not old:
            continue
        cells = []
        for name in CONFIGS[1:]:
            new = runs.get(name, {}).get(case)
            for key in ("duration_s", "seconds"):
                o, n = median(old, key), median(new, key) if new else None
                cells.append(fmt(n / o if n is not None and o else None))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--change", type=float, default=0.01)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/bench-lw"))
    p.add_argument("--old", type=Path, default=Path("/work/wt-old"),
                   help="checkout of the old code (before the lock-window change)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated subset of: " + ", ".join(CONFIGS) + " (default all)")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        p.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    pristine, volume = work / "pristine", work / "volume"
    stamp = work / "pristine.params"
    want = json.dumps({"users": args.users, "seed": args.seed})
    if not (stamp.exists() and stamp.read_text() == want):
        shutil.rmtree(pristine, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        t0 = time.monotonic()
        stats = generate(pristine, args.users, seed=args.seed)
        stamp.write_text(want)
        print(f"generated {stats.files} files, {stats.bytes / 2**20:.1f} MiB in "
              f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    cmd = [sys.executable, "-m", "wicked_dr.cli"]
    envs = {"old": {**os.environ, "PYTHONPATH": str(args.old)},
            "new watch=true": {**os.environ, "PYTHONPATH": str(ROOT)},
            "new watch=false": {**os.environ, "PYTHONPATH": str(ROOT)}}
    watches = {"old": None, "new watch=true": True, "new watch=false": False}
    runs: dict[str, dict[str, list[Run]]] = {}
    writer_counts: list[dict] = []
    files = 0
    for repeat in range(args.repeats):
        for name in [c for c in CONFIGS if c in configs]:
            t0 = time.monotonic()
            restore_volume(pristine, volume)
            cfg = config_file(work, name, volume, watches[name])
            env = envs[name]
            shutil.rmtree(work / "repo", ignore_errors=True)
            shutil.rmtree(work / "state", ignore_errors=True)
            got = runs.setdefault(name, {})
            got.setdefault("full", []).append(run := backup(cmd, cfg, env))
            files = run.extra.get("files", files)
            changed = mutate(volume, args.change, seed=args.seed * 1000 + repeat)
            got.setdefault("mutate 1%", []).append(backup(cmd, cfg, env))
            got.setdefault("nothing changed", []).append(backup(cmd, cfg, env))
            run, counts = with_writer(
                volume, lambda cfg=cfg, env=env: backup(cmd, cfg, env))
            got.setdefault("writer", []).append(run)
            writer_counts.append({"config": name, "repeat": repeat, **counts})
            print(f"repeat {repeat + 1} {name}: mutated {len(changed)}; " + "; ".join(
                f"{c} {got[c][-1].extra.get('duration_s')} s, lock "
                f"{got[c][-1].extra.get('lock_window_s')} s, reread "
                f"{got[c][-1].extra.get('files_reread_under_lock', '-')}, "
                f"{got[c][-1].rss_mib:.0f} MiB" for c in CASES)
                + f" ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    report = (f"{args.users} users, {files} files, {args.repeats} repeats, "
              f"{os.cpu_count()} CPUs; medians\n\n{table(runs)}")
    if "old" in runs:
        report += f"\n\nRatio new/old (medians):\n\n{ratios(runs)}"
    report += "\n\nWriter counters:\n\n" + "\n".join(json.dumps(c) for c in writer_counts)
    print(report)
    (work / "results.json").write_text(json.dumps(
        {"users": args.users, "files": files, "writer": writer_counts,
         "runs": {n: {c: [asdict(r) for r in rs] for c, rs in cs.items()}
                  for n, cs in runs.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
