"""A repository in a local directory (or a mounted NFS/SMB share): one file per object.

Atomicity: every put writes a temp file ``.tmp-<random>`` in the object's own directory and
then renames it over the final name (``os.replace``) or hard-links it there (``os.link``,
for ``if_none_match``). Readers therefore see the old object or the new one, never a torn
one, even when the writer is killed with SIGKILL mid-write: a crash leaves at most a
``.tmp-*`` file, which ``list`` ignores and ``remove_stale_temp_files`` deletes.

Durability rule: a put is *atomic* at once but *durable* only after ``sync()``. Puts do not
fsync one by one; ``sync()`` makes one pass over what was put since the last sync: an
``fsync`` of each such file and of its directory, or one filesystem-wide ``syncfs`` when
more than ``SYNC_FILES_MAX`` objects are pending (a busy filesystem makes ``syncfs`` pay for
everybody's dirty pages, so a handful of packs is cheaper to fsync directly); callers that
need a durable point (the snapshot manifest, after its packs) call ``sync()`` first, then
write the manifest, then ``sync()`` again. After a power loss before ``sync()`` an object
may be missing or empty, but an object the repository layer references is never lost once
``sync()`` returned.

Etags are ``<inode>-<size>-<mtime_ns>`` in hex: cheap (one ``stat``), stable while the
object is unchanged, and new after every put, because each put creates a new inode and
stamps it with a nanosecond clock. Compare-and-swap (``if_match``) and every other write
run under an ``fcntl.flock`` on one of 256 lock files in ``<root>/.locks/`` (picked by a
hash of the name), so a check and its rename are atomic across threads and processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import stat as stat_module
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from wicked_dr.backends.base import ObjectInfo, PreconditionFailed
from wicked_dr.errors import BackendError, NotFoundError
from wicked_dr.log import get_logger

log = get_logger(__name__)

TEMP_PREFIX = ".tmp-"
LOCKS_DIR = ".locks"
_LOCK_STRIPES = 256
_COPY_CHUNK = 8 * 1024 * 1024
# os.link fails with these where the filesystem has no hard links (some FUSE/SMB mounts).
_NO_HARDLINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


class LocalBackend:
    """Objects are files under ``root``; names are '/'-separated relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._unsynced: set[Path] = set()

    # --- writing ---------------------------------------------------------------------------

    def put(self, name: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        """Store ``data`` under ``name`` atomically; see the module docstring for the rules."""
        final = self._path(name)
        tmp, etag = self._write_temp(final, [data])
        return self._place(name, final, tmp, etag, if_none_match=if_none_match,
                           if_match=if_match)

    def put_file(self, name: str, path: Path) -> str:
        """Copy a local file in chunks (no whole-file buffer) and place it atomically."""
        final = self._path(name)
        try:
            source = path.open("rb")
        except OSError as exc:
            raise _os_error(exc, f"read {path}") from None
        with source:
            tmp, etag = self._write_temp(final, iter(lambda: source.read(_COPY_CHUNK), b""))
        return self._place(name, final, tmp, etag, if_none_match=False, if_match=None)

    def delete(self, name: str) -> None:
        """Remove the object; a missing object (or repository) is not an error."""
        final = self._path(name)
        try:
            with self._lock(name):
                final.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, f"delete {final}") from None

    # --- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> bytes:
        """The whole object; NotFoundError names the object or the missing repository."""
        final = self._path(name)
        try:
            return final.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(name) from None
        except OSError as exc:
            raise _os_error(exc, f"read {final}") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the object)."""
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        final = self._path(name)
        try:
            with final.open("rb") as handle:
                return os.pread(handle.fileno(), length, offset) if length else b""
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(name) from None
        except OSError as exc:
            raise _os_error(exc, f"read {final}") from None

    def stat(self, name: str) -> ObjectInfo:
        """Size and etag of one object."""
        final = self._path(name)
        try:
            st = final.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(name) from None
        except OSError as exc:
            raise _os_error(exc, f"stat {final}") from None
        if not _is_regular(st.st_mode):
            raise self._not_found(name)
        return ObjectInfo(name=name, size=st.st_size, etag=_etag(st))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix`` (plain string prefix, like S3)."""
        if not self.root.is_dir():
            raise NotFoundError(f"repository directory {self.root} does not exist; "
                                "check repository.url or run 'wicked-dr init'")
        # Only the directory part of the prefix narrows the walk; the rest filters names.
        directory = prefix.rpartition("/")[0]
        start = self.root / directory if directory else self.root
        yield from (info for info in self._walk(start, directory)
                    if info.name.startswith(prefix))

    # --- the repository directory -----------------------------------------------------------

    def exists(self) -> bool:
        """Whether the repository directory exists."""
        return self.root.is_dir()

    def create(self) -> None:
        """Create the repository directory and its lock area (no-op when they exist)."""
        try:
            (self.root / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"create {self.root}") from None

    def sync(self) -> None:
        """Make every completed put durable (see the module docstring)."""
        pending, self._unsynced = self._unsynced, set()
        if len(pending) <= SYNC_FILES_MAX:
            try:
                _fsync_all(pending, self.root)
                return
            except OSError:
                pass  # e.g. an object replaced meanwhile: fall back to the whole filesystem
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise NotFoundError(f"repository directory {self.root} does not exist") from None
        except OSError as exc:
            raise _os_error(exc, f"open {self.root}") from None
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    def remove_stale_temp_files(self, older_than_s: float) -> int:
        """Delete ``.tmp-*`` files left by killed writers; returns how many were removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root and LOCKS_DIR in dirnames:
                dirnames.remove(LOCKS_DIR)
            for filename in filenames:
                if not filename.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath) / filename
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed

    # --- internals --------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        """The file of object ``name``; refuses names that could escape the root."""
        parts = name.split("/")
        if (not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts)
                or parts[0] == LOCKS_DIR or parts[-1].startswith(TEMP_PREFIX)):
            raise BackendError(f"invalid object name {name!r}: expected a relative path "
                               "without empty, '.' or '..' parts")
        return self.root.joinpath(*parts)

    def _not_found(self, name: str) -> NotFoundError:
        if not self.root.is_dir():
            return NotFoundError(f"repository directory {self.root} does not exist; "
                                 "check repository.url or run 'wicked-dr init'")
        return NotFoundError(f"object {name!r} not found in repository {self.root}")

    def _open_temp(self, final: Path) -> tuple[int, Path]:
        """Create a unique temp file beside ``final``, making parent directories on demand."""
        for attempt in range(2):
            tmp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp
            except FileNotFoundError:
                # Never recreate a missing root: it may be an unmounted share's mount point.
                if attempt or not self.root.is_dir():
                    raise NotFoundError(
                        f"repository directory {self.root} does not exist; "
                        "check repository.url or run 'wicked-dr init'") from None
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise _os_error(exc, f"create {final.parent}") from None
            except OSError as exc:
                raise _os_error(exc, f"write {tmp}") from None
        raise AssertionError("unreachable")

    def _write_temp(self, final: Path, chunks: Iterable[bytes]) -> tuple[Path, str]:
        """Write ``chunks`` to a fresh temp file; return it and the etag it will have."""
        fd, tmp = self._open_temp(final)
        try:
            with os.fdopen(fd, "wb", closefd=True) as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                # A nanosecond stamp makes the etag unique even if an inode number is reused.
                now = time.time_ns()
                os.utime(handle.fileno(), ns=(now, now))
                etag = _etag(os.fstat(handle.fileno()))
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise _os_error(exc, f"write {tmp}") from None
            raise
        return tmp, etag

    def _place(self, name: str, final: Path, tmp: Path, etag: str, *, if_none_match: bool,
               if_match: str | None) -> str:
        """Move the written temp file to its final name, honouring the condition."""
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are mutually exclusive")
        try:
            with self._lock(name):
                if if_none_match:
                    self._link_if_absent(name, final, tmp)
                else:
                    if if_match is not None:
                        self._check_etag(name, final, if_match)
                    os.replace(tmp, final)
            self._unsynced.add(final)
        except OSError as exc:
            raise _os_error(exc, f"write {final}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return etag

    def _link_if_absent(self, name: str, final: Path, tmp: Path) -> None:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise PreconditionFailed(f"object {name!r} already exists") from None
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise
            # No hard links here: the stripe lock we hold keeps check-and-rename atomic
            # against every writer of this backend.
            if final.exists():
                raise PreconditionFailed(f"object {name!r} already exists") from None
            os.replace(tmp, final)

    def _check_etag(self, name: str, final: Path, expected: str) -> None:
        try:
            current = _etag(final.stat())
        except FileNotFoundError:
            raise PreconditionFailed(f"object {name!r} does not exist (expected etag "
                                     f"{expected})") from None
        if current != expected:
            raise PreconditionFailed(f"object {name!r} changed: etag {current}, "
                                     f"expected {expected}")

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Hold the stripe lock of ``name`` (blocking) across threads and processes."""
        stripe = hashlib.sha256(name.encode()).digest()[0] % _LOCK_STRIPES
        lock_path = self.root / LOCKS_DIR / f"{stripe:02x}"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            if not self.root.is_dir():
                raise NotFoundError(f"repository directory {self.root} does not exist; "
                                    "check repository.url or run 'wicked-dr init'") from None
            lock_path.parent.mkdir(exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _walk(self, directory: Path, relative: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _os_error(exc, f"list {directory}") from None
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if entry.name.startswith(TEMP_PREFIX) or (not relative and entry.name == LOCKS_DIR):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path), name)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield ObjectInfo(name=name, size=st.st_size, etag=_etag(st))
            except FileNotFoundError:
                continue  # deleted while we listed


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _is_regular(mode: int) -> bool:
    return stat_module.S_ISREG(mode)


def _os_error(exc: OSError, action: str) -> BackendError:
    """One line that says what failed where, and for the common cases what to fix."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BackendError(f"permission denied: cannot {action}; give the wicked-dr user "
                            "write access to the repository directory")
    if exc.errno == errno.ENOSPC:
        return BackendError(f"no space left on device: cannot {action}")
    if exc.errno == errno.EROFS:
        return BackendError(f"read-only filesystem: cannot {action}")
    return BackendError(f"cannot {action}: {exc.strerror or exc}")


SYNC_FILES_MAX = 256


def _fsync_all(paths: set[Path], root: Path) -> None:
    """fsync each file, then every directory from its parent up to ``root`` (new names and
    new fan-out directories become durable too)."""
    for path in sorted(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    directories: set[Path] = set()
    for path in paths:
        directory = path.parent
        while directory not in directories and (directory == root or root in directory.parents):
            directories.add(directory)
            directory = directory.parent
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(fd: int) -> None:
    """``syncfs(2)`` on the filesystem of ``fd``; ``sync(2)`` where syncfs is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise BackendError(f"syncfs failed: {os.strerror(code)}; the last puts may not be "
                           "durable")
