"""Recording a damaged pack where every later backup looks: the repository's damage records
(``repository/damage.py``) and this machine's index cache.

Whoever reads a pack and finds it damaged (a restore, ``check --read-data``) records it, so
that the next backup stores that data again instead of deduplicating against bytes that no
longer restore. Recording is best effort: a restore with read-only credentials, or while
another backup holds the index cache, still fails for the reason it found, not for this.
"""

from __future__ import annotations

import sqlite3

from wicked_dr.errors import WickedDRError
from wicked_dr.log import get_logger
from wicked_dr.repository.damage import (
    DamageRecord,
    forget_damage,
    save_damage,
)
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)


class DamageRecorder:
    """The ``on_damaged`` hook of readers (``engine/blobs.BlobReader``): records each damaged
    pack once, in the repository and in ``index`` when given."""

    def __init__(self, repo: Repository, index: IndexCache | None, found_by: str) -> None:
        self._repo = repo
        self._index = index
        self._found_by = found_by
        self.recorded: list[str] = []

    def __call__(self, pack_id: str, reason: str) -> None:
        if pack_id in self.recorded:
            return
        self.recorded.append(pack_id)
        log.error("pack damaged; recorded so that the next backup stores its data again",
                  pack=pack_id, found_by=self._found_by, reason=reason)
        self._record_in_repository(DamageRecord.now(pack_id, self._found_by, reason))
        self._mark_in_cache(pack_id)

    def _record_in_repository(self, record: DamageRecord) -> None:
        try:
            save_damage(self._repo, record)
        except (WickedDRError, OSError) as exc:
            log.warning("could not store the damage record in the repository (read-only "
                        "credentials?); this machine's index cache still knows",
                        pack=record.pack_id, error=str(exc))

    def _mark_in_cache(self, pack_id: str) -> None:
        if self._index is None:
            return
        try:
            self._index.mark_damaged(pack_id)
        except (WickedDRError, sqlite3.Error) as exc:
            log.warning("could not mark the pack damaged in the index cache",
                        pack=pack_id, error=str(exc))


def heal(repo: Repository, index: IndexCache, uploaded: list[str]) -> list[str]:
    """Packs recorded damaged that a backup just stored again whole (a pack id is the hash
    of its content: the same blobs in the same order make the same pack, and the upload
    replaced the damaged object): their records are removed. Returns their ids."""
    damaged = set(index.damaged_packs())  # the repository's records, as of this backup
    healed = [pack_id for pack_id in uploaded if pack_id in damaged]
    for pack_id in healed:
        forget_damage(repo, pack_id)
        index.mark_sound(pack_id)
        log.warning("a pack recorded damaged was stored again whole by this backup",
                    pack=pack_id)
    return healed
