"""Decompression is bounded by the reader, never by the repository (issue 11, point 4): an
index entry or a zstd frame claiming gigabytes is refused by restore and check with an
integrity error naming the pack (exit 3), before any memory is spent on the claim; a pack's
header cannot place blobs outside its plaintext or make one larger than BLOB_SIZE."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from tests.fixtures.minimal import repository_of
from wicked_dr.cli import main
from wicked_dr.errors import ExitCode, IntegrityError
from wicked_dr.repository.crypto import FLAG_ZSTD, MAGIC
from wicked_dr.repository.index import index_document, read_index
from wicked_dr.repository.layout import BLOB_SIZE, MIB, object_name
from wicked_dr.repository.packs import encode_pack, iter_pack
from wicked_dr.repository.repo import content_id

ERROR_PREFIX = "wicked-dr: error: "
CLAIM = 2 * 1024 * MIB  # what the forged index entry or frame header says: 2 GiB
MEMORY_CEILING = 64 * MIB  # far below the claim: nothing was allocated for it


def _frame_claiming(content: bytes, claimed: int) -> bytes:
    """A zstd frame of ``content`` whose header records ``claimed`` bytes of content (an
    8-byte Frame_Content_Size, single segment): what a decompression bomb looks like to a
    reader that trusts the header."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(content)
    descriptor = frame[4]
    single = (descriptor >> 5) & 1
    header = (5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
              + (1 if single else 0, 2, 4, 8)[descriptor >> 6])
    forged = frame[:4] + bytes([0xE0 | (descriptor & 0x04)]) + struct.pack("<Q", claimed)
    forged += frame[header:]
    assert zstandard.get_frame_parameters(forged).content_size == claimed
    return forged


def _forge(config: Path, *, raw_size_plus: int = 0, raw_size: int | None = None,
           frame_claims: int | None = None) -> str:
    """Rewrite the repository's index so its pack's ``raw_size`` is ``raw_size`` (or the
    true one plus ``raw_size_plus``); with ``frame_claims``, replace the pack by an envelope
    whose zstd frame header claims that many bytes. The local index cache is dropped so that
    restore reads the forged index. Returns the pack's id."""
    repo = repository_of(config)
    [index_id] = repo.list_ids("index")
    [pack] = read_index(repo, index_id)
    name = object_name("data", pack.pack_id)
    stored_size = pack.stored_size
    if frame_claims is not None:
        envelope = MAGIC + bytes([FLAG_ZSTD]) + _frame_claiming(b"\0" * 1000, frame_claims)
        repo.backend.put(name, envelope)
        stored_size = len(envelope)
    forged = dataclasses.replace(
        pack, raw_size=pack.raw_size + raw_size_plus if raw_size is None else raw_size,
        stored_size=stored_size)
    plaintext = index_document([forged])
    repo.backend.delete(object_name("index", index_id))
    repo.save("index", content_id(plaintext), plaintext)
    shutil.rmtree(config.parent / "state" / "cache", ignore_errors=True)
    return pack.pack_id


FORGERIES = {
    "index-claims-2GiB": {"raw_size": CLAIM},
    "index-and-frame-claim-2GiB": {"raw_size": CLAIM, "frame_claims": CLAIM},
    "frame-claims-2GiB": {"frame_claims": CLAIM},
    "index-claims-more-than-the-pack-holds": {"raw_size_plus": 1000},
}


def _run_traced(args: list[str]) -> tuple[int, int]:
    """``main(args)`` with tracemalloc on: (exit code, peak bytes allocated)."""
    tracemalloc.start()
    try:
        code = main(args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return code, peak


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_restore_pack_size_forged_integrity_error_exit_3_nothing_allocated(
        backed_up: Path, forgery: str, capsys: pytest.CaptureFixture[str]) -> None:
    """restore refuses a pack whose index entry or frame header claims more than it may hold
    or than it holds: exit 3 naming the pack, peak memory far below the claim."""
    pack_id = _forge(backed_up, **FORGERIES[forgery])
    code, peak = _run_traced(["--config", str(backed_up), "restore", "latest", "--target",
                              str(backed_up.parent / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert code == ExitCode.INTEGRITY, err
    assert len(lines) == 1 and pack_id in lines[0], err
    assert peak < MEMORY_CEILING, f"peak {peak} bytes"
    assert not (backed_up.parent / "out" / "users" / "u1.json").exists()


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_check_read_data_pack_size_forged_reported_exit_3_nothing_allocated(
        backed_up: Path, forgery: str, capsys: pytest.CaptureFixture[str]) -> None:
    """check --read-data reports such a pack as a problem of that pack (exit 3), peak memory
    far below the claim."""
    pack_id = _forge(backed_up, **FORGERIES[forgery])
    code, peak = _run_traced(["--config", str(backed_up), "--json", "check", "--read-data"])
    out, err = capsys.readouterr()
    assert code == ExitCode.INTEGRITY, err
    problems = json.loads(out)["problems"]
    assert [p for p in problems if p["object"] == f"pack {pack_id}"], problems
    assert peak < MEMORY_CEILING, f"peak {peak} bytes"


def test_check_index_raw_size_beyond_format_reported_without_read_data_exit_3(
        backed_up: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even without --read-data, check reports an index entry whose raw_size no pack may
    have, once, as a problem of that pack."""
    pack_id = _forge(backed_up, raw_size=CLAIM)
    code = main(["--config", str(backed_up), "--json", "check"])
    out, err = capsys.readouterr()
    assert code == ExitCode.INTEGRITY, err
    problems = json.loads(out)["problems"]
    assert [p["object"] for p in problems] == [f"pack {pack_id}"], problems
    assert str(CLAIM) in problems[0]["message"]


def _pack_with(offset: int, length: int, data: bytes) -> tuple[str, bytes]:
    """A pack whose one blob (the id of ``data``) sits at ``offset``, ``length`` bytes."""
    blob_id = hashlib.sha256(data).hexdigest()
    plaintext = encode_pack([blob_id], [offset], [length], [data])
    return hashlib.sha256(plaintext).hexdigest(), plaintext


HOSTILE_LOCATIONS = {
    "negative-offset": (-4, 4, b"abcd"),
    "negative-length": (0, -1, b"abcd"),
    "larger-than-BLOB_SIZE": (0, BLOB_SIZE + 1, b"\0" * (BLOB_SIZE + 1)),
}


@pytest.mark.parametrize("case", list(HOSTILE_LOCATIONS))
def test_iter_pack_blob_outside_plaintext_or_too_large_integrity_error(case: str) -> None:
    """A pack header placing a blob before its data, with a negative length, or larger than
    BLOB_SIZE (even when its bytes are there and hash right) is refused, naming the pack."""
    pack_id, plaintext = _pack_with(*HOSTILE_LOCATIONS[case])
    with pytest.raises(IntegrityError, match=f"pack {pack_id}"):
        list(iter_pack(pack_id, plaintext))
