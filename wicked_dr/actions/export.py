"""``wicked-dr export SNAPSHOT --tar FILE|-``: a plain tar, the way out of our format."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from wicked_dr.actions.common import Result, RunOptions, open_repository, snapshot_reader
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.catalog import resolve
from wicked_dr.engine.export import ReaderClosedError, export_tar
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot


@dataclass(frozen=True)
class ExportResult(Result):
    """What ``export --tar FILE --json`` prints (with ``--tar -`` stdout is the tar alone)."""

    snapshot: str
    entries: int
    tar: str


def run_export(config: Config, snapshot_ref: str, tar_path: str,
               options: RunOptions | None = None) -> ExportResult:
    """Write the snapshot as tar to ``tar_path`` ('-' is stdout); a file appears only whole."""
    options = options or RunOptions()
    repo = open_repository(config)
    snapshot = resolve(repo, snapshot_ref)
    reader = snapshot_reader(repo, config, snapshot, options).blobs
    if tar_path == "-":
        entries = _export_to_stdout(repo, reader, snapshot, options.cancel)
    else:
        entries = _export_to_file(repo, reader, snapshot, Path(tar_path), options.cancel)
    return ExportResult(snapshot.id, entries, tar_path)


def _export_to_stdout(repo: Repository, reader: BlobReader, snapshot: Snapshot,
                      cancel: CancelToken) -> int:
    """The tar on stdout, written unbuffered so that a reader closing the pipe (``| tar -t``
    stops after the end-of-archive blocks, ``| head`` anywhere) is told apart exactly."""
    sys.stdout.flush()
    with open(sys.stdout.fileno(), "wb", buffering=0, closefd=False) as out:
        try:
            stats = export_tar(repo, reader, snapshot, out, out_name="stdout", cancel=cancel)
        except ReaderClosedError:
            _detach_stdout()
            raise
    if stats.reader_closed:
        _detach_stdout()
    return stats.entries


def _detach_stdout() -> None:
    """The reader closed stdout: point it at /dev/null, so that nothing written later (an
    error object with --json, Python's flush at exit) fails with BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _export_to_file(repo: Repository, reader: BlobReader, snapshot: Snapshot,
                    path: Path, cancel: CancelToken) -> int:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as out:
            entries = export_tar(repo, reader, snapshot, out, cancel=cancel).entries
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return entries
