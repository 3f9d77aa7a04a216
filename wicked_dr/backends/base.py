"""The storage backend contract: a flat namespace of immutable-by-convention objects.

Backends know nothing about snapshots, packs or encryption; the repository layer above them
does. Names are '/'-separated relative paths (``data/ab/ab12...``). Every backend passes the
shared suite in ``tests/integration/test_backend_contract.py``.

Idempotency (what callers may repeat after an error of unknown outcome):

* ``put`` without conditions, ``get``, ``get_range``, ``stat``, ``list`` and ``delete`` are
  safe to repeat; ``delete`` of a missing object succeeds.
* ``put(if_none_match=True)`` and ``put(if_match=etag)`` are compare-and-swap: a repeat after
  a lost answer may raise ``PreconditionFailed`` although the first call succeeded, so callers
  re-read before deciding (the lock module does).

Errors: ``NotFoundError`` for a missing object/bucket/directory, ``PreconditionFailed`` when a
condition does not hold, ``RetryableBackendError`` for throttling/5xx/timeouts (already retried
with backoff inside the backend), ``BackendError`` for everything permanent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from wicked_dr.errors import BackendError


class PreconditionFailed(BackendError):
    """A conditional write's condition (If-None-Match / If-Match) did not hold."""


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat`` and ``list`` tell about one object."""

    name: str
    size: int
    etag: str


@runtime_checkable
class Backend(Protocol):
    """A place that stores named byte objects."""

    url: str

    def put(self, name: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        """Store ``data`` under ``name`` atomically (readers see all or nothing); return the
        new etag. ``if_none_match``: only if absent; ``if_match``: only if the current etag
        equals it."""
        ...

    def put_file(self, name: str, path: Path) -> str:
        """Store a local file's bytes (multipart where the backend supports it)."""
        ...

    def get(self, name: str) -> bytes:
        """The whole object; NotFoundError if absent."""
        ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Size and etag; NotFoundError if absent."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix``, in no guaranteed order."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; succeeds if it is already gone."""
        ...

    def exists(self) -> bool:
        """Whether the bucket/directory that holds the repository exists."""
        ...

    def create(self) -> None:
        """Create the bucket/directory (no-op when it exists)."""
        ...

    def sync(self) -> None:
        """Make every completed put durable (one fsync/syncfs pass; no-op on S3)."""
        ...
