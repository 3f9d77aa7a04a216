"""The snapshot object as a type (docs/format.md section 8): parsed and validated once, where
it is loaded, with the format version handled here and nowhere else.

A snapshot object is immutable; what is learnt about it later (verification) lives in other
objects and is joined in when snapshots are listed (``engine/catalog.py``).

Versions: 1 (manifest depth first) and 2 (manifest in directory blocks) share every field;
only the order of the manifest's entries differs (``manifest_order``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from wicked_dr.errors import IntegrityError, NotFoundError

SNAPSHOT_VERSION = 2  # what this wicked-dr writes
READABLE_VERSIONS = (1, 2)
# The one source whose data is a file tree: its manifest is the snapshot's ``trees``.
TREE_SOURCE = "volume"


@dataclass(frozen=True)
class StreamRef:
    """A byte stream in the repository: the concatenation of ``blobs``, ``size`` bytes whose
    SHA-256 is ``sha256``."""

    size: int
    sha256: str
    blobs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "blobs": list(self.blobs)}


@dataclass(frozen=True)
class SourceRecord:
    """What one source put into a snapshot: its own metadata, and its data as a file tree
    (``trees``) or as a stream."""

    name: str
    metadata: Mapping[str, Any]
    trees: tuple[str, ...] = ()
    stream: StreamRef | None = None


@dataclass(frozen=True)
class Summary:
    """Counts of the file tree, for listings and guards."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    files_unchanged: int = 0
    errors: int = 0


@dataclass(frozen=True)
class FileError:
    """A file the backup could not read (it is not in the manifest)."""

    path: str
    error: str


@dataclass(frozen=True)
class Snapshot:
    """One snapshot object."""

    id: str
    time: str
    end_time: str
    duration_s: float
    host: str
    tool_version: str
    parent: str | None
    sources: Mapping[str, SourceRecord]
    summary: Summary = field(default_factory=Summary)
    errors: tuple[FileError, ...] = ()
    version: int = SNAPSHOT_VERSION

    @property
    def trees(self) -> tuple[str, ...]:
        """The file tree's manifest (empty when the snapshot holds no file tree)."""
        record = self.sources.get(TREE_SOURCE)
        return record.trees if record else ()

    def source(self, name: str) -> SourceRecord:
        """The record of source ``name``; NotFoundError when this snapshot lacks it."""
        record = self.sources.get(name)
        if record is None:
            held = ", ".join(self.sources) or "nothing"
            raise NotFoundError(f"snapshot {self.id} holds no {name!r} data (it holds: {held})")
        return record

    def to_json(self) -> dict[str, Any]:
        """The object as stored (docs/format.md section 8)."""
        streams = {name: r.stream.to_json() for name, r in self.sources.items() if r.stream}
        return {
            "version": self.version, "id": self.id, "time": self.time,
            "end_time": self.end_time, "duration_s": self.duration_s, "host": self.host,
            "tool_version": self.tool_version, "parent": self.parent,
            "trees": list(self.trees), "streams": streams,
            "sources": {name: dict(r.metadata) for name, r in self.sources.items()},
            "summary": vars(self.summary).copy(),
            "errors": [{"path": e.path, "error": e.error} for e in self.errors],
        }

    @classmethod
    def from_json(cls, doc: Any, snapshot_id: str) -> Snapshot:
        """Parse and validate a stored snapshot object; IntegrityError naming what is wrong."""
        try:
            return _parse(doc, snapshot_id)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"snapshot object {snapshot_id} is malformed ({exc!r})") from None


def _parse(doc: Any, snapshot_id: str) -> Snapshot:
    if not isinstance(doc, dict) or doc.get("id") != snapshot_id:
        raise IntegrityError(f"snapshot object {snapshot_id} does not describe itself")
    version = doc.get("version")
    if version not in READABLE_VERSIONS:
        raise IntegrityError(f"snapshot {snapshot_id} has version {version!r}; this wicked-dr "
                             f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return Snapshot(
        id=snapshot_id, time=str(doc["time"]), end_time=str(doc.get("end_time", "")),
        duration_s=float(doc.get("duration_s", 0.0)), host=str(doc.get("host", "")),
        tool_version=str(doc.get("tool_version", "")), parent=_optional_text(doc.get("parent")),
        sources=_sources(doc), summary=_summary(doc.get("summary") or {}),
        errors=tuple(FileError(str(e["path"]), str(e["error"])) for e in doc.get("errors", [])),
        version=int(version))


def _sources(doc: dict[str, Any]) -> Mapping[str, SourceRecord]:
    metadata: dict[str, Any] = doc.get("sources") or {}
    streams: dict[str, Any] = doc.get("streams") or {}
    trees = tuple(_text_list(doc.get("trees", []), "trees"))
    records: dict[str, SourceRecord] = {}
    for name in [*metadata, *(s for s in streams if s not in metadata)]:
        meta = metadata.get(name) or {}
        if not isinstance(meta, dict):
            raise TypeError(f"sources.{name} is not an object")
        stream = _stream(streams[name]) if name in streams else None
        records[name] = SourceRecord(name, MappingProxyType(meta),
                                     trees if name == TREE_SOURCE else (), stream)
    if trees and TREE_SOURCE not in records:
        records[TREE_SOURCE] = SourceRecord(TREE_SOURCE, MappingProxyType({}), trees)
    return MappingProxyType(records)


def _stream(doc: Any) -> StreamRef:
    return StreamRef(int(doc["size"]), str(doc["sha256"]),
                     tuple(_text_list(doc["blobs"], "stream blobs")))


def _summary(doc: dict[str, Any]) -> Summary:
    known = Summary.__dataclass_fields__
    return Summary(**{k: int(v) for k, v in doc.items() if k in known})


def _text_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} is not a list of ids")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)
