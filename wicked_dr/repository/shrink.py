"""The shrink guard: one comparison for backup and prune (``volume.max_shrink_percent``).

A half-deleted or half-truncated volume must neither become the newest snapshot (backup)
nor be the reason good snapshots are forgotten (prune). Both ask the same question: did the
file tree shrink, by files or by bytes, by more than the limit against a reference snapshot?
They differ only in the reference: backup compares the tree it just read with the largest
recent snapshot (``largest_since_forced``); prune compares the newest snapshot with a
verified one. The comparison lives here, below ``sources`` and ``engine``, so both layers
import it and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wicked_dr.errors import RefusedError
from wicked_dr.repository.snapshot import TREE_SOURCE, Snapshot

MEASURES = ("files", "bytes")
LIMIT_KEY = "volume.max_shrink_percent"


@dataclass(frozen=True)
class Counts:
    """What the guard compares: the file tree's files and bytes."""

    files: int
    bytes: int

    @classmethod
    def of(cls, snapshot: Snapshot) -> Counts:
        """A snapshot's counts, from its summary (never by walking its manifest)."""
        return cls(snapshot.summary.files, snapshot.summary.bytes)


def guard_shrink(now: Counts, references: Mapping[str, Snapshot | None], limit: float, *,
                 refusing: str) -> None:
    """RefusedError when ``now`` holds fewer files or bytes than its reference for that
    measure (``references["files"]``, ``references["bytes"]``) by more than ``limit``
    percent; ``refusing`` ends the one-line message (what is refused, how to override)."""
    for what in MEASURES:
        reference = references.get(what)
        if reference is None:
            continue
        before, after = int(getattr(Counts.of(reference), what)), int(getattr(now, what))
        if after < before * (1 - limit / 100):
            raise RefusedError(
                f"the volume shrank from {before} to {after} {what} "
                f"(more than {LIMIT_KEY}={limit:g}%) since snapshot {reference.id}; "
                f"{refusing}")


def largest_since_forced(recent: Sequence[Snapshot], what: str) -> Snapshot | None:
    """The snapshot with the most ``what`` since (and including) the newest forced one, so
    that five backups each losing a little less than the limit cannot walk the volume down
    unnoticed; a forced backup accepted the loss, so older snapshots no longer count."""
    since = list(recent)
    for index in range(len(recent) - 1, -1, -1):
        if is_forced(recent[index]):
            since = list(recent[index:])
            break
    return max(since, key=lambda s: int(getattr(s.summary, what)), default=None)


def largest_references(recent: Sequence[Snapshot]) -> dict[str, Snapshot | None]:
    """``largest_since_forced`` for every measure."""
    return {what: largest_since_forced(recent, what) for what in MEASURES}


def is_forced(snapshot: Snapshot) -> bool:
    """Whether the snapshot was taken with ``--force`` (a loss accepted on purpose)."""
    record = snapshot.sources.get(TREE_SOURCE)
    return bool(record is not None and record.metadata.get("forced"))
