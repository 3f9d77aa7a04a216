"""The data source contract: what the backup engine asks of the volume and the Kong database.

A source writes its data into a snapshot through a ``SnapshotSink`` and returns metadata the
engine records under ``snapshot.sources[<name>]``. Adding a source never touches the actions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol


@dataclass(frozen=True)
class StreamRecord:
    """Where a stream landed in the snapshot: its blobs, size and SHA-256."""

    name: str
    size: int
    sha256: str
    blobs: tuple[str, ...]


class SnapshotSink(Protocol):
    """The engine side a source writes into."""

    def add_stream(self, name: str, chunks: Iterable[bytes]) -> StreamRecord:
        """Store a byte stream (content-addressed, packed, encrypted) under ``name``."""
        ...


class Source(Protocol):
    """A data source that can contribute to a snapshot."""

    name: str

    def backup(self, sink: SnapshotSink) -> dict[str, Any]:
        """Write this source's data into ``sink``; return JSON-able metadata for the manifest."""
        ...


class FileMeta(NamedTuple):
    """What ``lstat`` said about an entry (plain integers: it crosses process boundaries)."""

    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


class TreeSink(SnapshotSink, Protocol):
    """The engine side a file-tree source writes into.

    The tree comes one directory at a time: ``enter_dir`` opens a directory's block, then
    its direct children follow in ascending name order (directories first come as entries;
    their own blocks follow later, in ascending path order). That is the manifest order.
    """

    def enter_dir(self, rel_dir: str) -> None:
        """Start the block of ``rel_dir``'s children (``""`` is the root)."""
        ...

    def vouched(self, names: Sequence[str]) -> list[tuple[int, int, int, int] | None]:
        """Per name of the open directory (ascending, across calls): the (size, mtime_ns,
        ctime_ns, inode) under which the engine already holds that file's content, or None.
        A regular file whose ``lstat`` still shows exactly that need not be read."""
        ...

    def add_dir(self, rel: str, meta: FileMeta) -> None:
        """Record a directory."""
        ...

    def add_file(self, rel: str, meta: FileMeta, chunks: Iterable[bytes],
                 sha256: str | None = None) -> None:
        """Record a regular file read from ``chunks``; ``sha256`` of the whole content when
        the source already computed it."""
        ...

    def add_unchanged(self, rel: str, meta: FileMeta) -> None:
        """Record a regular file that still matches what ``vouched`` said."""
        ...

    def add_symlink(self, rel: str, meta: FileMeta, target: str) -> None:
        """Record a symbolic link."""
        ...

    def add_error(self, rel: str, error: str) -> None:
        """Report an entry that could not be read (it is left out of the snapshot)."""
        ...
