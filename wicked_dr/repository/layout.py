"""Object kinds and where each lives under the repository prefix (docs/format.md, "Layout")."""

from __future__ import annotations

from typing import Literal

Kind = Literal["data", "index", "tree", "snapshot", "lock", "verification", "damage", "drill",
               "lease"]

CONFIG_NAME = "config"
FORMAT_NAME = "wicked-dr-repository"
FORMAT_VERSION = 1
MIB = 1024 * 1024
BLOB_SIZE = 4 * MIB                 # files are cut into blobs of at most this many bytes
MAX_METADATA_OBJECT = 64 * MIB      # bound for decompressing index, tree, snapshot objects
MAX_PACK = 256 * MIB                # the most plaintext a pack may hold (docs/format.md, 5):
                                    # every pack's decompression is bounded by it

_DIRS: dict[Kind, str] = {
    "data": "data",
    "index": "index",
    "tree": "trees",
    "snapshot": "snapshots",
    "lock": "locks",
    "verification": "verifications",
    "damage": "damaged",
    "drill": "drills",
    # The daemon lease: never under locks/, so repository locks neither see nor wait for it.
    "lease": "leases",
}


def object_name(kind: Kind, object_id: str) -> str:
    """The backend name of an object: packs are fanned out by the first two hex digits."""
    if kind == "data":
        return f"data/{object_id[:2]}/{object_id}"
    return f"{_DIRS[kind]}/{object_id}"


def prefix_of(kind: Kind) -> str:
    """The name prefix under which all objects of ``kind`` live."""
    return _DIRS[kind] + "/"


def id_from_name(name: str) -> str:
    """The object id: the last path component of its name."""
    return name.rsplit("/", 1)[-1]
