"""A repository: the typed object store on top of a backend (docs/format.md).

Writers follow the order packs -> index -> trees -> snapshot; a snapshot exists only once its
snapshot object exists. Readers start from snapshot objects and ignore everything else.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wicked_dr.backends.base import Backend, PreconditionFailed
from wicked_dr.errors import (
    IntegrityError,
    NotFoundError,
    UsageError,
    WrongKeyError,
)
from wicked_dr.log import get_logger
from wicked_dr.repository.crypto import Key, Sealer, sha256_hex
from wicked_dr.repository.layout import (
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_METADATA_OBJECT,
    Kind,
    id_from_name,
    object_name,
    prefix_of,
)

log = get_logger(__name__)
KEY_CHECK_PLAINTEXT = b"wicked-dr key check"
CONTENT_ADDRESSED = frozenset({"data", "index", "tree"})


@dataclass(frozen=True)
class RepoConfig:
    """The repository's ``config`` object."""

    repo_id: str
    created: str
    key_id: str | None
    key_check: str | None

    def to_json(self) -> dict[str, Any]:
        encryption = None
        if self.key_id:
            encryption = {"algorithm": "AES-256-GCM", "key_id": self.key_id,
                          "check": self.key_check}
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "id": self.repo_id,
                "created": self.created, "compression": "zstd", "encryption": encryption}


class Repository:
    """Typed, sealed objects in a backend."""

    def __init__(self, backend: Backend, config: RepoConfig, key: Key | None) -> None:
        self.backend = backend
        self.config = config
        self.sealer = Sealer(config.repo_id, key)

    @property
    def repo_id(self) -> str:
        return self.config.repo_id

    @property
    def url(self) -> str:
        return self.backend.url

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, backend: Backend, key: Key | None) -> Repository:
        """Open the existing repository at ``backend``.

        NotFoundError when the location holds nothing; IntegrityError when it holds objects
        but no readable ``config`` (never a repository to write over).
        """
        config = _read_config(backend)
        if config is None:
            _refuse_headless(backend)
            raise NotFoundError(f"no wicked-dr repository at {backend.url}; create one with "
                                "'wicked-dr init'")
        _check_key(backend.url, config, key)
        return cls(backend, config, key)

    @classmethod
    def init(cls, backend: Backend, key: Key | None, *,
             create_location: bool = False) -> tuple[Repository, bool]:
        """Open the repository at ``backend``, creating it only where the location holds no
        object at all; ``(repository, created)``.

        A location (bucket, directory) that does not exist is created only when
        ``create_location``; the caller decides (a bucket needs ``--create-bucket``).
        """
        config = _read_config(backend) if backend.exists() else None
        created = config is None
        if config is None:
            config = _create_config(backend, key, create_location=create_location)
        _check_key(backend.url, config, key)
        return cls(backend, config, key), created

    # --- objects -------------------------------------------------------------------------

    def save(self, kind: Kind, object_id: str, plaintext: bytes) -> None:
        """Seal and store one object under its id."""
        name = object_name(kind, object_id)
        self.backend.put(name, self.sealer.seal(kind, name, plaintext))

    def save_json(self, kind: Kind, object_id: str, doc: Any) -> None:
        """Store a JSON document (compact, UTF-8)."""
        self.save(kind, object_id, _dumps(doc))

    def load(self, kind: Kind, object_id: str, *, max_size: int = MAX_METADATA_OBJECT) -> bytes:
        """Fetch and open one object; NotFoundError when absent, IntegrityError when damaged."""
        name = object_name(kind, object_id)
        plaintext = self.sealer.open(kind, name, self.backend.get(name), max_size=max_size)
        if kind in CONTENT_ADDRESSED and sha256_hex(plaintext) != object_id:
            raise IntegrityError(f"{kind} object {object_id} does not match its id (corrupt "
                                 "or swapped)")
        return plaintext

    def load_json(self, kind: Kind, object_id: str) -> Any:
        """Fetch a JSON object."""
        data = self.load(kind, object_id)
        try:
            return json.loads(data)
        except ValueError:
            raise IntegrityError(f"{kind} object {object_id} is not valid JSON") from None

    def list_ids(self, kind: Kind) -> list[str]:
        """Ids of every stored object of ``kind`` (sorted)."""
        return sorted(id_from_name(info.name) for info in self.backend.list(prefix_of(kind))
                      if not id_from_name(info.name).startswith("."))

    def list_objects(self, kind: Kind) -> Iterator[tuple[str, int]]:
        """``(id, stored size)`` of every object of ``kind``."""
        for info in self.backend.list(prefix_of(kind)):
            yield id_from_name(info.name), info.size

    def has(self, kind: Kind, object_id: str) -> bool:
        """Whether the object exists."""
        try:
            self.backend.stat(object_name(kind, object_id))
        except NotFoundError:
            return False
        return True


def content_id(plaintext: bytes) -> str:
    """Content-addressed ids are the SHA-256 of the plaintext."""
    return sha256_hex(plaintext)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _read_config(backend: Backend) -> RepoConfig | None:
    try:
        raw = backend.get(CONFIG_NAME)
    except NotFoundError:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT_NAME:
            raise ValueError("format")
        if doc.get("version") != FORMAT_VERSION:
            raise IntegrityError(f"repository at {backend.url} has format version "
                                 f"{doc.get('version')}; this wicked-dr reads {FORMAT_VERSION}")
        enc = doc.get("encryption") or {}
        return RepoConfig(doc["id"], doc["created"], enc.get("key_id"), enc.get("check"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"{backend.url}/config is not a wicked-dr repository "
                             "config") from None


def _refuse_headless(backend: Backend) -> None:
    """Objects without a ``config``: a damaged repository or foreign files, never empty."""
    if not backend.exists():
        return
    first = next(iter(backend.list("")), None)
    if first is not None:
        raise IntegrityError(
            f"{backend.url} holds objects (e.g. {first.name!r}) but no readable 'config' "
            "object: the repository's config was lost, or the location belongs to something "
            "else; restore 'config' from a copy (docs/format.md) or choose an empty location")


def _create_config(backend: Backend, key: Key | None, *,
                   create_location: bool) -> RepoConfig:
    _prepare_location(backend, create_location=create_location)
    _refuse_headless(backend)
    repo_id = secrets.token_hex(16)
    check = None
    if key is not None:
        sealer = Sealer(repo_id, key)
        check = sealer.seal("keycheck", CONFIG_NAME, KEY_CHECK_PLAINTEXT, compress=False).hex()
    config = RepoConfig(repo_id, datetime.now(UTC).isoformat(), key.key_id if key else None,
                        check)
    try:
        backend.put(CONFIG_NAME, _dumps(config.to_json()), if_none_match=True)
    except PreconditionFailed:
        # Someone else created it at the same moment: theirs wins, use it.
        existing = _read_config(backend)
        assert existing is not None
        return existing
    log.info("repository created", url=backend.url, repo_id=repo_id,
             key_id=config.key_id or "none")
    return config


def _prepare_location(backend: Backend, *, create_location: bool) -> None:
    if backend.exists():
        return
    if not create_location:
        raise NotFoundError(f"the repository location {backend.url} does not exist (for S3: "
                            "the bucket); create it, or run 'wicked-dr init --create-bucket'")
    backend.create()


def _check_key(url: str, config: RepoConfig, key: Key | None) -> None:
    if config.key_id is None and key is not None:
        raise UsageError(f"repository at {url} is not encrypted, but "
                         "repository.encryption_key_file is set; remove the key setting or "
                         "use a new repository")
    if config.key_id is None or key is None:
        if config.key_id is not None:
            raise WrongKeyError(f"repository at {url} is encrypted (key id {config.key_id}); "
                                "set repository.encryption_key_file to its key")
        return
    if not _key_check_opens(config, key):
        if config.key_id == key.key_id:
            raise IntegrityError(
                f"the config object of the repository at {url} does not authenticate with its "
                f"own key (key id {key.key_id}): it was altered or replaced; restore 'config' "
                "from a copy (docs/format.md)")
        raise WrongKeyError(f"wrong encryption key for repository at {url}: it needs key id "
                            f"{config.key_id}, the configured key is {key.key_id}")


def _key_check_opens(config: RepoConfig, key: Key) -> bool:
    sealer = Sealer(config.repo_id, key)
    try:
        return sealer.open("keycheck", CONFIG_NAME, bytes.fromhex(config.key_check or ""),
                           max_size=64) == KEY_CHECK_PLAINTEXT
    except (IntegrityError, ValueError):
        return False
