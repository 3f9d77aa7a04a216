"""Storage backends behind one contract (``base.Backend``): a local directory or S3.

``open_backend`` picks one by ``repository.url``: ``/path`` or ``file:///path`` -> local,
``s3://bucket/prefix`` -> S3. boto3 is imported only when an S3 repository is opened.
"""

from __future__ import annotations

from pathlib import Path

from wicked_dr.backends.base import Backend, ObjectInfo, PreconditionFailed
from wicked_dr.backends.local import LocalBackend
from wicked_dr.config import RepositoryConfig

__all__ = ["Backend", "LocalBackend", "ObjectInfo", "PreconditionFailed", "open_backend"]


def open_backend(config: RepositoryConfig) -> Backend:
    """The backend for ``config.url`` (already validated by the config schema)."""
    url = config.url
    if url.startswith("s3://"):
        from wicked_dr.backends.s3 import S3Backend

        return S3Backend.from_config(config)
    return LocalBackend(Path(url.removeprefix("file://")))
