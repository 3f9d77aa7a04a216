"""The volume's probe: its files restored into a scratch Docker volume and checked from inside.

The snapshot's file tree goes into a scratch volume as a tar stream (every blob and file
verified on the way, owned by the configured restore owner as a restore would make them);
a second volume gets the checker (``wicked_dr/verify_data.py``, standard library only) and
the plain-text manifest (JSON lines: path, size, SHA-256). A container of ``verify.image``
(anything with ``python3``) then checks, from inside, every file against the manifest and
wicked's data model. Nothing of this machine's file system is mounted (wicked-dr may itself
run in a container, "Docker out of Docker"): the data travels as streams. The tar is spooled
in ``bench.spool_dir`` first, because the engine's archive upload wants a whole body.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import wicked_dr.verify_data as verify_data
from wicked_dr.repository.snapshot import SourceRecord
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources.base import ProbeBench, ScratchOutcome, TreeReader

NAME = "volume"
DATA_MOUNT = "/data"
TOOLS_MOUNT = "/tools"
CHECKER = "verify_data.py"
MANIFEST = "manifest.jsonl"
_CHECKER_SOURCE = Path(verify_data.__file__)


def probe_volume(reader: TreeReader, record: SourceRecord, bench: ProbeBench) -> ProbeResult:
    """Restore ``record``'s file tree into a scratch volume and check it there."""
    started = time.monotonic()
    data = bench.scratch.volume("data")
    entries = _fill_data(reader, record, bench, data)
    restored = time.monotonic()
    tools = bench.scratch.volume("tools")
    bench.scratch.fill(tools, _tools_tar(reader, record), bench.image, TOOLS_MOUNT)
    if bench.before_check is not None:
        bench.before_check(data)
    outcome = bench.scratch.run(
        bench.image, _checker_command(), {data: DATA_MOUNT, tools: TOOLS_MOUNT},
        user=f"{bench.owner[0]}:{bench.owner[1]}", timeout_s=bench.timeout_s,
        cancel=bench.cancel)
    figures = {"entries": float(entries), "restore_s": round(restored - started, 3),
               "check_s": outcome.duration_s}
    return _result(outcome, figures, round(time.monotonic() - started, 3))


def _fill_data(reader: TreeReader, record: SourceRecord, bench: ProbeBench,
               volume: str) -> int:
    with tempfile.TemporaryFile(dir=bench.spool_dir) as spool:
        entries = reader.write_tar(record.trees, spool, owner=bench.owner)
        spool.seek(0)
        bench.scratch.fill(volume, spool, bench.image, DATA_MOUNT)
    return entries


def _tools_tar(reader: TreeReader, record: SourceRecord) -> bytes:
    """The checker and the manifest, readable by anybody (the checker runs as the restore
    owner)."""
    manifest = "".join(verify_data.manifest_line(path, size, sha)
                       for path, size, sha in reader.files(record.trees)).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, CHECKER, _CHECKER_SOURCE.read_bytes())
        _add(tar, MANIFEST, manifest)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def _checker_command() -> list[str]:
    # -I: isolated, so nothing of the image's environment or site-packages is involved.
    return ["python3", "-I", f"{TOOLS_MOUNT}/{CHECKER}", DATA_MOUNT,
            "--manifest", f"{TOOLS_MOUNT}/{MANIFEST}", "--json"]


def _result(outcome: ScratchOutcome, figures: dict[str, float],
            duration_s: float) -> ProbeResult:
    """The checker's verdict; a checker that did not answer is a problem itself."""
    try:
        report = json.loads(outcome.stdout)
        problems = tuple(map(str, report["problems"]))
        warnings = tuple(map(str, report["warnings"]))
        figures["files"] = float(report["files_checked"])
        # The checker's own time: the rest of check_s is the container's start and end.
        figures["checker_s"] = float(report["duration_s"])
    except (ValueError, KeyError, TypeError):
        last = (outcome.stderr.strip().splitlines() or ["no output"])[-1]
        problems = (f"the checker did not report (exit {outcome.exit_code}): {last}",)
        warnings = ()
    if not problems and outcome.exit_code != 0:
        problems = (f"the checker exited {outcome.exit_code} without naming a problem",)
    return ProbeResult(NAME, problems, warnings, duration_s, figures)
