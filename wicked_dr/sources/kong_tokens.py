"""Kong's OAuth2 tokens: stream them into a snapshot, and re-attach them after a rebuild.

This is the source as the actions see it: ``KongTokensSource`` (backup) and
``restore_tokens``. The work lives in modules each readable in one sitting:

* kong_schema.py: which Kong generation the database holds, read from the catalog;
* kong_export.py: what the backup reads, in which transaction, as which stream sections;
* kong_restore.py: staging a stream, remapping it onto the rebuilt Kong, inserting;
* kong_stream.py: the stream format both share (docs/format-kong-tokens.md);
* kong_db.py: the session both open on Kong's database.
"""

from __future__ import annotations

from typing import Any

from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import SourceError
from wicked_dr.sources.base import SnapshotSink
from wicked_dr.sources.kong_export import export_tokens
from wicked_dr.sources.kong_restore import TokenRestoreReport, restore_tokens
from wicked_dr.sources.kong_stream import STREAM_NAME

__all__ = ["KongTokensSource", "TokenRestoreReport", "restore_tokens"]


class KongTokensSource:
    """The ``kong_tokens`` source: unexpired OAuth2 tokens plus what re-attaching needs."""

    name = STREAM_NAME

    def __init__(self, config: KongTokensConfig) -> None:
        if config.dsn is None or not config.dsn.get_secret_value():
            raise SourceError("kong_tokens.dsn is not set; token backup is off")
        self._config = config

    def backup(self, sink: SnapshotSink) -> dict[str, Any]:
        """Stream the tokens into ``sink``; return generation, columns, counts, server time."""
        return export_tokens(self._config, sink)
