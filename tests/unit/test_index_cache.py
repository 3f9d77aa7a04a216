"""The index cache's run set: exact answers below and above the in-memory limit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wicked_dr.repository import index
from wicked_dr.repository.index import IndexCache


def _ids(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


@pytest.mark.parametrize("set_max", [0, 3, 1_000_000], ids=["spilled", "mixed", "in-memory"])
def test_run_blobs_marked_written_found_others_not(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  set_max: int) -> None:
    """Blobs of this run are known exactly, whether held in memory or spilled to SQLite."""
    monkeypatch.setattr(index, "RUN_SET_MAX", set_max)
    cache = IndexCache(tmp_path / "index.sqlite")
    written = _ids(50, "w")
    for start in range(0, 50, 5):
        cache.mark_written(written[start:start + 5])
    assert all(cache.has(b) for b in written)
    assert not any(cache.has(b) for b in _ids(500, "other"))


def test_run_blobs_not_persisted_across_caches(tmp_path: Path) -> None:
    """A new run never trusts blobs an earlier, unfinished run only staged."""
    first = IndexCache(tmp_path / "index.sqlite")
    blob = _ids(1, "x")[0]
    first.mark_written([blob])
    first.close()
    assert not IndexCache(tmp_path / "index.sqlite").has(blob)
