"""Packs, index documents, tree objects and the manifest order the walker produces."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wicked_dr.errors import IntegrityError
from wicked_dr.repository.crypto import Sealer
from wicked_dr.repository.index import index_document, parse_index
from wicked_dr.repository.manifest import (
    Entry,
    decode_tree,
    encode_tree,
    implied_blobs,
    sort_key,
)
from wicked_dr.repository.packs import (
    BlobLocation,
    PackBuilder,
    PackRecord,
    decode_pack,
    encode_pack,
)
from wicked_dr.sources.base import StreamRecord
from wicked_dr.sources.volume import walk


def _blob(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def _pack(*datas: bytes) -> tuple[str, bytes]:
    blobs, chunks, offset = [], [], 0
    for data in datas:
        blob_id, _ = _blob(data)
        blobs.append(BlobLocation(blob_id, offset, len(data)))
        chunks.append(data)
        offset += len(data)
    plaintext = encode_pack(blobs, chunks)
    return hashlib.sha256(plaintext).hexdigest(), plaintext


def test_pack_round_trip_every_blob_back() -> None:
    """A pack decodes to exactly its blobs, keyed by their SHA-256."""
    datas = [b"one", b"two" * 1000, os.urandom(5000)]
    pack_id, plaintext = _pack(*datas)
    assert decode_pack(pack_id, plaintext) == dict(_blob(d) for d in datas)


def test_pack_content_not_matching_its_id_rejected() -> None:
    """A pack whose bytes do not hash to its id is refused."""
    pack_id, plaintext = _pack(b"one", b"two")
    with pytest.raises(IntegrityError, match="does not match its id"):
        decode_pack(pack_id, plaintext[:-1] + b"X")


def test_pack_corrupt_blob_rejected_even_without_pack_check() -> None:
    """A blob whose bytes do not match its id is refused."""
    _pack_id, plaintext = _pack(b"one", b"two")
    damaged = plaintext[:-1] + b"X"
    with pytest.raises(IntegrityError, match="corrupt"):
        decode_pack(hashlib.sha256(damaged).hexdigest(), damaged)


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_pack_malformed_rejected(damage: str) -> None:
    """A pack with a bad magic or blobs past its end is refused."""
    _, plaintext = _pack(b"one", b"two" * 100)
    bad = b"XXXXXXXX" + plaintext[8:] if damage == "magic" else plaintext[:-50]
    with pytest.raises(IntegrityError):
        decode_pack(hashlib.sha256(bad).hexdigest(), bad)


def test_pack_builder_seals_when_full_and_on_flush(tmp_path: Path) -> None:
    """The builder seals a pack once the target size is reached, and the rest on flush."""
    sealed: list[tuple[PackRecord, Path]] = []
    sealer = Sealer("r" * 32, None)
    builder = PackBuilder(sealer, tmp_path, 1000, lambda rec, path: sealed.append((rec, path)))
    first, second, third = (_blob(os.urandom(600)) for _ in range(3))
    builder.add(*first)
    assert builder.is_pending(first[0]) and not sealed
    builder.add(*second)
    assert len(sealed) == 1 and not builder.is_pending(first[0])
    builder.add(*third)
    builder.flush()
    builder.flush()  # nothing pending: no empty pack
    assert [len(rec.blobs) for rec, _ in sealed] == [2, 1]
    record, path = sealed[0]
    plaintext = sealer.open("data", f"data/{record.pack_id[:2]}/{record.pack_id}",
                            path.read_bytes(), max_size=record.raw_size)
    assert decode_pack(record.pack_id, plaintext) == dict([first, second])
    assert record.stored_size == path.stat().st_size
    assert PackRecord.from_json(record.to_json()) == record


def test_index_document_round_trip_and_malformed_rejected() -> None:
    """An index document parses back to its records; garbage is an IntegrityError."""
    records = [PackRecord("p" * 64, 10, 20, (BlobLocation("b" * 64, 0, 10),))]
    assert parse_index("i", index_document(records)) == records
    with pytest.raises(IntegrityError, match="malformed"):
        parse_index("i", b'{"packs": [{"id": 1}]}')


def test_entry_json_round_trip_implied_blobs_omitted() -> None:
    """One-blob files omit 'blobs' (implied by the SHA-256); multi-blob files keep them."""
    single = Entry("a.json", "file", 0o644, 888, 888, 123, 5, "s" * 64, ("s" * 64,))
    multi = Entry("big", "file", 0o600, 0, 0, 1, 9, "m" * 64, ("x" * 64, "y" * 64))
    link = Entry("l", "symlink", 0o777, 0, 0, 1, target="a.json")
    folder = Entry("d", "dir", 0o755, 0, 0, 1)
    assert "blobs" not in single.to_json() and multi.to_json()["blobs"] == list(multi.blobs)
    assert implied_blobs(0, None) == ()
    entries = [single, multi, link, folder]
    assert decode_tree("t", encode_tree(entries)) == entries


def test_decode_tree_malformed_rejected() -> None:
    """A tree line that is not an entry is an IntegrityError."""
    with pytest.raises(IntegrityError, match="malformed"):
        decode_tree("t", b'{"path": "x"}\n')


class _RecordingSink:
    """A TreeSink that consumes file contents like the engine does and records the order."""

    def __init__(self, before_read: Callable[[str], None] | None = None) -> None:
        self.order: list[str] = []
        self.errors: list[str] = []
        self._before_read = before_read

    def add_dir(self, rel: str, st: os.stat_result) -> None:
        self.order.append(rel)

    def add_symlink(self, rel: str, st: os.stat_result, target: str) -> None:
        self.order.append(rel)

    def add_file(self, rel: str, st: os.stat_result,
                 read: Callable[[], Iterator[bytes]]) -> None:
        if self._before_read:
            self._before_read(rel)
        b"".join(read())
        self.order.append(rel)

    def add_error(self, rel: str, error: str) -> None:
        self.errors.append(rel)

    def add_stream(self, name: str, chunks: object) -> StreamRecord:
        raise AssertionError("not used")


def test_walk_order_is_manifest_sort_order(tmp_path: Path) -> None:
    """The walker emits entries in sort_key order (the merge-join depends on it)."""
    for rel in ["a/b", "a-b", "a.b", "ab", "a/c/d", "A", "z", "a0"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    os.symlink("z", tmp_path / "y")
    (tmp_path / "skip.lock").write_text("")
    sink = _RecordingSink()
    walk(tmp_path, sink)
    assert "skip.lock" not in sink.order and "y" in sink.order
    assert sink.order == sorted(sink.order, key=sort_key)
    assert sink.order.index("a/c/d") < sink.order.index("a-b")


def test_walk_file_vanishing_before_read_reported_not_recorded(tmp_path: Path) -> None:
    """A file deleted between its stat and its read is reported as an error, not recorded."""
    for rel in ["a.json", "b.json", "c.json"]:
        (tmp_path / rel).write_text("{}")

    def vanish(rel: str) -> None:
        if rel == "b.json":
            (tmp_path / rel).unlink()

    sink = _RecordingSink(before_read=vanish)
    walk(tmp_path, sink)
    assert sink.order == ["a.json", "c.json"]
    assert sink.errors == ["b.json"]
