"""The dynamic data volume as a source: a sorted walk, under wicked's lock when configured."""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wicked_dr.config import VolumeConfig
from wicked_dr.errors import RefusedError, SourceError
from wicked_dr.sources.base import TreeSink
from wicked_dr.wicked.quiesce import quiesced

READ_CHUNK = 4 * 1024 * 1024
WICKED_MARKERS = ("meta.json", "users/_index.json")


def is_excluded(name: str) -> bool:
    """Lock files are transient and must never come back with a restore; neither may the
    temporary file wicked-dr writes global.lock through (a kill -9 can leave one)."""
    return name.endswith(".lock") or name.startswith(".wicked-dr-")


class VolumeSource:
    """portal-api's dynamic data folder."""

    name = "volume"

    def __init__(self, config: VolumeConfig) -> None:
        self.config = config
        self.path = config.path

    def check_looks_like_wicked(self) -> None:
        """Refuse a folder that is not (or no longer) wicked's dynamic data."""
        if not self.path.is_dir():
            raise SourceError(f"volume.path {self.path} is not a directory")
        missing = [m for m in WICKED_MARKERS if not (self.path / m).is_file()]
        if missing:
            raise RefusedError(
                f"{self.path} does not look like wicked's dynamic data (missing "
                f"{', '.join(missing)}); refusing to snapshot it (use --force if this is "
                "intended; wicked 1.0 with Postgres storage keeps its data in the 'wicked' "
                "database instead)")

    def backup(self, sink: TreeSink) -> dict[str, Any]:
        """Walk the volume into ``sink`` under the configured quiesce mode."""
        with quiesced(self.path, self.config.quiesce, self.config.quiesce_timeout_s) as report:
            walk(self.path, sink)
        return {"path": str(self.path), "quiesce": report.mode,
                "lock_window_s": report.window_s, "waited_for_writes": report.waited_for_locks,
                "removed_stale_lock": report.removed_stale}


def walk(root: Path, sink: TreeSink) -> None:
    """Depth-first, names sorted per directory: exactly the manifest order."""
    _walk_dir(str(root), "", sink)


def _walk_dir(directory: str, rel_dir: str, sink: TreeSink) -> None:
    # Plain names, not DirEntry objects: wicked keeps 200 k files in one folder at 200 k
    # users, and a sorted list of DirEntry objects costs three times the memory.
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        sink.add_error(rel_dir or ".", exc.strerror or str(exc))
        return
    for name in names:
        if is_excluded(name):
            continue
        rel = f"{rel_dir}/{name}" if rel_dir else name
        _visit(f"{directory}/{name}", rel, sink)


def _visit(path: str, rel: str, sink: TreeSink) -> None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        sink.add_error(rel, exc.strerror or str(exc))
        return
    if statmod.S_ISDIR(st.st_mode):
        sink.add_dir(rel, st)
        _walk_dir(path, rel, sink)
    elif statmod.S_ISREG(st.st_mode):
        _add_file(path, rel, st, sink)
    elif statmod.S_ISLNK(st.st_mode):
        sink.add_symlink(rel, st, os.readlink(path))
    else:
        sink.add_error(rel, "not a regular file, directory or symlink; skipped")


def _add_file(path: str, rel: str, st: os.stat_result, sink: TreeSink) -> None:
    try:
        sink.add_file(rel, st, lambda: read_chunks(path))
    except OSError as exc:
        sink.add_error(rel, exc.strerror or str(exc))


def read_chunks(path: str) -> Iterator[bytes]:
    """A file's bytes in chunks, never following a symlink swapped in after the walk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, READ_CHUNK):
            yield chunk
    finally:
        os.close(fd)

