"""What every benchmark here measures a process with: wall time and peak RSS from
``/usr/bin/time``, and the JSON a ``--json`` command printed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIME = "/usr/bin/time"


@dataclass
class Run:
    """One timed process: wall seconds, peak RSS and whatever else was measured."""

    seconds: float
    rss_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


def timed(argv: list[str] | str, *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[Run, str]:
    """Run a command (a list, or a shell pipeline as str) under /usr/bin/time; the run and
    its stdout. RuntimeError with the end of stderr when it fails."""
    # Write back what earlier steps left dirty (a restore creates ~100 k files, rmtree
    # removes as many) so that writeback does not slow down whichever run comes next.
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        cmd = ["bash", "-o", "pipefail", "-c", argv] if isinstance(argv, str) else argv
        proc = subprocess.run([TIME, "-f", "%e %M", "-o", tf.name, *cmd], env=env, cwd=cwd,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv!r} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        seconds, rss_kib = tf.read().split()[-2:]
    return Run(float(seconds), int(rss_kib) / 1024), proc.stdout


def last_json(out: str) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed (whole stdout, else its last JSON line)."""
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return doc
    for line in reversed(out.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}
