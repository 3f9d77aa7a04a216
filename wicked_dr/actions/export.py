"""``wicked-dr export SNAPSHOT --tar FILE|-``: a plain tar, the way out of our format."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from wicked_dr.actions.common import index_cache, open_repository
from wicked_dr.config import Config
from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.catalog import resolve
from wicked_dr.engine.export import export_tar


def run_export(config: Config, snapshot_ref: str, tar_path: str) -> dict[str, Any]:
    """Write the snapshot as tar to ``tar_path`` ('-' is stdout); a file appears only whole."""
    repo = open_repository(config)
    snapshot = resolve(repo, snapshot_ref)
    reader = BlobReader(repo, index_cache(repo, config))
    if tar_path == "-":
        entries = export_tar(repo, reader, snapshot, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        entries = _export_to_file(repo, reader, snapshot, Path(tar_path))
    return {"snapshot": snapshot["id"], "entries": entries, "tar": tar_path}


def _export_to_file(repo: Any, reader: BlobReader, snapshot: dict[str, Any],
                    path: Path) -> int:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as out:
            entries = export_tar(repo, reader, snapshot, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return entries
