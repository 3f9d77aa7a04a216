"""What changed in the volume while a backup read it: an inotify watch per directory.

A backup reads the volume without wicked's ``global.lock`` and then, under it, re-reads only
what may have changed since the scan read it (``tree_recheck.py``). The scan adds a watch to
each directory *before* listing it, so every change to an entry after the scan saw it is an
event here: a write (``IN_MODIFY``), a chmod or chown (``IN_ATTRIB``), a file created,
deleted or renamed into or out of the directory. The kernel queues an event before the
system call that caused it returns, so once a writer has removed its ``<file>.lock``, the
events of its write are in the queue.

A watch can only vouch for what it saw. It is **incomplete**, and the caller re-stats every
file instead, when: the kernel's queue overflowed (``IN_Q_OVERFLOW``), a watched directory
went away or moved (``IN_IGNORED``, ``IN_DELETE_SELF``, ``IN_MOVE_SELF``, ``IN_UNMOUNT``),
a watch could not be added (``max_user_watches``), or the volume is on a file system where
other hosts may write (NFS, SMB, FUSE, Ceph...): inotify sees only this kernel's writes.

One watch per backup, not one for the daemon's lifetime: a watch follows inodes, and a live
restore swaps the volume's folder, after which a long-lived watch would watch the
pre-restore copy and report nothing.

``inotify-simple`` (a thin ctypes-free wrapper of the three system calls) rather than
watchdog: wicked's volume has about a dozen directories, the events are read exactly when
the backup asks (no thread), and an overflow must be seen, not hidden behind a polling
fallback.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import inotify_simple
from inotify_simple import flags

from wicked_dr.log import get_logger

log = get_logger(__name__)

# File systems whose every write goes through this kernel (or whose other writers are this
# host's containers): a watch here sees every change. Anything else is re-statted.
LOCAL_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "jfs",
    "reiserfs", "bcachefs", "ramfs"})


@dataclass
class Changes:
    """What a drain of the watch found: the names touched, by directory (relative path),
    and whether the watch can still vouch for everything else (``complete``)."""

    touched: dict[str, set[str]] = field(default_factory=dict)
    complete: bool = True
    reason: str = ""  # why the watch is incomplete, for the log and the report

    def __bool__(self) -> bool:
        return bool(self.touched)

    def count(self) -> int:
        return sum(len(names) for names in self.touched.values())


class ChangeWatch:
    """The inotify watches of one backup's scan."""

    def __init__(self, inotify: inotify_simple.INotify) -> None:
        self._inotify = inotify
        self._dirs: dict[int, str] = {}  # watch descriptor -> relative directory
        self.incomplete = ""  # the first reason the watch cannot vouch any more

    @property
    def complete(self) -> bool:
        return not self.incomplete

    def add(self, directory: str, rel_dir: str) -> None:
        """Watch ``directory`` (before it is listed)."""
        if self.incomplete:
            return
        mask = (flags.MODIFY | flags.ATTRIB | flags.CREATE | flags.DELETE
                | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE_SELF
                | flags.MOVE_SELF | flags.ONLYDIR)
        if rel_dir:
            # A subdirectory is scanned because lstat said "directory": never follow a
            # symlink swapped in since. The root may be a symlink (volume.path), like the
            # scan, which lists what it points to.
            mask |= flags.DONT_FOLLOW
        try:
            wd = self._inotify.add_watch(directory, mask)
        except OSError as exc:
            self._give_up(f"cannot watch {rel_dir or '.'}: {exc.strerror or exc}")
            return
        self._dirs[wd] = rel_dir

    def drain(self) -> Changes:
        """Every event queued since the last drain, without waiting."""
        changes = Changes()
        if self.incomplete:
            return self._incomplete(changes)
        try:
            events = self._inotify.read(timeout=0)
        except OSError as exc:
            self._give_up(f"reading the watch failed: {exc.strerror or exc}")
            return self._incomplete(changes)
        lost = (flags.Q_OVERFLOW | flags.IGNORED | flags.DELETE_SELF
                | flags.MOVE_SELF | flags.UNMOUNT)
        for event in events:
            if event.mask & lost:
                self._give_up(_lost_reason(event.mask))
                return self._incomplete(changes)
            rel_dir = self._dirs.get(event.wd)
            if rel_dir is None or not event.name:
                continue
            changes.touched.setdefault(rel_dir, set()).add(event.name)
        return changes

    def _give_up(self, reason: str) -> None:
        if not self.incomplete:
            self.incomplete = reason
            log.info("change watch incomplete; re-statting every file under the lock",
                     reason=reason)

    def _incomplete(self, changes: Changes) -> Changes:
        changes.complete, changes.reason = False, self.incomplete
        return changes

    def close(self) -> None:
        """Release the watch on a thread of its own: closing an inotify descriptor waits
        for the kernel to retire its marks (10-15 ms measured), which no backup needs."""
        threading.Thread(target=self._inotify.close, name="change-watch-close",
                         daemon=True).start()


def _lost_reason(mask: int) -> str:
    if mask & flags.Q_OVERFLOW:
        return "the kernel's event queue overflowed (fs.inotify.max_queued_events)"
    if mask & flags.UNMOUNT:
        return "the volume was unmounted"
    return "a watched directory was removed or moved"


def open_watch(root: Path) -> tuple[ChangeWatch | None, str]:
    """A new watch for a scan of ``root``, or None and the reason there is none."""
    fs_type = file_system_type(root)
    if fs_type not in LOCAL_FILE_SYSTEMS:
        return None, (f"{root} is on {fs_type or 'an unknown file system'}, where other hosts "
                      "may write unseen by a watch")
    try:
        inotify = inotify_simple.INotify()
    except OSError as exc:
        return None, f"inotify is not available: {exc.strerror or exc}"
    return ChangeWatch(inotify), ""


def file_system_type(path: Path) -> str:
    """The type of the file system ``path`` is on (``/proc/self/mountinfo``), "" when
    unknown: the longest mount point that is a prefix of the path's real location."""
    try:
        target = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return ""
    best, best_type = "", ""
    for line in lines:
        fields = line.split(" ")
        try:
            mount_point = _unescape(fields[4])
            fs_type = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, char)
    return text
