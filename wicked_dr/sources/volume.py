"""The dynamic data volume as a source: handed to the engine's scan under wicked's lock."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wicked_dr.config import VolumeConfig
from wicked_dr.errors import RefusedError, SourceError
from wicked_dr.log import get_logger
from wicked_dr.portal.quiesce import QuiesceReport, quiesced
from wicked_dr.repository.shrink import Counts, guard_shrink, largest_references
from wicked_dr.repository.snapshot import TREE_SOURCE, Snapshot, SourceRecord
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources.base import (
    BackupContext,
    DirRestore,
    LiveSettings,
    LiveState,
    ProbeBench,
    SourceBackup,
    SourceKind,
    TreeCounts,
    TreeReader,
    TreeSink,
)

if TYPE_CHECKING:
    from wicked_dr.sources.volume_live import VolumePaths

log = get_logger(__name__)
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

    def __init__(self, config: VolumeConfig, *, wicked_db_configured: bool = False) -> None:
        self.config = config
        # ``volume.path: null`` (allowed only with wicked_db.dsn): no volume at all. The
        # path stays typed as a Path: nothing but ``configured`` runs on such a source.
        self.path = config.path if config.path is not None else Path("/nonexistent")
        self.wicked_db_configured = wicked_db_configured

    @property
    def configured(self) -> bool:
        """The volume is backed up unless ``volume.path`` is null (wicked_db only)."""
        return self.config.path is not None

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
        if not missing:
            return
        if self.wicked_db_configured:
            # wicked_db holds the data: a volume without wicked's layout is not wicked's JSON
            # data, and snapshotting it would only hide a wrong volume.path.
            raise RefusedError(
                f"{self.path} does not look like wicked's dynamic data (missing "
                f"{', '.join(missing)}) and wicked_db.dsn is set: wicked keeps its data in "
                "Postgres, so set volume.path: null (or --force to snapshot the folder too)")
        raise RefusedError(
            f"{self.path} does not look like wicked's dynamic data (missing "
            f"{', '.join(missing)}); refusing to snapshot it (use --force if this is "
            "intended; wicked 1.0 with Postgres storage keeps its data in the 'wicked' "
            "database: set wicked_db.dsn and volume.path: null)")

    def backup(self, sink: TreeSink, context: BackupContext) -> SourceBackup:
        """Read the volume into ``sink``, then hold wicked's ``global.lock`` (quiesce mode
        ``wicked-lock``) only while what changed meanwhile is re-read; wait up to
        ``context.lock_wait_s`` for somebody else's ``global.lock`` to go away."""
        held: list[QuiesceReport] = []

        @contextlib.contextmanager
        def hold() -> Iterator[QuiesceReport]:
            # No grace at entry: the engine waits it out only when no watch sees writers.
            with quiesced(self.path, self.config.quiesce, self.config.quiesce_timeout_s,
                          lock_wait_s=context.lock_wait_s, cancel=context.cancel,
                          still_running=context.global_lock_judge, grace=False) as report:
                held.append(report)
                yield report

        locking = self.config.quiesce != "none"
        counts = sink.add_tree(self.path, exclude=is_excluded, hold=hold if locking else None,
                               watch=self.config.watch)
        if not context.force:
            self._guard_shrink(counts, context.recent)
        report = held[0] if held else QuiesceReport(self.config.quiesce)
        log.info("volume read", recheck=counts.recheck, reread_under_lock=counts.reread,
                 lock_window_s=report.window_s, waited_for_writes=report.waited_for_locks)
        metadata = {"path": str(self.path), "quiesce": report.mode,
                    "lock_window_s": report.window_s, "recheck": counts.recheck,
                    "reread_under_lock": counts.reread,
                    "waited_for_writes": report.waited_for_locks,
                    "removed_stale_lock": report.removed_stale, "forced": context.force}
        return SourceBackup(metadata, lock_window_s=report.window_s,
                            reread_under_lock=counts.reread)

    def _guard_shrink(self, counts: TreeCounts, recent: tuple[Snapshot, ...]) -> None:
        """A half-deleted or half-truncated volume must not become the newest snapshot and
        push good ones out. The reference is the largest of the recent snapshots since the
        newest forced one, in files and in bytes (``repository/shrink.py``, shared with
        prune)."""
        guard_shrink(Counts(int(counts.files), int(counts.bytes)), largest_references(recent),
                     self.config.max_shrink_percent,
                     refusing="refusing to snapshot it (pass --force if the loss is intended)")

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        """The volume's files under ``target`` (directly: ``target`` becomes the volume)."""
        written = reader.restore_tree(record.trees, target)
        return DirRestore(self.name, written, str(target))

    def probe(self, reader: TreeReader, record: SourceRecord,
              bench: ProbeBench) -> list[ProbeResult]:
        """The files in a scratch volume, checked from inside (``volume_probe.py``); then
        portal-api started on them when the smoke probe is configured (``smoke_probe.py``)."""
        from wicked_dr.sources.volume_probe import probe_volume

        return probe_volume(reader, record, bench)

    # --- the live restore (sources/volume_live.py) ---------------------------------------

    def live_guard(self, reader: TreeReader, record: SourceRecord, settings: LiveSettings,
                   state: LiveState) -> dict[str, Any]:
        """Room to stage the snapshot on the volume's file system; a snapshot not written
        by a newer portal-api than the live data's (``meta.json`` ``dynamicVersion``)."""
        from wicked_dr.sources import volume_live as live

        mode = live.swap_mode(self.path, settings.swap)
        paths = live.VolumePaths(self.path, mode, live.workspace_of(self.path, mode),
                                 settings.restore_id)
        if not paths.workspace.parent.is_dir():
            raise SourceError(f"{paths.workspace.parent} does not exist: volume.path "
                              f"{self.path} must be inside a mounted folder")
        counts = reader.tree_counts(record.trees)
        space = live.guard_free_space(paths, counts.bytes, counts.files)
        versions = live.guard_dynamic_version(reader.read_file(record.trees, "meta.json"),
                                              self.path, allow_newer=settings.allow_newer)
        state.put(paths=paths.to_json())
        return {"volume": str(self.path), "swap": mode, "workspace": str(paths.workspace),
                "files": counts.files, "bytes": counts.bytes, **space, **versions}

    def stage_live(self, reader: TreeReader, record: SourceRecord, settings: LiveSettings,
                   state: LiveState) -> dict[str, Any]:
        """The snapshot restored into the workspace's staging folder (every file verified),
        checked against the snapshot's manifest and wicked's data model
        (``verify_data.py``), then tidied: locks removed, mailer/chatbot queues emptied."""
        from wicked_dr import verify_data
        from wicked_dr.sources import volume_live as live

        paths = _paths(state)
        live.make_workspace(paths)
        live.remove_staging(paths)
        written = reader.restore_tree(record.trees, paths.staging)
        with paths.manifest.open("w") as out:
            for path, size, sha256 in reader.files(record.trees):
                out.write(verify_data.manifest_line(path, size, sha256) + "\n")
        findings = verify_data.check_volume(paths.staging, paths.manifest)
        if not findings.ok:
            raise RefusedError(
                f"the staged snapshot failed the check ({len(findings.problems)} problem(s), "
                f"first: {findings.problems[0]}); nothing live was touched; choose another "
                "snapshot")
        tidied = live.tidy_staged(paths.staging, list(settings.empty_queues), settings.owner)
        live.own_staged_root(paths, settings.owner)
        state.put(phase="staged")
        return {"written": written, "checked": findings.to_json(), **tidied}

    def swap_live(self, state: LiveState) -> dict[str, Any]:
        """The live folder (or its contents) into the pre-restore copy, the staged data in."""
        from wicked_dr.sources import volume_live as live

        paths = _paths(state)
        live.swap(paths, lambda phase: state.put(phase=phase), state.get())
        return {"pre_restore_copy": str(paths.pre_restore), "swap": paths.mode}

    def undo_live(self, state: LiveState) -> dict[str, Any]:
        """The pre-restore copy back in place; what was restored is removed."""
        from wicked_dr.sources import volume_live as live

        paths = _paths(state)
        live.undo_swap(paths, lambda phase: state.put(phase=phase), state.get())
        return {"restored": str(paths.volume)}

    def finish_live(self, state: LiveState) -> dict[str, Any]:
        """Staging leftovers removed; the pre-restore copy is kept (and named)."""
        from wicked_dr.sources import volume_live as live

        paths = _paths(state)
        live.remove_staging(paths)
        kept = paths.pre_restore if paths.pre_restore.exists() else None
        return {"pre_restore_copy": str(kept) if kept else None}


def _paths(state: LiveState) -> VolumePaths:
    from wicked_dr.sources.volume_live import VolumePaths

    return VolumePaths.from_json(state.get()["paths"])
