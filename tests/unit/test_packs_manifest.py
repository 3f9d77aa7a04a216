"""Packs, index documents, tree objects and the manifest order the walker produces."""

from __future__ import annotations

import hashlib
import os
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


def _blob(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def _pack(*datas: bytes) -> tuple[str, bytes]:
    blobs, chunks, offset = [], [], 0
    for data in datas:
        blob_id, _ = _blob(data)
        blobs.append(BlobLocation(blob_id, offset, len(data)))
        chunks.append(data)
        offset += len(data)
    plaintext = encode_pack([b.blob_id for b in blobs], [b.offset for b in blobs],
                            [b.length for b in blobs], chunks)
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
    builder.add(*second)  # full: sealed in the background, pending until reported
    assert builder.is_pending(first[0]) or len(sealed) == 1
    builder.add(*third)
    builder.flush()
    builder.flush()  # nothing pending: no empty pack
    builder.close()
    assert [len(rec.blobs) for rec, _ in sealed] == [2, 1]
    assert not any(builder.is_pending(b) for b, _ in (first, second, third))
    record, path = sealed[0]
    plaintext = sealer.open("data", f"data/{record.pack_id[:2]}/{record.pack_id}",
                            path.read_bytes(), max_size=record.raw_size)
    assert decode_pack(record.pack_id, plaintext) == dict([first, second])
    assert record.stored_size == path.stat().st_size
    assert PackRecord.from_json(record.to_json()) == record


def test_index_document_round_trip_and_malformed_rejected() -> None:
    """An index document parses back to its records; garbage is an IntegrityError."""
    records = [PackRecord.of("p" * 64, 10, 20, (BlobLocation("b" * 64, 0, 10),))]
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


def test_pack_builder_sealer_failure_reaches_the_caller(tmp_path: Path) -> None:
    """A pack that cannot be written (staging gone) fails the caller, not a lost thread."""
    staging = tmp_path / "staging"
    staging.mkdir()
    builder = PackBuilder(Sealer("r" * 32, None), staging, 1000, lambda rec, path: None)
    staging.rmdir()
    builder.add(*_blob(os.urandom(2000)))
    with pytest.raises(FileNotFoundError):
        builder.flush()
    builder.close()


def test_sort_key_is_directory_blocks_then_names() -> None:
    """The manifest order: the root's entries, then each directory's block in path order."""
    paths = ["a/c/d", "a-b", "a/b", "a", "z", "a/c", "users/1.json"]
    assert sorted(paths, key=sort_key) == ["a", "a-b", "z", "a/b", "a/c", "a/c/d",
                                           "users/1.json"]
