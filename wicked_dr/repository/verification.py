"""Verification records (``verifications/<snapshot id>``): what ``verify`` proved of a snapshot.

A record is written after every verification, passing or not, and replaces the one before:
``snapshots`` shows each snapshot as ``verified``, ``failed`` or ``unverified``, and a restore
without a selector takes the newest *verified* one. Only a readable record whose ``ok`` is true
counts as verified: a failed, damaged or foreign record never sends anybody to a snapshot.

Plaintext (docs/format.md, section 15)::

    {"version": 1, "snapshot": "<id>", "time": "<ISO 8601 UTC>", "ok": true,
     "duration_s": 12.3, "tool_version": "0.1.0", "kind": "verify"|"drill",
     "probes": [{"name": "volume", "ok": true, "duration_s": 3.2,
                 "problems": ["..."], "warnings": ["..."], "figures": {"files": 123}}]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)
RECORD_VERSION = 1


class Status(StrEnum):
    """What is known of a snapshot's restorability."""

    VERIFIED = "verified"
    FAILED = "failed"
    UNVERIFIED = "unverified"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict: ``ok`` unless ``problems``; warnings never fail it."""

    name: str
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    duration_s: float = 0.0
    figures: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "duration_s": self.duration_s,
                "problems": list(self.problems), "warnings": list(self.warnings),
                "figures": dict(self.figures)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProbeResult:
        figures = doc.get("figures", {})
        if not isinstance(figures, Mapping):
            raise TypeError("figures")
        return cls(str(doc["name"]), tuple(map(str, doc["problems"])),
                   tuple(map(str, doc["warnings"])), float(doc["duration_s"]),
                   {str(k): float(v) for k, v in figures.items()})


@dataclass(frozen=True)
class VerificationRecord:
    """What one verification (``verify`` or a drill) found for one snapshot."""

    snapshot: str
    time: str
    probes: tuple[ProbeResult, ...]
    duration_s: float
    tool_version: str
    kind: str = "verify"

    @property
    def ok(self) -> bool:
        """Verified: at least one probe ran, and none found a problem."""
        return bool(self.probes) and all(p.ok for p in self.probes)

    @property
    def status(self) -> Status:
        return Status.VERIFIED if self.ok else Status.FAILED

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "snapshot": self.snapshot, "time": self.time,
                "ok": self.ok, "duration_s": self.duration_s,
                "tool_version": self.tool_version, "kind": self.kind,
                "probes": [p.to_json() for p in self.probes]}

    @classmethod
    def from_json(cls, doc: Any, snapshot_id: str) -> VerificationRecord:
        """Parse and validate; IntegrityError for anything that is not a record of
        ``snapshot_id`` (a record copied from another snapshot proves nothing here)."""
        try:
            if doc["version"] != RECORD_VERSION:
                raise IntegrityError(f"verification record of {snapshot_id}: version "
                                     f"{doc['version']!r} unknown")
            record = cls(str(doc["snapshot"]), str(doc["time"]),
                         tuple(ProbeResult.from_json(p) for p in doc["probes"]),
                         float(doc["duration_s"]), str(doc["tool_version"]),
                         str(doc.get("kind", "verify")))
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"verification record of {snapshot_id} is malformed") \
                from None
        if record.snapshot != snapshot_id or doc.get("ok") is not record.ok:
            raise IntegrityError(f"verification record of {snapshot_id} does not agree with "
                                 "itself (another snapshot's, or altered)")
        return record


def save_verification(repo: Repository, record: VerificationRecord) -> None:
    """Store the record (it replaces an earlier verification of the same snapshot)."""
    repo.save_json("verification", record.snapshot, record.to_json())


def load_verification(repo: Repository, snapshot_id: str) -> VerificationRecord | None:
    """The snapshot's record; None when there is none or it cannot be trusted (logged)."""
    try:
        return VerificationRecord.from_json(repo.load_json("verification", snapshot_id),
                                            snapshot_id)
    except NotFoundError:
        return None
    except IntegrityError as exc:
        log.error("verification record unreadable; the snapshot counts as unverified",
                  snapshot=snapshot_id, error=exc.one_line())
        return None


def status_of(repo: Repository, snapshot_id: str, recorded: set[str]) -> Status:
    """A snapshot's status; ``recorded`` are the ids with a record (one LIST), so snapshots
    without one cost no read."""
    if snapshot_id not in recorded:
        return Status.UNVERIFIED
    record = load_verification(repo, snapshot_id)
    return record.status if record is not None else Status.UNVERIFIED
