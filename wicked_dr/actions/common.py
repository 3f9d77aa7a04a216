"""What every action needs: options, typed results, the repository opened from the config,
the local state directory, and a reader for one snapshot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from wicked_dr.backends import open_backend
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.engine.damage import DamageRecorder
from wicked_dr.engine.restore import Ownership
from wicked_dr.engine.snapshot_reader import SnapshotReader
from wicked_dr.errors import NotFoundError, RefusedError
from wicked_dr.progress import Progress
from wicked_dr.repository.crypto import Key, load_key
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot
from wicked_dr.state_dir import StateDir


class Result:
    """Base of every action's result: ``--json`` prints ``to_json()``, the terminal a
    rendering of the same data (report.py), and the daemon reads the object itself."""

    def to_json(self) -> Any:
        """The result as JSON-able data (dataclass results: their fields)."""
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class RunOptions:
    """Options of the command line that every action may honour. ``cancel`` stops the
    action at its next safe point (a signal at the CLI, the daemon stopping a job); by
    default a token of its own that nobody cancels."""

    lock_wait_s: float = 0.0
    progress: Progress | None = None
    cancel: CancelToken = field(default_factory=CancelToken)


def configured_key(config: Config) -> Key | None:
    """The repository key, when one is configured."""
    path = config.repository.encryption_key_file
    return load_key(path) if path else None


def open_repository(config: Config) -> Repository:
    """The configured repository, which must exist (``wicked-dr init`` creates it)."""
    return Repository.open(open_backend(config.repository), configured_key(config))


def init_repository(config: Config, *, create_bucket: bool = False) -> tuple[Repository, bool]:
    """The configured repository, created where its location holds no object at all;
    ``(repository, created)``. A local directory is made on demand, a bucket only when
    ``create_bucket``."""
    create_location = create_bucket or not config.repository.url.startswith("s3://")
    return Repository.init(open_backend(config.repository), configured_key(config),
                           create_location=create_location)


def open_or_create_repository(config: Config) -> Repository:
    """What a backup writes to: the repository, or a new one in an empty location unless
    this machine's ``state_dir`` remembers another repository there (a wiped bucket or a
    changed ``repository.url`` needs a person, not a silent fresh start)."""
    try:
        return open_repository(config)
    except NotFoundError:
        known = state_dir(config).known_repository_ids()
        if known:
            raise RefusedError(
                f"no repository at {config.repository.url}, but state_dir {config.state_dir} "
                f"holds the cache of repository {known[0]}: the repository was wiped or moved, "
                "or repository.url changed; restore or point to it, or run 'wicked-dr init' "
                "to start a new repository there on purpose") from None
        return init_repository(config)[0]


def state_dir(config: Config) -> StateDir:
    """This machine's local state directory."""
    return StateDir(config.state_dir)


def index_cache(repo: Repository, config: Config) -> IndexCache:
    """The local index cache of ``repo``, synchronised."""
    return IndexCache.for_repository(repo, state_dir(config).index_cache(repo.repo_id))


def snapshot_reader(repo: Repository, config: Config, snapshot: Snapshot,
                    options: RunOptions | None = None) -> SnapshotReader:
    """What sources read ``snapshot``'s data back through (progress and cancellation from
    ``options``; a restored file tree owned by ``restore.owner_uid``/``owner_gid`` when
    running as root; blobs a restore spills go to the state directory); a pack found
    damaged is recorded (``engine/damage.py``)."""
    options = options or RunOptions()
    index = index_cache(repo, config)
    return SnapshotReader(repo, index, snapshot,
                          progress=options.progress, cancel=options.cancel,
                          ownership=Ownership.configured(config.restore),
                          scratch=state_dir(config).restore_scratch(),
                          on_damaged=DamageRecorder(repo, index, found_by="restore"))
