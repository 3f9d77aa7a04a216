"""The data source contract: what the backup engine asks of the volume and the Kong database.

A source writes its data into a snapshot through a ``SnapshotSink`` and returns metadata the
engine records under ``snapshot.sources[<name>]``. Adding a source never touches the actions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


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


class TreeSink(SnapshotSink, Protocol):
    """The engine side a file-tree source writes into (entries in manifest order)."""

    def add_dir(self, rel: str, st: os.stat_result) -> None:
        """Record a directory."""
        ...

    def add_file(self, rel: str, st: os.stat_result,
                 read: Callable[[], Iterator[bytes]]) -> None:
        """Record a regular file; ``read`` is called only when its content is needed."""
        ...

    def add_symlink(self, rel: str, st: os.stat_result, target: str) -> None:
        """Record a symbolic link."""
        ...

    def add_error(self, rel: str, error: str) -> None:
        """Report an entry that could not be read (it is left out of the snapshot)."""
        ...
