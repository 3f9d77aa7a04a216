"""The dynamic data volume as a source: handed to the engine's scan under wicked's lock."""

from __future__ import annotations

import re
from typing import Any

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.config import VolumeConfig
from wicked_dr.errors import RefusedError, SourceError
from wicked_dr.portal.quiesce import quiesced
from wicked_dr.sources.base import TreeSink

WICKED_MARKERS = ("meta.json", "users/_index.json")


# Lock files are transient and must never come back with a restore; neither may the
# temporary file wicked-dr writes global.lock through (a kill -9 can leave one). A compiled
# pattern's ``match``: the scan filters every name of the volume with it, and a C callable
# costs no Python frame per name.
is_excluded = re.compile(r"\.wicked-dr-|.*\.lock\Z", re.DOTALL).match


class VolumeSource:
    """portal-api's dynamic data folder."""

    name = "volume"

    def __init__(self, config: VolumeConfig) -> None:
        self.config = config
        self.path = config.path

    def check_exists(self) -> None:
        """Fail on a volume.path that does not exist or is no directory (even with --force:
        there is nothing to snapshot)."""
        if not self.path.exists():
            raise SourceError(f"volume.path {self.path} does not exist; set volume.path to "
                              "portal-api's dynamic data folder (is the volume mounted?)")
        if not self.path.is_dir():
            raise SourceError(f"volume.path {self.path} is not a directory")

    def check_looks_like_wicked(self) -> None:
        """Refuse a folder that is not (or no longer) wicked's dynamic data."""
        self.check_exists()
        missing = [m for m in WICKED_MARKERS if not (self.path / m).is_file()]
        if missing:
            raise RefusedError(
                f"{self.path} does not look like wicked's dynamic data (missing "
                f"{', '.join(missing)}); refusing to snapshot it (use --force if this is "
                "intended; wicked 1.0 with Postgres storage keeps its data in the 'wicked' "
                "database instead)")

    def backup(self, sink: TreeSink, *, lock_wait_s: float = 0.0,
               cancel: CancelToken = NOT_CANCELLED) -> dict[str, Any]:
        """Walk the volume into ``sink`` under the configured quiesce mode, waiting up to
        ``lock_wait_s`` for somebody else's ``global.lock`` to go away. ``cancel`` ends the
        waits for wicked's locks (the sink's scan checks its own token, the same one)."""
        with quiesced(self.path, self.config.quiesce, self.config.quiesce_timeout_s,
                      lock_wait_s=lock_wait_s, cancel=cancel) as report:
            sink.add_tree(self.path, exclude=is_excluded, settle=report.settle)
        return {"path": str(self.path), "quiesce": report.mode,
                "lock_window_s": report.window_s, "waited_for_writes": report.waited_for_locks,
                "removed_stale_lock": report.removed_stale}
