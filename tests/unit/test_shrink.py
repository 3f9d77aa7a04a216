"""The one shrink guard (``repository/shrink.py``) backup and prune share: files and bytes,
each against its own reference, and the reference since the newest forced snapshot."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from wicked_dr.errors import RefusedError
from wicked_dr.repository.shrink import Counts, guard_shrink, largest_references
from wicked_dr.repository.snapshot import Snapshot, SourceRecord, Summary


def snap(name: str, files: int, size: int, *, forced: bool = False) -> Snapshot:
    record = SourceRecord("volume", MappingProxyType({"forced": forced}))
    return Snapshot(name, "t", "t", 0.0, "h", "0", None, MappingProxyType({"volume": record}),
                    Summary(files=files, bytes=size))


@pytest.mark.parametrize("now, refused", [
    (Counts(80, 800), None),            # exactly the limit: accepted
    (Counts(79, 800), "files"),
    (Counts(100, 799), "bytes"),        # bytes alone are enough
    (Counts(120, 1200), None),          # growth is never refused
])
def test_files_and_bytes_each_against_the_limit(now: Counts, refused: str | None) -> None:
    reference = snap("ref", 100, 1000)
    refs = {"files": reference, "bytes": reference}
    if refused is None:
        guard_shrink(now, refs, 20, refusing="no")
        return
    with pytest.raises(RefusedError) as caught:
        guard_shrink(now, refs, 20, refusing="refusing to prune")
    message = caught.value.one_line()
    assert f" {refused} " in message and "volume.max_shrink_percent=20%" in message
    assert message.endswith("refusing to prune")


def test_reference_is_the_largest_since_the_newest_forced() -> None:
    recent = [snap("a", 500, 10), snap("b", 100, 90, forced=True), snap("c", 120, 50)]
    refs = largest_references(recent)
    assert refs["files"] is not None and refs["files"].id == "c"
    assert refs["bytes"] is not None and refs["bytes"].id == "b"
    assert largest_references([]) == {"files": None, "bytes": None}
