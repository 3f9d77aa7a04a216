"""Object envelopes: compression, AES-256-GCM bound to repository, kind and name; key files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wicked_dr.backends.local import LocalBackend
from wicked_dr.errors import ConfigError, IntegrityError, UsageError, WrongKeyError
from wicked_dr.repository.crypto import MAGIC, Key, Sealer, key_id_of, load_key
from wicked_dr.repository.repo import Repository

REPO_ID = "a" * 32
SECRET = bytes(range(32))
PLAINTEXT = b'{"id": "u1", "email": "a@example.com"}' * 50


def _key(secret: bytes = SECRET) -> Key:
    return Key(secret, key_id_of(secret))


@pytest.mark.parametrize("key", [None, _key()], ids=["plain", "encrypted"])
@pytest.mark.parametrize("compress", [True, False], ids=["zstd", "raw"])
def test_seal_open_round_trip(key: Key | None, compress: bool) -> None:
    """What is sealed opens to the same bytes, compressed or not, encrypted or not."""
    sealer = Sealer(REPO_ID, key)
    envelope = sealer.seal("tree", "trees/x", PLAINTEXT, compress=compress)
    assert envelope[:4] == MAGIC
    assert sealer.open("tree", "trees/x", envelope, max_size=len(PLAINTEXT)) == PLAINTEXT
    if key is not None:
        assert PLAINTEXT[:20] not in envelope


@pytest.mark.parametrize(("repo_id", "kind", "name"), [
    (REPO_ID, "tree", "trees/y"),      # swapped under another name
    (REPO_ID, "index", "trees/x"),     # replayed as another type
    ("b" * 32, "tree", "trees/x"),     # copied from another repository
], ids=["other-name", "other-kind", "other-repository"])
def test_encrypted_object_misplaced_rejected(repo_id: str, kind: str, name: str) -> None:
    """An encrypted object opened under another repository, type or name fails authentication."""
    envelope = Sealer(REPO_ID, _key()).seal("tree", "trees/x", PLAINTEXT)
    with pytest.raises(IntegrityError, match="failed authentication"):
        Sealer(repo_id, _key()).open(kind, name, envelope, max_size=1 << 20)


def test_encrypted_object_flipped_byte_rejected() -> None:
    """Any flipped byte in an encrypted envelope's body fails authentication."""
    sealer = Sealer(REPO_ID, _key())
    envelope = bytearray(sealer.seal("data", "data/ab/x", PLAINTEXT))
    for position in (6, len(envelope) // 2, len(envelope) - 1):
        damaged = bytearray(envelope)
        damaged[position] ^= 0x40
        with pytest.raises(IntegrityError):
            sealer.open("data", "data/ab/x", bytes(damaged), max_size=1 << 20)


def test_plain_object_every_single_bit_flip_rejected() -> None:
    """Without encryption too, every single-bit flip of a snapshot object's envelope is
    refused (a checksum): none loads with changed fields."""
    sealer = Sealer(REPO_ID, None)
    snapshot = b'{"id":"s1","parent":null,"summary":{"files":3},"trees":["t1"]}'
    envelope = sealer.seal("snapshot", "snapshots/s1", snapshot)
    loaded = 0
    for bit in range(len(envelope) * 8):
        damaged = bytearray(envelope)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            sealer.open("snapshot", "snapshots/s1", bytes(damaged), max_size=1 << 20)
            loaded += 1
        except IntegrityError:
            pass
    assert loaded == 0


@pytest.mark.parametrize(("repo_id", "kind", "name"), [
    (REPO_ID, "snapshot", "snapshots/s2"),
    (REPO_ID, "lock", "snapshots/s1"),
    ("b" * 32, "snapshot", "snapshots/s1"),
], ids=["other-name", "other-kind", "other-repository"])
def test_plain_object_misplaced_rejected(repo_id: str, kind: str, name: str) -> None:
    """An unencrypted object opened under another repository, type or name fails its
    checksum."""
    envelope = Sealer(REPO_ID, None).seal("snapshot", "snapshots/s1", PLAINTEXT)
    with pytest.raises(IntegrityError, match="fails its checksum"):
        Sealer(repo_id, None).open(kind, name, envelope, max_size=1 << 20)


def test_plain_object_written_before_checksums_still_read() -> None:
    """An unencrypted envelope without the checksum flag (written before 2026-11-30) opens as
    before; an envelope with an unknown flag bit is refused."""
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=True).compress(PLAINTEXT)
    old = MAGIC + bytes([0x01]) + frame
    sealer = Sealer(REPO_ID, None)
    assert sealer.open("snapshot", "snapshots/s1", old, max_size=1 << 20) == PLAINTEXT
    with pytest.raises(IntegrityError, match="unknown envelope flags"):
        sealer.open("snapshot", "snapshots/s1", MAGIC + bytes([0x09]) + frame,
                    max_size=1 << 20)


def test_open_wrong_key_rejected() -> None:
    """An envelope sealed with one key does not open with another."""
    envelope = Sealer(REPO_ID, _key()).seal("snapshot", "snapshots/s", PLAINTEXT)
    with pytest.raises(IntegrityError):
        Sealer(REPO_ID, _key(bytes(32))).open("snapshot", "snapshots/s", envelope,
                                                max_size=1 << 20)


def test_open_plain_envelope_in_encrypted_repository_rejected() -> None:
    """A plain object where encryption is expected (a downgrade) is refused."""
    envelope = Sealer(REPO_ID, None).seal("tree", "trees/x", PLAINTEXT)
    with pytest.raises(IntegrityError, match="not encrypted"):
        Sealer(REPO_ID, _key()).open("tree", "trees/x", envelope, max_size=1 << 20)


def test_open_bad_magic_rejected() -> None:
    """Bytes that are not an envelope are refused before anything else."""
    with pytest.raises(IntegrityError, match="bad magic"):
        Sealer(REPO_ID, None).open("tree", "trees/x", b"PK\x03\x04rest", max_size=100)


def test_open_frame_larger_than_max_size_refused() -> None:
    """A zstd frame claiming more than max_size is refused (bounded decompression)."""
    sealer = Sealer(REPO_ID, None)
    envelope = sealer.seal("index", "index/x", bytes(1_000_000))
    with pytest.raises(IntegrityError, match="more than"):
        sealer.open("index", "index/x", envelope, max_size=999_999)


def test_load_key_hex_and_raw_accepted(tmp_path: Path) -> None:
    """A key file of 64 hex chars (newline ok) or of 32 raw bytes loads; ids match."""
    hex_file = tmp_path / "hex.key"
    hex_file.write_text(SECRET.hex() + "\n")
    raw_file = tmp_path / "raw.key"
    raw_file.write_bytes(SECRET)
    assert load_key(hex_file).secret == load_key(raw_file).secret == SECRET
    key = load_key(hex_file)
    assert key.key_id == key_id_of(SECRET) and SECRET.hex()[:16] not in key.key_id
    assert SECRET.hex() not in repr(key)


@pytest.mark.parametrize("content", [b"abc", ("0" * 63).encode(), ("g" * 64).encode(), b""],
                         ids=["short", "63-hex", "not-hex", "empty"])
def test_load_key_malformed_config_error(tmp_path: Path, content: bytes) -> None:
    """A key file of the wrong size or alphabet is a ConfigError that says how to make one."""
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="64 hex"):
        load_key(path)


def test_load_key_missing_file_config_error(tmp_path: Path) -> None:
    """A missing key file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(tmp_path / "absent.key")


def test_repository_open_key_mismatches_rejected(tmp_path: Path) -> None:
    """Wrong key -> WrongKeyError ('wrong encryption key'); no key -> WrongKeyError; a key for a
    plain repository -> UsageError."""
    encrypted = LocalBackend(tmp_path / "enc")
    Repository.init(encrypted, _key(), create_location=True)
    with pytest.raises(WrongKeyError, match="wrong encryption key"):
        Repository.open(encrypted, _key(bytes(32)))
    with pytest.raises(WrongKeyError, match="encrypted"):
        Repository.open(encrypted, None)
    assert Repository.open(encrypted, _key()).config.key_id == key_id_of(SECRET)
    plain = LocalBackend(tmp_path / "plain")
    Repository.init(plain, None, create_location=True)
    with pytest.raises(UsageError, match="not encrypted"):
        Repository.open(plain, _key())


def test_sealer_concurrent_seals_from_two_threads_round_trip() -> None:
    """Two threads sealing through one Sealer (backup + lock renewal) produce valid envelopes."""
    script = textwrap.dedent("""
        import os, threading
        from wicked_dr.repository.crypto import Sealer
        sealer = Sealer("r" * 32, None)
        data = [os.urandom(200) * 200 for _ in range(4)]
        bad = []
        def work(k):
            for i in range(3000):
                try:
                    env = sealer.seal("lock", "locks/x", data[(i + k) % 4])
                    ok = sealer.open("lock", "locks/x", env, max_size=1 << 20) == data[(i + k) % 4]
                except Exception:
                    ok = False
                if not ok:
                    bad.append(i)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("bad", len(bad))
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, f"crashed with {done.returncode}"
    assert done.stdout.strip() == "bad 0"
