"""The restore plan (``engine/restore_plan.plan``): packs in order of first use, each file
written when the last pack it needs arrives, blobs held only while a later file needs them."""

from __future__ import annotations

from typing import cast

from wicked_dr.engine.blobs import BlobReader
from wicked_dr.engine.restore_plan import plan
from wicked_dr.repository.manifest import Entry


class _Index:
    """Stands in for the reader's index lookups: blob id -> pack id."""

    def __init__(self, packs: dict[str, str]) -> None:
        self._packs = packs
        self.asked: list[str] = []

    def pack_of(self, blob_id: str) -> str:
        self.asked.append(blob_id)
        return self._packs[blob_id]


def _file(path: str, *blobs: str) -> Entry:
    return Entry(path, "file", 0o644, 0, 0, 0, size=len(blobs), sha256="0" * 64, blobs=blobs)


def test_plan_single_blob_files_grouped_by_pack_in_first_use_order_nothing_held() -> None:
    """Files of one blob each: packs numbered as first used, each pack's files in manifest
    order, nothing held, each blob looked up once."""
    index = _Index({"a": "P", "b": "Q", "c": "P", "d": "R"})
    files = [_file("f1", "a"), _file("f2", "b"), _file("f3", "c"), _file("f4", "d"),
             _file("f5", "a")]
    result = plan(files, cast(BlobReader, index))
    assert result.packs == ["P", "Q", "R"]
    assert result.done_at == [[0, 2, 4], [1], [3]]
    assert result.held_until == {}
    assert sorted(index.asked) == ["a", "b", "c", "d"]


def test_plan_file_spanning_two_packs_holds_the_earlier_blob_until_the_later_pack() -> None:
    """A file whose blobs are in packs 0 and 2 is written at pack 2; its blob of pack 0 is
    held until then and released there. A file without blobs needs no pack."""
    index = _Index({"a": "P", "b": "Q", "c": "R"})
    files = [_file("big", "a", "c"), _file("small", "b"), _file("empty")]
    result = plan(files, cast(BlobReader, index))
    assert result.packs == ["P", "R", "Q"]
    assert result.done_at == [[], [0], [1]]
    assert result.empty == [2]
    assert result.held_until == {"a": 1}
    assert result.release_at == [[], ["a"], []]
