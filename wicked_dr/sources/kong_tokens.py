"""Kong's OAuth2 tokens: stream them into a snapshot, and re-attach them after a rebuild.

This is the source as the registry sees it: ``KongTokensSource`` (backup, the stream into a
directory, the live restore after the Kong Adapter's rebuild). The work lives in modules each
readable in one sitting, imported only when used, so that a backup without
``kong_tokens.dsn`` never loads psycopg (measured: +0.1 s and +18 MiB peak for every backup):

* kong_schema.py: which Kong generation the database holds, read from the catalog;
* kong_export.py: what the backup reads, in which transaction, as which stream sections;
* kong_restore.py: staging a stream, remapping it onto the rebuilt Kong, inserting;
* kong_stream.py: the stream format both share (docs/format-kong-tokens.md);
* kong_db.py: the session both open on Kong's database.
"""


from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import IntegrityError, SourceError
from wicked_dr.repository.snapshot import SourceRecord, StreamRef
from wicked_dr.sources.base import (
    BackupContext,
    DirRestore,
    ProbeBench,
    SnapshotReader,
    SnapshotSink,
    SourceBackup,
    SourceKind,
    TreeReader,
)

if TYPE_CHECKING:
    from wicked_dr.repository.verification import ProbeResult
    from wicked_dr.sources.kong_restore import TokenRestoreReport

STREAM_NAME = "kong_tokens"  # the source, and its stream in a snapshot


class KongTokensSource:
    """The ``kong_tokens`` source: unexpired OAuth2 tokens plus what re-attaching needs.

    Backed up as one stream; restored live into a Kong database the Kong Adapter rebuilt
    (``restore_live``), or as the raw stream file into a directory."""

    name = STREAM_NAME
    kind: SourceKind = "stream"

    def __init__(self, config: KongTokensConfig) -> None:
        self._config = config

    @property
    def configured(self) -> bool:
        """Token backup is on when Kong's database is configured."""
        return self._config.dsn is not None and bool(self._config.dsn.get_secret_value())

    def check_ready(self, *, force: bool) -> None:
        """Nothing to check before the repository is opened: the export says what failed."""

    def backup(self, sink: SnapshotSink, context: BackupContext) -> SourceBackup:
        """Stream the tokens into ``sink`` (one REPEATABLE READ transaction)."""
        if not self.configured:
            raise SourceError("kong_tokens.dsn is not set; token backup is off")
        from wicked_dr.sources.kong_export import export_tokens

        metadata, stream = export_tokens(self._config, sink, context.cancel)
        return SourceBackup(metadata, stream=stream)

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        """The token stream as ``target/kong_tokens.stream`` (docs/format-kong-tokens.md
        says how to load it by hand)."""
        stream = _stream_of(record)
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{self.name}.stream"
        with open(path, "xb") as out:
            for chunk in reader.stream(stream):
                out.write(chunk)
        return DirRestore(self.name, {"bytes": stream.size}, str(path))

    def restore_live(self, reader: SnapshotReader, record: SourceRecord, *,
                     dry_run: bool) -> TokenRestoreReport:
        """Re-attach the tokens to the credentials the Kong Adapter rebuilt."""
        from wicked_dr.sources.kong_restore import restore_tokens

        metadata: dict[str, Any] = dict(record.metadata)
        return restore_tokens(self._config, reader.stream(_stream_of(record)),
                              metadata=metadata, dry_run=dry_run)

    def probe(self, reader: TreeReader, record: SourceRecord,
              bench: ProbeBench) -> list[ProbeResult]:
        """The stream loaded into a scratch PostgreSQL server and read back, section by
        section (``kong_probe.py``)."""
        from wicked_dr.sources.kong_probe import probe_tokens

        return [probe_tokens(reader, record, bench)]


def _stream_of(record: SourceRecord) -> StreamRef:
    if record.stream is None:
        raise IntegrityError(f"the {record.name} record of the snapshot holds no stream")
    return record.stream
