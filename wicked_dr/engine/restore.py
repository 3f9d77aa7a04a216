"""Restoring a snapshot's file tree into a directory.

Every blob is checked against its SHA-256 before a byte of it is written, no file grows
beyond the size its entry declares (blobs holding more or less than that are an
``IntegrityError``), and each file's whole SHA-256 is checked after writing; a file that
fails is removed, so wrong bytes are never left under a real name. (A crash mid-file can
leave that one file partial: restore into an empty directory and rerun.) Entries that would
land outside the target (absolute paths, ``..``, a path through a symlink, a parent that is
not a directory of the snapshot) are refused before anything is written for them.

Ownership and modes: the snapshot's recorded owner is never restored. Running as root,
every file, directory and symlink is given to the configured owner (``restore.owner_uid``/
``owner_gid``, default 888:888, wicked's node user: ``Ownership``); as any other user,
ownership is left the restoring user's. Modes are the recorded ``mode & 0o777``: never a
setuid, setgid or sticky bit. Only files, directories and symlinks are created (no device
files, fifos or sockets: other entry types are skipped).

Files are written pack by pack, not in manifest order: each pack the snapshot needs is
fetched once, whole (``engine/restore_plan.py``). A cancelled restore stops between entries
or files, never inside a file: every file under the target
is whole and verified, but the tree is partial (files missing, directories without their
final modes and mtimes). ``Interrupted`` says so and names the target; nothing is removed,
because ``--force`` may have pointed the restore into a directory that held other data.
Remove the target, or restore again into an empty directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as statmod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.config import RestoreConfig
from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.restore_plan import PlanLimits, write_planned
from wicked_dr.errors import IntegrityError, OperationError, RefusedError
from wicked_dr.progress import Progress
from wicked_dr.repository.manifest import PERMISSION_BITS, Entry, check_relative, iter_entries
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OperationError):
    """The target's file system filled up during a restore."""

    def __init__(self, dest: Path, target: Path, needed: int, free: int) -> None:
        need = f"the snapshot needs {human_size(needed)}, " if needed else ""
        super().__init__(f"restore: no space left on device writing {dest}; {need}{target} "
                         f"had {human_size(free)} free")


@dataclass
class RestoreStats:
    """What a restore did."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    packs_fetched: int = 0
    bytes_spilled: int = 0  # blobs parked in the scratch file for files further on
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ownership:
    """Whose restored files they become: ``uid``:``gid``, never the owner the snapshot
    records; given away only when ``apply`` (running as root), otherwise left the restoring
    user's."""

    uid: int
    gid: int
    apply: bool

    @classmethod
    def configured(cls, config: RestoreConfig) -> Ownership:
        """``restore.owner_uid``/``owner_gid``, applied when running as root."""
        return cls(config.owner_uid, config.owner_gid, apply=os.geteuid() == 0)


def check_target(target: Path, *, force: bool) -> None:
    """Refuse a non-empty target unless forced (a restore must not mix with other data)."""
    if target.exists() and not target.is_dir():
        raise RefusedError(f"--target {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RefusedError(f"--target {target} is not empty; choose an empty directory or "
                           "pass --force to write into it")


def restore_tree(repo: Repository, reader: BlobReader, snapshot: Snapshot,
                 target: Path, *, ownership: Ownership | None = None,
                 progress: Progress | None = None,
                 cancel: CancelToken = NOT_CANCELLED,
                 limits: PlanLimits | None = None) -> RestoreStats:
    """Write every entry of ``snapshot``'s file tree under ``target``, owned as
    ``ownership`` says (default: the default ``restore`` config's owner), the files pack by
    pack within ``limits`` (``engine/restore_plan.py``); once ``cancel`` is cancelled,
    ``Interrupted`` before the next entry or file, the target left partial (see the
    module)."""
    target.mkdir(parents=True, exist_ok=True)
    stats = RestoreStats()

    def safe_point() -> None:
        _safe_point(cancel, target, stats, snapshot)

    run = _TreeRestore(target.resolve(), reader,
                       ownership or Ownership.configured(RestoreConfig()), progress,
                       limits or PlanLimits(), safe_point, stats)
    free = free_bytes(run.root)
    try:
        for entry in iter_entries(repo, snapshot):
            safe_point()
            run.add(entry)
        run.write_files()
        safe_point()
        run.finish()
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        raise NoSpaceError(run.dest, target, snapshot.summary.bytes, free) from None
    finally:
        stats.packs_fetched = reader.packs_fetched
    return stats


class _TreeRestore:
    """One restore's state: directories are created as their entries come (before anything
    inside them); files are collected and written pack by pack (``restore_plan``) once
    ``limits.files_per_plan`` of them or the last are in; symlinks, then the directories'
    metadata (deepest first, so an mtime sticks) once every file is in."""

    def __init__(self, root: Path, reader: BlobReader, ownership: Ownership,
                 progress: Progress | None, limits: PlanLimits,
                 safe_point: Callable[[], None], stats: RestoreStats) -> None:
        self.root = root
        self.dest = root  # the path being written: named when the disk fills up
        self.stats = stats
        self._reader = reader
        self._ownership = ownership
        self._progress = progress
        self._limits = limits
        self._safe_point = safe_point
        self._dirs: list[Entry] = []
        self._links: list[Entry] = []
        self._files: list[Entry] = []
        self._destinations = _Destinations(root)

    def add(self, entry: Entry) -> None:
        self.dest = self._destinations.of(entry.path)
        if entry.type == "dir":
            _make_dir(self.dest, entry.path)
            self._destinations.add_dir(entry.path)
            self._dirs.append(entry)
        elif entry.type == "file":
            # The destination was checked above, so an unsafe entry is refused before any
            # file is written; it is asked again (from the checked parents) when written.
            self._files.append(entry)
            if len(self._files) >= self._limits.files_per_plan:
                self.write_files()
        elif entry.type == "symlink":
            self._links.append(entry)
        else:
            self.stats.skipped.append(entry.path)

    def write_files(self) -> None:
        """Write the files collected so far, each pack they need fetched once."""
        files, self._files = self._files, []
        self.stats.bytes_spilled += write_planned(files, self._reader, self._write_file,
                                                  self._limits, self._safe_point)

    def _write_file(self, entry: Entry, get: Callable[[str], bytes]) -> None:
        self.dest = self._destinations.of(entry.path)
        _restore_file(get, entry, self.dest, self._ownership)
        self.stats.files += 1
        self.stats.bytes += entry.size
        if self._progress:
            self._progress("restore", entry.size)

    def finish(self) -> None:
        for link in self._links:
            self.dest = safe_destination(self.root, link.path)
            _restore_symlink(link, self.dest, self.root, self._ownership)
            self.stats.symlinks += 1
        for entry in reversed(self._dirs):
            self.dest = safe_destination(self.root, entry.path)
            _make_dir(self.dest, entry.path)  # still a real directory, not a symlink swapped in
            _apply_metadata(self.dest, entry, self._ownership)
            self.stats.dirs += 1


def _safe_point(cancel: CancelToken, target: Path, stats: RestoreStats,
                snapshot: Snapshot) -> None:
    if cancel.cancelled:  # the message only then: this runs once per entry
        cancel.check(_partial_message(target, stats, snapshot))


def _partial_message(target: Path, stats: RestoreStats, snapshot: Snapshot) -> str:
    """What an interrupted restore leaves: a partial tree under ``target``."""
    total = snapshot.summary.files
    of = f" of {total}" if total else ""
    return (f"interrupted; the restore target {target} is partial ({stats.files}{of} files "
            "written, each whole and verified; directory modes and times not all set): "
            "remove it, or restore again into an empty directory")


def free_bytes(path: Path) -> int:
    """Space an unprivileged writer may still use on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def human_size(n: int) -> str:
    """``12.3 MiB``: sizes in messages."""
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def safe_destination(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that could escape ``root``."""
    check_relative(rel)
    dest = root.joinpath(*rel.split("/"))
    parent = dest.parent
    if parent != root and (parent.is_symlink() or not _inside(root, parent)):
        raise IntegrityError(f"manifest entry {rel!r} goes through a symlink; refused")
    return dest


class _Destinations:
    """``safe_destination`` for a whole restore: each parent directory is checked once.

    Sound because nothing but this restore creates entries under the target meanwhile, and
    the snapshot's own symlinks are created only after every file and directory."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._dirs: set[str] = {""}
        self._safe_parents: set[str] = {""}

    def add_dir(self, rel: str) -> None:
        """A directory entry of the snapshot was restored: entries may go inside it."""
        self._dirs.add(rel)

    def of(self, rel: str) -> Path:
        check_relative(rel)
        parent = rel.rpartition("/")[0]
        if parent not in self._dirs:
            raise IntegrityError(f"manifest entry {rel!r} has no directory entry for its "
                                 "parent; refused")
        if parent in self._safe_parents:
            return self._root / rel
        dest = safe_destination(self._root, rel)
        self._safe_parents.add(parent)
        return dest


def _make_dir(dest: Path, rel: str) -> None:
    """Create a directory, or accept an existing real one; never a symlink or a file."""
    try:
        dest.mkdir()
    except FileExistsError:
        if not statmod.S_ISDIR(os.lstat(dest).st_mode):
            raise IntegrityError(f"{rel}: the target has a non-directory there (a symlink?); "
                                 "refused") from None


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _restore_file(get: Callable[[str], bytes], entry: Entry, dest: Path,
                  ownership: Ownership) -> None:
    # Blobs are verified against their ids before a byte is written, never a byte beyond
    # the declared size is written, and the size and whole-file hash are checked at the end;
    # a file that fails is removed rather than left behind.
    digest = hashlib.sha256()
    written = 0
    fd = _create(dest)
    try:
        for blob_id in entry.blobs:
            data = get(blob_id)
            if written + len(data) > entry.size:
                raise size_error(entry, "more", "the file was removed")
            digest.update(data)
            _write_all(fd, data)
            written += len(data)
        if written != entry.size:
            raise size_error(entry, "less", "the file was removed")
        if digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.path}: restored content does not match its SHA-256; "
                                 "the file was removed")
        _apply_fd_metadata(fd, entry, ownership)
    except BaseException:
        os.close(fd)
        dest.unlink(missing_ok=True)
        raise
    os.close(fd)


def size_error(entry: Entry, more_or_less: str, consequence: str) -> IntegrityError:
    """Blobs holding ``more_or_less`` data than ``entry`` declares: a damaged or hostile
    manifest."""
    return IntegrityError(f"manifest entry {entry.path!r}: its blobs hold {more_or_less} than "
                          f"its declared size of {entry.size} bytes; {consequence}")


def _create(dest: Path) -> int:
    """Open ``dest`` for writing, replacing a symlink there instead of following it. The
    open comes first (O_NOFOLLOW refuses a symlink): no ``lstat`` per file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        return os.open(dest, flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    dest.unlink()  # a symlink (a previous restore, or planted): never written through
    return os.open(dest, flags, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _apply_fd_metadata(fd: int, entry: Entry, ownership: Ownership) -> None:
    if ownership.apply:
        os.fchown(fd, ownership.uid, ownership.gid)
    os.fchmod(fd, entry.mode & PERMISSION_BITS)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _restore_symlink(entry: Entry, dest: Path, root: Path, ownership: Ownership) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    os.symlink(entry.target or "", dest)
    if ownership.apply:
        os.lchown(dest, ownership.uid, ownership.gid)


def _apply_metadata(path: Path, entry: Entry, ownership: Ownership) -> None:
    if ownership.apply:
        os.chown(path, ownership.uid, ownership.gid, follow_symlinks=False)
    os.chmod(path, entry.mode & PERMISSION_BITS)
    os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

