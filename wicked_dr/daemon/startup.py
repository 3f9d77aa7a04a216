"""What the daemon clears up before it schedules anything.

A sidecar killed while it held wicked's ``global.lock`` (a kill -9 left it behind in 8 of
24 mid-backup kills) blocks every portal-api write until the file is gone, so it is the
first thing the daemon looks at, and again at every lease tick until it is gone. Whether
its creator is dead is judged by the repository: a wicked-dr holding ``global.lock``
always holds a repository lock (backup takes it first), so a creator without a live
repository lock is gone, on whatever host it ran. A live restore's journal is never acted
on without a person: its jobs refuse (and alert) until ``restore --resume`` ran.
"""

from __future__ import annotations

from pathlib import Path

from wicked_dr.engine.live_journal import find_journal
from wicked_dr.holder import Holder
from wicked_dr.log import get_logger
from wicked_dr.portal.quiesce import remove_stale_global_lock
from wicked_dr.repository.locks import creator_gone_unless_locking
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)


def clear_stale_global_lock(volume: Path | None, repo: Repository) -> Holder | None:
    """Remove our deployment's leftover ``global.lock`` when its creator is gone."""
    if volume is None or not volume.is_dir():
        return None
    return remove_stale_global_lock(volume, creator_gone_unless_locking(repo))


def unfinished_live_restore(volume: Path | None, state_root: Path) -> Path | None:
    """The journal of an unfinished live restore, if there is one."""
    journal = find_journal(volume, state_root)
    if journal is not None:
        log.error("a live restore is unfinished: jobs refuse until it is finished or rolled "
                  "back ('wicked-dr restore --resume')", journal=str(journal))
    return journal
