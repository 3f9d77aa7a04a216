"""Damage records: packs found damaged, kept in the repository (``damaged/<pack id>``).

A pack that fails verification (``check --read-data``, a restore, ``check`` finding it
missing) is recorded here, so that every machine's next backup stops deduplicating against
it and uploads that data again (the index still lists the pack until ``repair packs`` drops
it). The record lives in the repository, not only in one ``state_dir``: a backup from an
empty ``state_dir``, or from the sidecar while an operator ran the check, must know too.

Object (docs/format.md, section 10): an envelope like any other, plaintext
``{"pack": <pack id>, "found_by": "check"|"restore"|..., "time": <ISO 8601>, "reason": <one
line>}``. A record is advisory: a forged one costs an upload, never a byte of a restore.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from wicked_dr.errors import IntegrityError, NotFoundError
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.repo import Repository


@dataclass(frozen=True)
class DamageRecord:
    """One pack found damaged: by what, when, and why."""

    pack_id: str
    found_by: str
    time: str
    reason: str

    @classmethod
    def now(cls, pack_id: str, found_by: str, reason: str) -> DamageRecord:
        return cls(pack_id, found_by, datetime.now(UTC).isoformat(timespec="seconds"), reason)

    def to_json(self) -> dict[str, str]:
        return {"pack": self.pack_id, "found_by": self.found_by, "time": self.time,
                "reason": self.reason}

    def __str__(self) -> str:
        return f"pack {self.pack_id}: found damaged by {self.found_by} at {self.time}: " \
               f"{self.reason}"


def save_damage(repo: Repository, record: DamageRecord) -> None:
    """Store (or overwrite) the record of ``record.pack_id``."""
    repo.save_json("damage", record.pack_id, record.to_json())


def damaged_pack_ids(repo: Repository) -> list[str]:
    """Ids of every pack with a damage record (one LIST; the records are not read)."""
    return repo.list_ids("damage")


def load_damage(repo: Repository, pack_id: str) -> DamageRecord:
    """The record of ``pack_id``; an unreadable one still names its pack (the name is the
    pack id), so it is never lost from view."""
    try:
        doc = repo.load_json("damage", pack_id)
        return DamageRecord(pack_id, str(doc["found_by"]), str(doc["time"]),
                            str(doc["reason"]))
    except (IntegrityError, KeyError, TypeError) as exc:
        return DamageRecord(pack_id, "unknown", "unknown", f"unreadable record: {exc}")
    except NotFoundError:
        return DamageRecord(pack_id, "unknown", "unknown", "record removed meanwhile")


def forget_damage(repo: Repository, pack_id: str) -> None:
    """Remove the record of ``pack_id`` (``repair packs`` dropped the pack)."""
    repo.backend.delete(object_name("damage", pack_id))
