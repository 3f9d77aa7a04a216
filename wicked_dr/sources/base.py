"""The data source contract: what the backup engine asks of the volume and the Kong database.

A source writes its data into a snapshot through a ``SnapshotSink`` and returns metadata the
engine records under ``snapshot.sources[<name>]``. Adding a source never touches the actions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
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
    """The engine side a file-tree source writes into."""

    def add_tree(self, root: Path, exclude: Callable[[str], object],
                 settle: Callable[[str, list[str]], bool] | None = None) -> None:
        """Snapshot every entry under ``root`` except names ``exclude`` refuses.

        The engine scans (in parallel, skipping unchanged files); the source decides what to
        read and holds whatever makes the tree consistent (wicked's lock) around the call.
        ``settle(directory, names)`` sees each directory's full listing before any of its
        files is read, may wait there, and returns True when the directory must be listed
        again (files changed while it waited)."""
        ...
