"""The volume's probe: its files restored into a scratch Docker volume and checked from inside.

The snapshot's file tree goes into a scratch volume as a tar stream (every blob and file
verified on the way, owned by the configured restore owner as a restore would make them);
a second volume gets the checker (``wicked_dr/verify_data.py``, standard library only) and
the plain-text manifest (JSON lines: path, size, SHA-256). A container of ``verify.image``
(anything with ``python3``) then checks, from inside, every file against the manifest and
wicked's data model. Nothing of this machine's file system is mounted (wicked-dr may itself
run in a container, "Docker out of Docker"): the data travels as streams. The tar is
streamed into the engine while it is read from the repository.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import wicked_dr.verify_data as verify_data
from wicked_dr.errors import DockerError
from wicked_dr.repository.snapshot import SourceRecord
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources.base import ProbeBench, ScratchOutcome, TreeReader

NAME = "volume"
DATA_MOUNT = "/data"
TOOLS_MOUNT = "/tools"
CHECKER = "verify_data.py"
MANIFEST = "manifest.jsonl"
_CHECKER_SOURCE = Path(verify_data.__file__)
CHUNK = 1 << 20


def probe_volume(reader: TreeReader, record: SourceRecord,
                 bench: ProbeBench) -> list[ProbeResult]:
    """Restore ``record``'s file tree into a scratch volume and check it there; then, when
    configured, the smoke probe starts portal-api on that volume (``smoke_probe.py``)."""
    started = time.monotonic()
    data = bench.scratch.volume("data", memory_mib=bench.memory_mib, holder_image=bench.image)
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
    results = [_result(outcome, figures, round(time.monotonic() - started, 3))]
    if bench.smoke is not None:
        from wicked_dr.sources.smoke_probe import probe_smoke

        results.append(probe_smoke(bench, data))
    return results


def _fill_data(reader: TreeReader, record: SourceRecord, bench: ProbeBench,
               volume: str) -> int:
    """The file tree streamed into ``volume`` as it is read from the repository: the tar is
    made on one thread while the engine extracts it, never held whole nor spooled to disk
    (a 20 000-user volume is a 230 MB tar). An error of the repository side (a damaged
    pack) is what is raised, not the engine's complaint about the archive cut short."""
    stream = _TarStream(reader, record.trees, bench.owner)
    try:
        bench.scratch.fill(volume, stream.chunks(), bench.image, DATA_MOUNT)
    except DockerError as exc:
        stream.close()
        stream.raise_error()
        if bench.memory_mib:
            raise DockerError(f"{exc.one_line()} (the restored files go into a tmpfs of "
                              f"verify.scratch_memory_mib = {bench.memory_mib} MiB: raise it, "
                              "or set 0 to use the Docker host's disk)") from exc
        raise
    except BaseException:
        stream.close()
        stream.raise_error()
        raise
    return stream.finish()


class _TarStream:
    """``reader.write_tar`` on a thread of its own, into a pipe that ``chunks`` reads."""

    def __init__(self, reader: TreeReader, trees: tuple[str, ...],
                 owner: tuple[int, int]) -> None:
        read_fd, write_fd = os.pipe()
        self._out = os.fdopen(read_fd, "rb", buffering=0)
        self._entries = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="verify-tar", daemon=True,
                                        args=(reader, trees, owner, write_fd))
        self._thread.start()

    def _write(self, reader: TreeReader, trees: tuple[str, ...], owner: tuple[int, int],
               write_fd: int) -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=0) as sink:
                self._entries = reader.write_tar(trees, sink, owner=owner)
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc

    def chunks(self) -> Iterator[bytes]:
        while chunk := self._out.read(CHUNK):
            yield chunk

    def close(self) -> None:
        """Stop reading: the writer then ends with a closed pipe."""
        self._out.close()
        self._thread.join()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> int:
        """The entries written, once the writer ended; its error, if it had one."""
        self._thread.join()
        self._out.close()
        self.raise_error()
        return self._entries


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
