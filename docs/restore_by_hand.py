#!/usr/bin/env python3
"""Restore a wicked-dr snapshot from a local copy of the repository, by the spec alone.

Independent of the wicked_dr package on purpose: it follows docs/format.md and needs only the
standard library, `cryptography` (for encrypted repositories) and `zstandard`.

    python3 docs/restore_by_hand.py REPO_DIR SNAPSHOT_ID TARGET_DIR [KEY_FILE]
"""

import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import zstandard

REPO, SNAPSHOT, TARGET = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
KEY = bytes.fromhex(Path(sys.argv[4]).read_text().strip()) if len(sys.argv) > 4 else None
CONFIG = json.loads((REPO / "config").read_bytes())


def open_object(kind: str, name: str) -> bytes:
    """Section 3: magic, flags, [nonce], payload; AES-GCM AD binds repo id, type, name."""
    raw = (REPO / name).read_bytes()
    assert raw[:4] == b"WDR\x01", f"{name}: bad magic"
    flags, body = raw[4], raw[5:]
    ad = b"wicked-dr/1\0" + f"{CONFIG['id']}\0{kind}\0{name}".encode()
    if flags & 0x04:  # unencrypted, with a checksum over the identity and the payload
        digest, body = body[:32], body[32:]
        assert hashlib.sha256(ad + bytes([flags]) + body).digest() == digest, f"{name}: checksum"
    if flags & 0x02:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        body = AESGCM(KEY).decrypt(body[:12], body[12:], ad)
    if flags & 0x01:
        body = zstandard.ZstdDecompressor().decompress(body)
    return body


def load_index() -> dict[str, tuple[str, int, int]]:
    where = {}
    for path in sorted((REPO / "index").iterdir()):
        for pack in json.loads(open_object("index", f"index/{path.name}"))["packs"]:
            for blob_id, offset, length in pack["blobs"]:
                where[blob_id] = (pack["id"], offset, length)
    return where


def blob(where: dict[str, tuple[str, int, int]], blob_id: str) -> bytes:
    pack_id, offset, length = where[blob_id]
    plain = open_object("data", f"data/{pack_id[:2]}/{pack_id}")
    (header_len,) = struct.unpack_from(">I", plain, 8)
    start = 12 + header_len + offset
    data = plain[start:start + length]
    assert hashlib.sha256(data).hexdigest() == blob_id, f"blob {blob_id} corrupt"
    return data


def main() -> None:
    snapshot = json.loads(open_object("snapshot", f"snapshots/{SNAPSHOT}"))
    where = load_index()
    for tree_id in snapshot["trees"]:
        for line in open_object("tree", f"trees/{tree_id}").splitlines():
            entry = json.loads(line)
            assert not entry["path"].startswith("/") and ".." not in entry["path"].split("/")
            dest = TARGET / entry["path"]
            if entry["type"] == "dir":
                dest.mkdir(parents=True, exist_ok=True)
            elif entry["type"] == "symlink":
                os.symlink(entry["target"], dest)
            else:
                blobs = entry.get("blobs", [entry["sha256"]] if entry["size"] else [])
                content = b"".join(blob(where, b) for b in blobs)
                assert len(content) == entry["size"], entry["path"]
                assert hashlib.sha256(content).hexdigest() == entry["sha256"], entry["path"]
                dest.write_bytes(content)
                os.chmod(dest, entry["mode"] & 0o777)  # never setuid, setgid or sticky
                os.utime(dest, ns=(entry["mtime_ns"], entry["mtime_ns"]))


if __name__ == "__main__":
    main()
