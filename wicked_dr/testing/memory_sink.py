"""An in-memory ``SnapshotSink`` for tests: it really consumes, hashes and keeps each stream.

It behaves like the engine's sink where a source can tell (it pulls every chunk, records
size and SHA-256, refuses a second stream of the same name) and lets a test read the bytes
back. ``on_chunk`` runs after each chunk, so a test can act in the middle of a stream (for
instance terminate the database backend that produces it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from wicked_dr.repository.snapshot import StreamRef


@dataclass
class MemorySink:
    """Keeps every stream in memory, chunk by chunk, with the record the engine would return."""

    on_chunk: Callable[[str, int], None] | None = None
    streams: dict[str, list[bytes]] = field(default_factory=dict)
    records: dict[str, StreamRef] = field(default_factory=dict)
    largest_chunk: int = 0

    def add_stream(self, name: str, chunks: Iterable[bytes]) -> StreamRef:
        """Consume ``chunks`` completely; return its size and SHA-256 like the engine does."""
        if name in self.streams:
            raise ValueError(f"stream {name!r} was already added to this snapshot")
        digest = hashlib.sha256()
        kept: list[bytes] = []
        size = 0
        for index, chunk in enumerate(chunks):
            data = bytes(chunk)
            digest.update(data)
            kept.append(data)
            size += len(data)
            self.largest_chunk = max(self.largest_chunk, len(data))
            if self.on_chunk is not None:
                self.on_chunk(name, index)
        self.streams[name] = kept
        sha = digest.hexdigest()
        record = StreamRef(size=size, sha256=sha, blobs=(sha,))
        self.records[name] = record
        return record

    def chunks(self, name: str) -> Iterator[bytes]:
        """The stream's chunks as they were handed over."""
        return iter(self.streams[name])

    def read(self, name: str) -> bytes:
        """The whole stream."""
        return b"".join(self.streams[name])
