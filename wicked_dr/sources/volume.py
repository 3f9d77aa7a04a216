"""The dynamic data volume as a source: handed to the engine's scan under wicked's lock."""

from __future__ import annotations

import re
from pathlib import Path

from wicked_dr.config import VolumeConfig
from wicked_dr.errors import RefusedError, SourceError
from wicked_dr.portal.quiesce import quiesced
from wicked_dr.repository.snapshot import TREE_SOURCE, Snapshot, SourceRecord
from wicked_dr.sources.base import (
    BackupContext,
    DirRestore,
    SourceBackup,
    SourceKind,
    TreeReader,
    TreeSink,
)

WICKED_MARKERS = ("meta.json", "users/_index.json")


# Lock files are transient and must never come back with a restore; neither may the
# temporary file wicked-dr writes global.lock through (a kill -9 can leave one). A compiled
# pattern's ``match``: the scan filters every name of the volume with it, and a C callable
# costs no Python frame per name.
is_excluded = re.compile(r"\.wicked-dr-|.*\.lock\Z", re.DOTALL).match


class VolumeSource:
    """portal-api's dynamic data folder: a file tree, snapshotted under wicked's lock."""

    name = TREE_SOURCE
    kind: SourceKind = "tree"
    configured = True  # the volume is what wicked-dr is for

    def __init__(self, config: VolumeConfig) -> None:
        self.config = config
        self.path = config.path

    def check_ready(self, *, force: bool) -> None:
        """The volume exists, and (unless forced) looks like wicked's dynamic data."""
        self.check_exists()
        if not force:
            self.check_looks_like_wicked()

    def check_exists(self) -> None:
        """Fail on a volume.path that does not exist or is no directory (even with --force:
        there is nothing to snapshot)."""
        if not self.path.exists():
            raise SourceError(f"volume.path {self.path} does not exist; set volume.path to "
                              "portal-api's dynamic data folder (is the volume mounted?)")
        if not self.path.is_dir():
            raise SourceError(f"volume.path {self.path} is not a directory")

    def check_looks_like_wicked(self) -> None:
        """Refuse a folder that is not (or no longer) wicked's dynamic data."""
        missing = [m for m in WICKED_MARKERS if not (self.path / m).is_file()]
        if missing:
            raise RefusedError(
                f"{self.path} does not look like wicked's dynamic data (missing "
                f"{', '.join(missing)}); refusing to snapshot it (use --force if this is "
                "intended; wicked 1.0 with Postgres storage keeps its data in the 'wicked' "
                "database instead)")

    def backup(self, sink: TreeSink, context: BackupContext) -> SourceBackup:
        """Walk the volume into ``sink`` under the configured quiesce mode, waiting up to
        ``context.lock_wait_s`` for somebody else's ``global.lock`` to go away."""
        with quiesced(self.path, self.config.quiesce, self.config.quiesce_timeout_s,
                      lock_wait_s=context.lock_wait_s, cancel=context.cancel) as report:
            files = sink.add_tree(self.path, exclude=is_excluded, settle=report.settle)
        if not context.force:
            self._guard_shrink(files, context.previous)
        metadata = {"path": str(self.path), "quiesce": report.mode,
                    "lock_window_s": report.window_s,
                    "waited_for_writes": report.waited_for_locks,
                    "removed_stale_lock": report.removed_stale}
        return SourceBackup(metadata, lock_window_s=report.window_s)

    def _guard_shrink(self, files: int, previous: Snapshot | None) -> None:
        """A half-deleted volume must not become the newest snapshot and push good ones out."""
        before = previous.summary.files if previous is not None else 0
        limit = self.config.max_shrink_percent
        if previous is not None and before and files < before * (1 - limit / 100):
            raise RefusedError(
                f"the volume shrank from {before} to {files} files (more than "
                f"volume.max_shrink_percent={limit:g}%) since snapshot {previous.id}; "
                "refusing to snapshot it (pass --force if the deletion is intended)")

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        """The volume's files under ``target`` (directly: ``target`` becomes the volume)."""
        written = reader.restore_tree(record.trees, target)
        return DirRestore(self.name, written, str(target))
