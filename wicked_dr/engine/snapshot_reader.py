"""What a source reads a snapshot back through (``sources.base.TreeReader``): streams whose
every blob and whole SHA-256 are verified, and the file tree restored into a directory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.engine.blobs import BlobReader, DamageHook
from wicked_dr.engine.export import export_tar, read_entry
from wicked_dr.engine.restore import Ownership, restore_tree
from wicked_dr.engine.restore_plan import PlanLimits
from wicked_dr.errors import IntegrityError
from wicked_dr.progress import Progress
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot, StreamRef
from wicked_dr.sources.base import TreeCounts


class SnapshotReader:
    """One snapshot's data, read from its repository; a restored file tree is owned as
    ``ownership`` says (``engine.restore.Ownership``; by default the default ``restore``
    config's owner when running as root); a restore spills blobs into ``scratch`` (the
    system's temporary directory when None)."""

    def __init__(self, repo: Repository, index: IndexCache, snapshot: Snapshot, *,
                 progress: Progress | None = None,
                 cancel: CancelToken = NOT_CANCELLED,
                 ownership: Ownership | None = None, scratch: Path | None = None,
                 on_damaged: DamageHook | None = None) -> None:
        self._repo = repo
        self._limits = PlanLimits(scratch=scratch)
        self._ownership = ownership
        self._snapshot = snapshot
        self._progress = progress
        self._cancel = cancel
        self.blobs = BlobReader(repo, index, snapshot_id=snapshot.id, on_damaged=on_damaged)

    def stream(self, ref: StreamRef) -> Iterator[bytes]:
        """The stream's bytes; IntegrityError at the end when they are not the stream."""
        digest = hashlib.sha256()
        size = 0
        for blob_id in ref.blobs:
            self._cancel.check()
            data = self.blobs.get(blob_id)
            digest.update(data)
            size += len(data)
            yield data
        if size != ref.size or digest.hexdigest() != ref.sha256:
            raise IntegrityError(f"snapshot {self._snapshot.id}: a stream of {ref.size} bytes "
                                 f"read back as {size} bytes with another SHA-256")

    def write_tar(self, trees: tuple[str, ...], out: IO[bytes],
                  owner: tuple[int, int] | None = None) -> int:
        """The snapshot's file tree as a tar stream into ``out``, every blob and file
        verified; entries owned by ``owner`` when given; how many entries were written."""
        self._own(trees)
        return export_tar(self._repo, self.blobs, self._snapshot, out,
                          cancel=self._cancel, owner=owner).entries

    def files(self, trees: tuple[str, ...]) -> Iterator[tuple[str, int, str]]:
        """(path, size, SHA-256) of every regular file of the file tree, in manifest order."""
        self._own(trees)
        for entry in iter_entries(self._repo, self._snapshot):
            if entry.type == "file":
                yield entry.path, entry.size, entry.sha256 or ""

    def tree_counts(self, trees: tuple[str, ...]) -> TreeCounts:
        """The file tree's files and bytes, as the snapshot's summary records them."""
        self._own(trees)
        summary = self._snapshot.summary
        return TreeCounts(summary.files, summary.bytes)

    def read_file(self, trees: tuple[str, ...], path: str) -> bytes | None:
        """The content of the regular file ``path`` (verified), None when the tree lacks it.
        Walks the manifest to find it: meant for a file or two (``meta.json``)."""
        self._own(trees)
        for entry in iter_entries(self._repo, self._snapshot):
            if entry.path == path and entry.type == "file":
                return read_entry(self.blobs, entry)
        return None

    def _own(self, trees: tuple[str, ...]) -> None:
        if trees != self._snapshot.trees:
            raise ValueError("a snapshot reader reads its own snapshot's file tree")

    def restore_tree(self, trees: tuple[str, ...], target: Path) -> dict[str, int]:
        """The snapshot's file tree under ``target`` (``trees`` must be the snapshot's)."""
        self._own(trees)
        stats = restore_tree(self._repo, self.blobs, self._snapshot, target,
                             ownership=self._ownership, progress=self._progress,
                             cancel=self._cancel, limits=self._limits)
        counts = asdict(stats)
        counts.pop("skipped")
        return counts
