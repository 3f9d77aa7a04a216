"""Benchmark ``wicked-dr verify`` next to ``restore --target`` of the same snapshot (by hand).

    python bench/bench_verify.py --users 20000 --repeats 3 --workdir /var/tmp/wdr-verify

Generates the volume, takes one backup into a local repository, then alternates a restore of
that snapshot into an empty directory with a ``verify`` of it, ``--repeats`` times, each as
its own ``python -m wicked_dr.cli`` process. ``verify.image`` is the locally built test image
with python3 (``tests/fixtures/images.py``: no registry needed). Prints each run and the
medians: verify's wall time against the restore's (target: at most 2x), and how verify's
time splits into filling the scratch volume (``restore_s``), the checker's own time
(``checker_s``) and the rest of the check container's life (start-up and removal).
Not part of the test suite; needs the Docker engine (scripts/test-env.sh starts it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import docker
import yaml

from tests.fixtures.images import ImageBuilder
from wicked_dr.testing.sample_volume import generate


def main() -> None:
    args = _parser().parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    volume = work / "volume"
    stats = generate(volume, args.users, seed=1)
    image = ImageBuilder(docker.from_env()).base()
    config = _config(work, volume, image, args.memory_mib)
    _cli(config, "backup")
    restores, verifies = [], []
    for n in range(args.repeats):
        target = work / f"restore-{n}"
        restores.append(_timed(config, "restore", "latest", "--target", str(target)))
        shutil.rmtree(target)
        verifies.append(_timed(config, "verify", "latest", "--json"))
        print(f"run {n + 1}: restore {restores[-1][0]:.2f} s, verify {verifies[-1][0]:.2f} s "
              f"{_split(verifies[-1][1])}", flush=True)
    restore = statistics.median(r[0] for r in restores)
    verify = statistics.median(v[0] for v in verifies)
    print(f"\n{stats.files} files, {args.users} users; medians of {args.repeats}: restore "
          f"{restore:.2f} s, verify {verify:.2f} s = {verify / restore:.2f}x the restore")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/var/tmp/wdr-verify")
    parser.add_argument("--memory-mib", type=int, default=0,
                        help="verify.scratch_memory_mib (0: scratch volume on disk)")
    return parser


def _config(work: Path, volume: Path, image: str, memory_mib: int) -> Path:
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(work / "state"), "repository": {"url": str(work / "repo")},
        "volume": {"path": str(volume)}, "log": {"level": "warning"},
        "verify": {"image": image, "pull": "never", "scratch_memory_mib": memory_mib}}))
    return path


def _cli(config: Path, *args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "wicked_dr.cli", "--config", str(config),
                          *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {run.stderr.strip()}")
    return run.stdout


def _timed(config: Path, *args: str) -> tuple[float, Any]:
    began = time.monotonic()
    out = _cli(config, *args)
    seconds = time.monotonic() - began
    return seconds, json.loads(out) if "--json" in args else None


def _split(result: Any) -> str:
    figures = result["probes"][0]["figures"]
    startup = figures["check_s"] - figures["checker_s"]
    return (f"(fill {figures['restore_s']:.2f} s, checker {figures['checker_s']:.2f} s, "
            f"check container start/stop {startup:.2f} s)")


if __name__ == "__main__":
    main()
