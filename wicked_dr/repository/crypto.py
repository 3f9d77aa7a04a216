"""Object envelopes: zstd compression and AES-256-GCM bound to the object's identity.

Every stored object (except the repository ``config``) is an envelope::

    magic     b"WDR\\x01"     4 bytes
    flags     1 byte         bit 0: payload is a zstd frame; bit 1: payload is encrypted;
                             bit 2: a checksum follows (every unencrypted envelope written
                             since 2026-11-30)
    nonce     12 bytes       only when encrypted
    checksum  32 bytes       only with bit 2: SHA-256 of associated data + flags + payload
    payload                  AES-256-GCM ciphertext + 16-byte tag, or the plain payload

The associated data of the AEAD is ``b"wicked-dr/1\\0" + repo_id + b"\\0" + type + b"\\0" +
name``, so an object swapped with another, replayed under another name or copied from another
repository fails authentication. Without a key the checksum binds the same identity: it
detects damage and misplaced objects, not forgery (anyone with write access can recompute
it; that is what encryption is for). See docs/format.md.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wicked_dr.errors import ConfigError, IntegrityError

MAGIC = b"WDR\x01"
FLAG_ZSTD = 0x01
FLAG_ENCRYPTED = 0x02
FLAG_CHECKSUM = 0x04
KNOWN_FLAGS = FLAG_ZSTD | FLAG_ENCRYPTED | FLAG_CHECKSUM
CHECKSUM_SIZE = 32
NONCE_SIZE = 12
KEY_SIZE = 32
# Level 1: on wicked's data (JSON with hashes, random ids and secrets) it compresses as well
# as level 3 (5.21 against 5.19 on bench/'s 20 k-user volume) in about half the CPU time.
# Readers accept any level.
ZSTD_LEVEL = 1


@dataclass(frozen=True)
class Key:
    """The repository's AES-256 key and its public id."""

    secret: bytes
    key_id: str

    def __repr__(self) -> str:  # never show the secret, not even in tracebacks
        return f"Key(key_id={self.key_id!r})"


def key_id_of(secret: bytes) -> str:
    """A public identifier of a key: it names the key without revealing it."""
    return hashlib.sha256(b"wicked-dr key id\0" + secret).hexdigest()[:16]


def load_key(path: Path) -> Key:
    """Read a key file: 64 hex characters (whitespace ignored) or exactly 32 raw bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"repository.encryption_key_file: cannot read {path}: "
                           f"{exc.strerror}"]) from None
    secret = _parse_key(raw)
    if secret is None:
        raise ConfigError([f"repository.encryption_key_file: {path} must hold 64 hex "
                           "characters (create one with: openssl rand -hex 32)"])
    return Key(secret, key_id_of(secret))


def _parse_key(raw: bytes) -> bytes | None:
    text = b"".join(raw.split())
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return raw if len(raw) == KEY_SIZE else None


def associated_data(repo_id: str, kind: str, name: str) -> bytes:
    """What binds an object to its repository, type and name."""
    return b"wicked-dr/1\0" + f"{repo_id}\0{kind}\0{name}".encode()


class Sealer:
    """Wraps and unwraps envelopes for one repository."""

    def __init__(self, repo_id: str, key: Key | None) -> None:
        self.repo_id = repo_id
        self.key = key
        self._aead = AESGCM(key.secret) if key else None
        # zstd contexts are not thread-safe and the lock-renewal thread seals too.
        self._local = threading.local()

    def seal(self, kind: str, name: str, plaintext: bytes, *, compress: bool = True) -> bytes:
        """The envelope of ``plaintext`` stored as object ``name`` of type ``kind``."""
        if compress:
            return self._envelope(kind, name, self._compressor().compress(plaintext), FLAG_ZSTD)
        return self._envelope(kind, name, plaintext, 0)

    def seal_parts(self, kind: str, name: str, parts: Sequence[bytes]) -> bytes:
        """``seal`` of the concatenation of ``parts``, compressed as one zstd frame (content
        size recorded) without ever joining them: a pack's plaintext is never copied."""
        compressor = self._compressor().compressobj(size=sum(map(len, parts)))
        payload = b"".join([*map(compressor.compress, parts), compressor.flush()])
        return self._envelope(kind, name, payload, FLAG_ZSTD)

    def _envelope(self, kind: str, name: str, payload: bytes, flags: int) -> bytes:
        if self._aead is None:
            flags |= FLAG_CHECKSUM
            digest = _checksum(self.repo_id, kind, name, flags, payload)
            return MAGIC + bytes([flags]) + digest + payload
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, payload, associated_data(self.repo_id, kind, name))
        return MAGIC + bytes([flags | FLAG_ENCRYPTED]) + nonce + sealed

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
            self._local.compressor = compressor
        return compressor

    def open(self, kind: str, name: str, envelope: bytes, *, max_size: int) -> bytes:
        """The plaintext of an envelope; IntegrityError when it is damaged or misplaced.

        ``max_size`` bounds decompression: a frame claiming more is refused before any
        memory is spent on it.
        """
        if len(envelope) < 5 or envelope[:4] != MAGIC:
            raise IntegrityError(f"{kind} object {name}: not a wicked-dr object (bad magic)")
        flags = envelope[4]
        if flags & ~KNOWN_FLAGS:
            raise IntegrityError(f"{kind} object {name}: unknown envelope flags {flags:#04x}")
        payload = self._decrypt(kind, name, flags, envelope[5:])
        if flags & FLAG_ZSTD:
            return _decompress(kind, name, payload, max_size)
        return payload

    def _decrypt(self, kind: str, name: str, flags: int, body: bytes) -> bytes:
        encrypted = bool(flags & FLAG_ENCRYPTED)
        if encrypted != (self._aead is not None):
            state = "encrypted" if encrypted else "not encrypted"
            raise IntegrityError(f"{kind} object {name} is {state}, unlike this repository")
        if self._aead is None:
            return self._checked(kind, name, flags, body)
        nonce, sealed = body[:NONCE_SIZE], body[NONCE_SIZE:]
        try:
            return self._aead.decrypt(nonce, sealed, associated_data(self.repo_id, kind, name))
        except InvalidTag:
            raise IntegrityError(
                f"{kind} object {name} failed authentication (corrupt, tampered with, or "
                "stored under another name)") from None

    def _checked(self, kind: str, name: str, flags: int, body: bytes) -> bytes:
        """The payload of an unencrypted envelope, its checksum verified. An envelope without
        one was written before checksums existed: content-addressed kinds are still checked
        against their id by the repository; the others are read as they are."""
        if not flags & FLAG_CHECKSUM:
            return body
        digest, payload = body[:CHECKSUM_SIZE], body[CHECKSUM_SIZE:]
        if len(digest) < CHECKSUM_SIZE or _checksum(self.repo_id, kind, name, flags,
                                                    payload) != digest:
            raise IntegrityError(f"{kind} object {name} fails its checksum (damaged, or "
                                 "stored under another name)")
        return payload


def _checksum(repo_id: str, kind: str, name: str, flags: int, payload: bytes) -> bytes:
    """What an unencrypted envelope carries: SHA-256 of the object's identity, its flags
    (a flipped "compressed" bit must not pass) and its payload."""
    digest = hashlib.sha256(associated_data(repo_id, kind, name))
    digest.update(bytes([flags]))
    digest.update(payload)
    return digest.digest()


def _decompress(kind: str, name: str, payload: bytes, max_size: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError:
        raise IntegrityError(f"{kind} object {name}: corrupt zstd frame") from None
    if params.content_size < 0:  # we always record it (write_content_size=True)
        raise IntegrityError(f"{kind} object {name}: zstd frame without a content size")
    if params.content_size > max_size:
        raise IntegrityError(f"{kind} object {name}: claims {params.content_size} bytes, "
                             f"more than the {max_size} allowed")
    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{kind} object {name}: corrupt zstd frame ({exc})") from None


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as lowercase hex."""
    return hashlib.sha256(data).hexdigest()
