"""The data source contract: a source is the one place that knows its data, both ways.

A source backs its data up into a snapshot (``backup``) and brings it back out of one
(``restore_to_dir``; the live restore's phases come with the incident command). It never
imports the engine: it gets what it needs through the small protocols below, which the engine
implements (``SnapshotSink``/``TreeSink`` for writing, ``SnapshotReader``/``TreeReader`` for
reading). The actions never name a concrete source: they loop over the registry
(``sources/__init__.py``), so a new source is one module plus one registry line.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.holder import Holder
from wicked_dr.progress import Progress
from wicked_dr.repository.snapshot import Snapshot, SourceRecord, StreamRef
from wicked_dr.repository.verification import ProbeResult

SourceKind = Literal["tree", "stream"]


# --- what the engine lends a source ---------------------------------------------------------


class SnapshotSink(Protocol):
    """The engine side a source writes into."""

    def add_stream(self, name: str, chunks: Iterable[bytes]) -> StreamRef:
        """Store a byte stream (content-addressed, packed, encrypted) under ``name``. An
        empty chunk marks a boundary: what follows starts a new blob, so that an unchanged
        part after it dedupes against the last backup."""
        ...


@dataclass(frozen=True)
class TreeCounts:
    """What a file tree in a snapshot holds, and how its locked phase knew what to re-read
    (``watch``, ``stat``, ``rescan``, or ``none`` without a lock) and re-read."""

    files: int
    bytes: int
    recheck: str = "none"
    reread: int = 0


class HeldLock(Protocol):
    """A lock a file tree is re-checked under (``portal/quiesce.QuiesceReport``)."""

    def settle(self, directory: str, names: list[str]) -> bool:
        """Wait until the writes in flight among ``names`` (entries of ``directory``, e.g.
        the ``<file>.lock`` files) are done; True when it waited (list again)."""
        ...

    def wait_grace(self) -> None:
        """Give a writer that checked for the lock just before it existed the time to show
        its own ``<file>.lock`` (needed when no change watch would see it)."""
        ...


HoldLock = Callable[[], AbstractContextManager[HeldLock]]


class TreeSink(SnapshotSink, Protocol):
    """The engine side a file-tree source writes into."""

    def add_tree(self, root: Path, exclude: Callable[[str], object],
                 hold: HoldLock | None = None, *, watch: bool = True) -> TreeCounts:
        """Snapshot every entry under ``root`` except names ``exclude`` refuses; return how
        many files and bytes the tree holds, and what was re-read under ``hold``.

        The engine scans (in parallel, skipping unchanged files) the whole tree first,
        without ``hold``; then it enters ``hold()`` (the source's lock that makes the tree
        consistent: wicked's ``global.lock``) and re-reads only what may have changed since,
        known from a change watch (``watch``) or by re-statting every file. The snapshot
        is the tree as it stood at one instant inside ``hold``. Without ``hold`` the first
        read is the snapshot."""
        ...


class SnapshotReader(Protocol):
    """The engine side a source reads a snapshot back from."""

    def stream(self, ref: StreamRef) -> Iterator[bytes]:
        """A stream's bytes, in order, each blob verified; the whole stream is checked
        against its SHA-256 when it ends (IntegrityError)."""
        ...


class TreeReader(SnapshotReader, Protocol):
    """The engine side a file-tree source restores from."""

    def restore_tree(self, trees: tuple[str, ...], target: Path) -> dict[str, int]:
        """Write the file tree ``trees`` under ``target``, every file verified against its
        hash; counts of what was written (files, dirs, symlinks, bytes, packs_fetched)."""
        ...

    def write_tar(self, trees: tuple[str, ...], out: IO[bytes],
                  owner: tuple[int, int] | None = None) -> int:
        """The file tree ``trees`` as a tar stream into ``out``, every file verified;
        entries owned by ``owner`` when given; how many entries were written."""
        ...

    def files(self, trees: tuple[str, ...]) -> Iterator[tuple[str, int, str]]:
        """(path, size, SHA-256) of every regular file of the file tree ``trees``."""
        ...

    def tree_counts(self, trees: tuple[str, ...]) -> TreeCounts:
        """How many files and bytes the file tree ``trees`` holds (from the snapshot's
        summary: no manifest is read)."""
        ...

    def read_file(self, trees: tuple[str, ...], path: str) -> bytes | None:
        """One small file's content (verified), None when the tree lacks it."""
        ...


class ScratchOutcome(Protocol):
    """How a command in a scratch container ended (``portal/scratch.ScratchResult``)."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


class ScratchServiceHandle(Protocol):
    """A long-running scratch container a probe talks to (``portal/scratch.ScratchService``):
    a server it runs commands in, still with no network."""

    @property
    def id(self) -> str:
        """The container's id (for ``run(network_mode="container:<id>")``)."""
        ...

    def state(self) -> tuple[str, int | None]:
        """Its status (``running``, ``exited``...) and exit code once ended."""
        ...

    def logs(self, max_bytes: int = 4096) -> str:
        """The tail of its stdout and stderr."""
        ...

    def exec(self, command: list[str], user: str | None = None, *, timeout_s: float = 300,
             environment: Mapping[str, str] | None = None,
             cancel: CancelToken = NOT_CANCELLED) -> ScratchOutcome:
        """Run ``command`` in the service and wait for it, ``timeout_s`` at most."""
        ...


class ScratchRunner(Protocol):
    """Throwaway Docker resources a probe works in (``portal/scratch.ScratchRun``): volumes
    filled by streaming, commands run with no network and no host path mounted."""

    def ensure_image(self, image: str, pull: Literal["missing", "never"] = "never") -> None:
        """Make sure the engine has ``image`` (pulled when absent and ``pull="missing"``)."""
        ...

    def volume(self, name_hint: str = "data", *, memory_mib: int = 0,
               holder_image: str | None = None) -> str:
        """A new, empty scratch volume; its name."""
        ...

    def fill(self, volume: str, tar: bytes | IO[bytes] | Iterable[bytes], image: str,
             mount: str = "/data") -> None:
        """Stream ``tar`` into ``volume``."""
        ...

    def own_root(self, volume: str, owner: tuple[int, int], image: str,
                 mode: int = 0o755) -> None:
        """Give the root directory of ``volume`` to ``owner``."""
        ...

    def copy_from_image(self, volume: str, image: str, path: str,
                        owner: tuple[int, int]) -> None:
        """Fill ``volume`` with a copy of ``image``'s directory ``path`` owned by ``owner``."""
        ...

    def run(self, image: str, command: list[str], mounts: Mapping[str, str] | None = None,
            user: str | None = None, tmpfs: Mapping[str, str] | None = None, *,
            timeout_s: float, environment: Mapping[str, str] | None = None,
            cancel: CancelToken = NOT_CANCELLED, network_mode: str | None = None,
            readonly: Collection[str] = ()) -> ScratchOutcome:
        """Run ``command`` to its end in a new scratch container mounting ``mounts``
        (``readonly`` ones read-only), with no network or the loopback of a service of the
        same run (``network_mode="container:<id>"``)."""
        ...

    def service(self, image: str, command: list[str] | None = None,
                mounts: Mapping[str, str] | None = None, user: str | None = None,
                tmpfs: Mapping[str, str] | None = None, *,
                environment: Mapping[str, str] | None = None,
                readonly: Collection[str] = (),
                must_stay_up: bool = True) -> ScratchServiceHandle:
        """Start a long-running scratch container (``sleep infinity`` by default) mounting
        ``mounts``; it lives until the run ends."""
        ...


# --- what passes between an action and a source ----------------------------------------------


@dataclass(frozen=True)
class BackupContext:
    """What a backup tells every source."""

    force: bool = False
    lock_wait_s: float = 0.0
    previous: Snapshot | None = None  # the newest snapshot before this one
    # The newest few snapshots, oldest first (``previous`` last): the reference of guards
    # that must not be walked down one small step at a time.
    recent: tuple[Snapshot, ...] = ()
    progress: Progress | None = None
    # Checked at the source's safe points (waits for the portal's locks, between chunks).
    cancel: CancelToken = NOT_CANCELLED
    # Whether the wicked-dr that left a global.lock may still run (a reason) or is gone
    # (None); from the repository's locks. None here: the one-hour rule of portal/quiesce.py.
    global_lock_judge: Callable[[Holder, float], str | None] | None = None


@dataclass(frozen=True)
class SourceBackup:
    """What a source's backup returns: JSON-able metadata for the snapshot, its stream (a
    stream source), and how long the portal was held still for it."""

    metadata: dict[str, Any]
    stream: StreamRef | None = None
    lock_window_s: float = 0.0
    reread_under_lock: int = 0  # files read again while the lock was held


@dataclass(frozen=True)
class DirRestore:
    """What a source's restore into a directory returns."""

    source: str
    written: Mapping[str, int] = field(default_factory=dict)
    path: str = ""


class Source(Protocol):
    """A data source: the one place that knows its data, in every direction."""

    name: str
    # "tree": a file tree (restore --target writes it into the directory by default);
    # "stream": anything else (written into the directory only when asked by name).
    kind: SourceKind

    @property
    def configured(self) -> bool:
        """Whether backups include this source (e.g. a database whose DSN is set)."""
        ...

    def check_ready(self, *, force: bool) -> None:
        """Refuse, before any repository is touched, data that must not be snapshotted
        (RefusedError) or that is not there (SourceError)."""
        ...

    def backup(self, sink: TreeSink, context: BackupContext) -> SourceBackup:
        """Write this source's data into ``sink``."""
        ...

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        """Bring this source's data in ``record`` back as files under ``target``, touching
        nothing live."""
        ...


class LiveReport(Protocol):
    """What a live restore step reports."""

    @property
    def ok(self) -> bool:
        """Whether every item the snapshot holds is in place (or rightly skipped)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        ...


@dataclass(frozen=True)
class SmokeSettings:
    """The smoke probe (``verify.smoke_*``): portal-api's image started on the restored
    volume with the static configuration (a tar of it), as ``user``, until ``GET /ping``
    answers on ``port`` or ``timeout_s`` passed. ``environment`` may hold the AES key:
    never logged, never in a problem."""

    image: str
    static_tar: bytes
    command: tuple[str, ...]
    user: str
    port: int
    timeout_s: float
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Directories of the image the program writes into at start: each gets a writable copy.
    writable_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeBench:
    """What a probe gets from ``verify``: scratch resources of this verification, the images
    to run (``verify.image``, ``verify.postgres_image``) and whether they may be pulled
    (``verify.pull``), the owner restored files get, a local directory for temporary files,
    limits, and ``before_check(volume)``, called once a volume is filled and before it is
    checked (tests change a file there: a probe must find what the host-side restore
    cannot)."""

    scratch: ScratchRunner
    image: str
    postgres_image: str
    owner: tuple[int, int]
    spool_dir: Path
    timeout_s: float
    memory_mib: int = 0  # the restored files' scratch volume in memory, at most this size
    cancel: CancelToken = NOT_CANCELLED
    before_check: Callable[[str], None] | None = None
    # ``verify.pull``: whether a probe may pull an image the engine lacks.
    pull: Literal["missing", "never"] = "never"
    # The smoke probe after the volume's check; None: off.
    smoke: SmokeSettings | None = None


@runtime_checkable
class ProbedSource(Source, Protocol):
    """A source that can prove its data restorable in scratch containers."""

    def probe(self, reader: TreeReader, record: SourceRecord,
              bench: ProbeBench) -> list[ProbeResult]:
        """Restore the data of ``record`` into scratch resources and check it there; one
        result per probe run (the volume's may be followed by the smoke probe's)."""
        ...


@runtime_checkable
class AfterRebuildSource(Source, Protocol):
    """A source whose data goes back into the running portal after the Kong Adapter rebuilt
    Kong (the OAuth2 tokens: they hang off the credentials the rebuild makes)."""

    def restore_live(self, reader: SnapshotReader, record: SourceRecord, *,
                     dry_run: bool) -> LiveReport:
        """Put the data in ``record`` back into the live system (a dry run rolls back)."""
        ...


# --- the live restore: data swapped in while portal-api is stopped -----------------------------


@dataclass(frozen=True)
class LiveSettings:
    """What a live restore tells every source: the owner restored data gets (None: leave
    it the restoring user's), the webhook listeners whose pending events are emptied,
    ``restore.swap``, whether data newer than the live data may come back, and an id that
    names this restore's files."""

    restore_id: str
    owner: tuple[int, int] | None
    empty_queues: tuple[str, ...] = ()
    swap: str = "auto"
    allow_newer: bool = False
    progress: Progress | None = None
    cancel: CancelToken = NOT_CANCELLED


class LiveState(Protocol):
    """A source's part of the live restore's journal: what it needs to finish or undo its
    swap after a crash. ``put`` persists before it returns."""

    def get(self) -> dict[str, Any]:
        """The source's recorded fields."""
        ...

    def put(self, **fields: Any) -> None:
        """Record ``fields`` (durably)."""
        ...


@runtime_checkable
class SwappedSource(Source, Protocol):
    """A source whose data goes back while portal-api is stopped: guarded and staged first
    (nothing live changes), then swapped in; the swap can be undone until portal-api runs
    healthy on the restored data."""

    def live_guard(self, reader: TreeReader, record: SourceRecord, settings: LiveSettings,
                   state: LiveState) -> dict[str, Any]:
        """Refuse (RefusedError) what must not be restored here, before anything is
        written: no room to stage it, data newer than the live data."""
        ...

    def stage_live(self, reader: TreeReader, record: SourceRecord, settings: LiveSettings,
                   state: LiveState) -> dict[str, Any]:
        """Restore ``record`` beside the live data and check it there; RefusedError when it
        fails the check (nothing live touched)."""
        ...

    def swap_live(self, state: LiveState) -> dict[str, Any]:
        """Put the staged data in place of the live data, keeping the live data aside."""
        ...

    def undo_live(self, state: LiveState) -> dict[str, Any]:
        """Put the data kept aside back (from whatever point the swap reached)."""
        ...

    def finish_live(self, state: LiveState) -> dict[str, Any]:
        """Remove what staging left; report where the pre-restore copy is kept."""
        ...
