"""The dynamic data volume's live-restore side: stage, check, swap, and undo the swap.

Everything lives in one *workspace* under the reserved name ``.wicked-dr-restore`` (backup
skips ``.wicked-dr-`` names, portal-api never reads them, mode 0700): the staging
directory, the manifest the staged files are checked against, the pre-restore copies and
the live restore's journal. Where it sits depends on how the volume is mounted:

* ``rename`` (``volume.path`` is a folder inside a mount, e.g. ``/var/portal-api`` mounted
  and the data in ``dynamic/``): the workspace is the folder's sibling
  ``<parent>/.wicked-dr-restore``; the swap renames the live folder into the workspace
  (the pre-restore copy) and the staged folder onto ``volume.path``: two renames on one
  file system.
* ``contents`` (``volume.path`` is itself the mount point, e.g. a named Docker volume at
  ``/var/portal-api/dynamic``; it cannot be renamed): the workspace is
  ``<volume>/.wicked-dr-restore``; the swap moves each top-level entry of the volume into
  the pre-restore copy, then each staged entry into the volume: renames on one file system.

The swap runs in phases recorded in the journal *before* each starts (``aside``: live data
into the pre-restore copy; ``in``: staged data into the volume). Each phase only moves
entries from one place to another, so repeating it after a crash finishes it, and undoing
runs the phases backwards (``undo-in``: what was moved in goes to a discard folder;
``undo-aside``: the pre-restore copy goes back). Nothing is copied, so the pre-restore copy
costs no space: the free-space guard needs room for the staged snapshot only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wicked_dr.errors import OperationError, RefusedError
from wicked_dr.log import get_logger

log = get_logger(__name__)

WORKSPACE = ".wicked-dr-restore"
RESERVED_PREFIX = ".wicked-dr-"
SwapMode = Literal["rename", "contents"]
# Per restored file beyond its bytes: a file system block and an inode's share (a guess on
# the safe side; the guard is there to stop a restore that cannot fit, not to be exact).
PER_FILE_OVERHEAD = 4096
PHASES = ("staged", "aside", "in", "swapped")


def swap_mode(volume: Path, configured: str) -> SwapMode:
    """``restore.swap``: ``auto`` renames the folder unless it is a mount point."""
    if configured in ("rename", "contents"):
        return "rename" if configured == "rename" else "contents"
    return "contents" if os.path.ismount(volume) else "rename"


def workspace_of(volume: Path, mode: SwapMode) -> Path:
    """Where staging, pre-restore copies and the journal live for ``volume``."""
    return volume / WORKSPACE if mode == "contents" else volume.parent / WORKSPACE


def workspace_candidates(volume: Path) -> list[Path]:
    """Both places a workspace can be (the mode may have changed since a crash)."""
    return [volume / WORKSPACE, volume.parent / WORKSPACE]


@dataclass(frozen=True)
class VolumePaths:
    """The paths of one live restore of the volume (all JSON-able for the journal)."""

    volume: Path
    mode: SwapMode
    workspace: Path
    restore_id: str

    @property
    def staging(self) -> Path:
        return self.workspace / f"staging-{self.restore_id}"

    @property
    def pre_restore(self) -> Path:
        return self.workspace / f"pre-restore-{self.restore_id}"

    @property
    def discard(self) -> Path:
        return self.workspace / f"discard-{self.restore_id}"

    @property
    def manifest(self) -> Path:
        return self.workspace / f"manifest-{self.restore_id}.jsonl"

    def to_json(self) -> dict[str, str]:
        return {"volume": str(self.volume), "mode": self.mode,
                "workspace": str(self.workspace), "restore_id": self.restore_id}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VolumePaths:
        mode: SwapMode = "contents" if doc["mode"] == "contents" else "rename"
        return cls(Path(doc["volume"]), mode, Path(doc["workspace"]), str(doc["restore_id"]))


def make_workspace(paths: VolumePaths) -> None:
    """The workspace folder, readable by its owner only."""
    paths.workspace.mkdir(mode=0o700, exist_ok=True)
    os.chmod(paths.workspace, 0o700)


# --- guards (nothing changes) -------------------------------------------------------------------


def guard_free_space(paths: VolumePaths, record_bytes: int, files: int) -> dict[str, int]:
    """Refuse when the volume's file system cannot hold the staged snapshot."""
    where = paths.workspace if paths.workspace.exists() else paths.workspace.parent
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    needed = record_bytes + files * PER_FILE_OVERHEAD
    if needed > free:
        raise RefusedError(
            f"{where} has {free // 2**20} MiB free, staging the snapshot needs about "
            f"{needed // 2**20} MiB on the volume's file system (the pre-restore copy is a "
            "rename and needs none); free space on the volume, then run the restore again")
    return {"needed_bytes": needed, "free_bytes": free}


def dynamic_version(meta_json: bytes | None) -> int | None:
    """``meta.json``'s ``dynamicVersion`` (None when absent or unreadable)."""
    if meta_json is None:
        return None
    try:
        value = json.loads(meta_json).get("dynamicVersion")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def live_meta(volume: Path) -> bytes | None:
    """The live volume's ``meta.json``, or None when the volume or the file is gone."""
    try:
        return (volume / "meta.json").read_bytes()
    except OSError:
        return None


def guard_dynamic_version(snapshot_meta: bytes | None, volume: Path, *,
                          allow_newer: bool) -> dict[str, int | None]:
    """Refuse data written by a newer portal-api than the one running (its migrations are
    not undone by a restore) unless ``allow_newer``."""
    theirs, ours = dynamic_version(snapshot_meta), dynamic_version(live_meta(volume))
    if theirs is not None and ours is not None and theirs > ours and not allow_newer:
        raise RefusedError(
            f"the snapshot's meta.json has dynamicVersion {theirs}, newer than the live "
            f"volume's {ours}: it was written by a newer portal-api; run that version, or "
            "pass --allow-newer-data if you know it is safe")
    return {"snapshot_dynamic_version": theirs, "live_dynamic_version": ours}


# --- staging (nothing live changes) -------------------------------------------------------------


def tidy_staged(staging: Path, empty_queues: list[str], owner: tuple[int, int] | None) -> dict[
        str, Any]:
    """Make the staged data what portal-api should start on: no lock files, and the pending
    events of ``empty_queues`` (listener ids, e.g. mailer) emptied, keeping
    ``webhooks/_listeners.json``; only queue files that exist are emptied."""
    removed = [str(path.relative_to(staging)) for path in _lock_files(staging)]
    for rel in removed:
        (staging / rel).unlink(missing_ok=True)
    emptied = []
    for listener in empty_queues:
        queue = staging / "webhooks" / f"{listener}.json"
        if queue.is_file() and not queue.is_symlink():
            events = _event_count(queue)
            _replace_content(queue, b"[]", owner)
            emptied.append({"listener": listener, "events_dropped": events})
    return {"locks_removed": removed, "queues_emptied": emptied}


def _lock_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(RESERVED_PREFIX)]
        found.extend(Path(directory) / f for f in files if f.endswith(".lock"))
    return found


def _event_count(queue: Path) -> int | None:
    try:
        events = json.loads(queue.read_bytes())
    except (OSError, ValueError):
        return None
    return len(events) if isinstance(events, list) else None


def _replace_content(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    """Write ``data`` in place of ``path`` atomically, keeping its mode (and owner)."""
    info = path.stat()
    tmp = path.with_name(f"{RESERVED_PREFIX}{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, info.st_mode & 0o777)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def own_staged_root(paths: VolumePaths, owner: tuple[int, int] | None) -> None:
    """The staged root gets the live root's owner and mode (or the configured owner, 0755):
    in ``rename`` mode it becomes the volume folder."""
    try:
        live = paths.volume.stat()
        mode, uid, gid = live.st_mode & 0o777, live.st_uid, live.st_gid
    except OSError:
        mode, (uid, gid) = 0o755, owner or (os.geteuid(), os.getegid())
    os.chmod(paths.staging, mode)
    if owner is not None:
        os.chown(paths.staging, uid, gid)


def remove_staging(paths: VolumePaths) -> None:
    """Remove what staging left (staged tree, manifest, discard folder)."""
    for path in (paths.staging, paths.discard):
        shutil.rmtree(path, ignore_errors=True)
    paths.manifest.unlink(missing_ok=True)


# --- the swap -----------------------------------------------------------------------------------

# The journal field the phases are recorded in.
Recorder = Callable[[str], None]


def swap(paths: VolumePaths, record: Recorder, done: MutableMapping[str, Any]) -> None:
    """Live data into the pre-restore copy, staged data into the volume; ``record(phase)``
    persists each phase before it runs. ``done`` (the journal's state) says which phase a
    resumed swap is in: an interrupted phase is run again."""
    phase = str(done.get("phase", "staged"))
    if PHASES.index(phase) <= PHASES.index("aside"):
        record("aside")
        _move_aside(paths)
    if PHASES.index(phase) <= PHASES.index("in"):
        record("in")
        _move_in(paths)
    record("swapped")


def undo_swap(paths: VolumePaths, record: Recorder, done: MutableMapping[str, Any]) -> None:
    """Put the pre-restore data back, from whatever phase the swap (or an earlier undo)
    reached; what was moved in goes to the discard folder and is removed."""
    phase = str(done.get("phase", "staged"))
    if phase in ("in", "swapped", "undo-in"):
        record("undo-in")
        _move_out(paths)
    if phase in ("aside", "in", "swapped", "undo-in", "undo-aside"):
        record("undo-aside")
        _move_back(paths)
    record("rolled-back")
    remove_staging(paths)


def _move_aside(paths: VolumePaths) -> None:
    _move_volume(paths, paths.pre_restore)


def _move_in(paths: VolumePaths) -> None:
    if paths.mode == "rename":
        if paths.staging.exists():
            os.rename(paths.staging, paths.volume)
        return
    if paths.staging.exists():
        _move_entries(paths.staging, paths.volume)
        paths.staging.rmdir()


def _move_out(paths: VolumePaths) -> None:
    _move_volume(paths, paths.discard)


def _move_volume(paths: VolumePaths, dest: Path) -> None:
    """The volume's data into ``dest``: the folder renamed, or its entries moved."""
    if paths.mode == "rename":
        if paths.volume.exists() and not dest.exists():
            os.rename(paths.volume, dest)
        return
    dest.mkdir(mode=0o700, exist_ok=True)
    _move_entries(paths.volume, dest)


def _move_back(paths: VolumePaths) -> None:
    if paths.mode == "rename":
        if paths.pre_restore.exists():
            if paths.volume.exists():
                # Whatever appeared at the volume's path meanwhile is not ours to lose.
                os.rename(paths.volume, _free_name(paths.discard))
            os.rename(paths.pre_restore, paths.volume)
        return
    if paths.pre_restore.exists():
        _move_entries(paths.pre_restore, paths.volume)
        paths.pre_restore.rmdir()


def _move_entries(source: Path, dest: Path) -> None:
    """Move every non-reserved top-level entry of ``source`` into ``dest`` (renames)."""
    try:
        names = sorted(os.listdir(source))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(RESERVED_PREFIX):
            continue
        target = dest / name
        if target.exists() or target.is_symlink():
            raise OperationError(f"cannot move {source / name}: {target} exists already; "
                                 "the restore journal names the folders involved")
        os.rename(source / name, target)


def _free_name(path: Path) -> Path:
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
