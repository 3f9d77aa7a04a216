"""``wicked-dr verify [SNAPSHOT]``: prove a snapshot restorable in throwaway containers.

Every source the snapshot holds that has a probe (``sources.base.ProbedSource``) restores
its data into scratch Docker resources and checks it there; nothing live is touched. The
outcome is stored as the snapshot's verification record, passing or not, so ``snapshots``
shows it and ``restore`` (latest-verified) skips a snapshot that failed. Leftovers of
crashed verifications are swept first (only those whose process is gone). A shared
repository lock is held, so no prune removes the snapshot meanwhile.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wicked_dr import __version__
from wicked_dr.actions.common import Result, RunOptions, open_repository, snapshot_reader
from wicked_dr.actions.common import state_dir as local_state
from wicked_dr.config import Config
from wicked_dr.engine.catalog import resolve
from wicked_dr.errors import ConfigError, IntegrityError
from wicked_dr.log import get_logger
from wicked_dr.repository.locks import locked
from wicked_dr.repository.repo import Repository
from wicked_dr.repository.snapshot import Snapshot, SourceRecord
from wicked_dr.repository.verification import (
    ProbeResult,
    VerificationRecord,
    save_verification,
)
from wicked_dr.sources import source_named
from wicked_dr.sources.base import ProbeBench, ProbedSource, SmokeSettings, TreeReader

log = get_logger(__name__)


@dataclass(frozen=True)
class VerifyResult(Result):
    """What ``verify --json`` prints: the record as stored."""

    snapshot: str
    ok: bool
    duration_s: float
    probes: list[dict[str, Any]]
    swept: int

    @property
    def problems(self) -> list[str]:
        return [f"{p['name']}: {problem}" for p in self.probes for problem in p["problems"]]


class VerifyFailed(IntegrityError):
    """A probe found problems (exit 3); ``result`` lists every one of them."""

    def __init__(self, result: VerifyResult) -> None:
        self.result = result
        problems = result.problems or ["no probe could run"]
        super().__init__(f"snapshot {result.snapshot} failed verification: "
                         + "; ".join(problems[:3])
                         + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))


def run_verify(config: Config, snapshot_ref: str = "latest", *,
               options: RunOptions | None = None,
               before_check: Callable[[str], None] | None = None,
               kind: str = "verify") -> VerifyResult:
    """Verify one snapshot in scratch containers and store the record; ``VerifyFailed``
    when a probe found problems. ``before_check(volume)`` runs once a scratch volume is
    filled (tests change a file there)."""
    # The docker SDK: loaded only by the commands that use it.
    from wicked_dr.portal import scratch
    from wicked_dr.portal.docker_api import connect

    options = options or RunOptions()
    started = time.monotonic()
    repo = open_repository(config)
    client = connect(config.containers.docker_url)
    swept = scratch.sweep(client)
    with locked(repo, exclusive=False, operation=kind, wait_s=options.lock_wait_s,
                expiry_s=config.repository.lock_expiry_s, cancel=options.cancel):
        snapshot = resolve(repo, snapshot_ref)
        # verify.image is the file tree's probe's: needed only when the snapshot holds a
        # tree (a wicked_db-only snapshot has none). The database probes check
        # verify.postgres_image themselves.
        if _holds_tree(snapshot, config):
            scratch.ensure_image(client, config.verify.image, config.verify.pull)
        with scratch.ScratchRun(client, kind) as run:
            bench = _bench(config, run, options, before_check)
            probes = _probe_all(repo, config, snapshot, bench, options)
        record = VerificationRecord(snapshot.id, _now(), tuple(probes),
                                    round(time.monotonic() - started, 3), __version__, kind)
        save_verification(repo, record)
    result = VerifyResult(snapshot.id, record.ok, record.duration_s,
                          [p.to_json() for p in probes], swept)
    log.info("verification done", snapshot=snapshot.id, ok=record.ok)
    if not record.ok:
        raise VerifyFailed(result)
    return result


def _holds_tree(snapshot: Snapshot, config: Config) -> bool:
    return any(source_named(name, config).kind == "tree" for name in snapshot.sources)


def _bench(config: Config, run: Any, options: RunOptions,
           before_check: Callable[[str], None] | None) -> ProbeBench:
    restore = config.restore
    owner = (restore.owner_uid, restore.owner_gid)
    return ProbeBench(scratch=run, image=config.verify.image,
                      postgres_image=config.verify.postgres_image,
                      owner=owner,
                      spool_dir=local_state(config).restore_scratch(),
                      timeout_s=float(config.verify.timeout_s), cancel=options.cancel,
                      memory_mib=config.verify.scratch_memory_mib,
                      before_check=before_check, pull=config.verify.pull,
                      smoke=_smoke(config, owner))


def _smoke(config: Config, owner: tuple[int, int]) -> SmokeSettings | None:
    """The smoke probe's settings (``verify.smoke_*``); None when ``smoke_image`` is unset.
    The static configuration is read here, once: a directory that is not there is a
    configuration error, not a verdict on the snapshot."""
    verify = config.verify
    if not verify.smoke_image:
        return None
    if verify.smoke_static_dir is None or not verify.smoke_static_dir.is_dir():
        raise ConfigError([f"verify.smoke_static_dir ({verify.smoke_static_dir}) is not a "
                          "directory; the smoke probe needs wicked's static configuration"])
    environment = dict(verify.smoke_environment)
    if verify.smoke_aeskey is not None:
        environment["PORTAL_API_AESKEY"] = verify.smoke_aeskey.get_secret_value()
    return SmokeSettings(verify.smoke_image, _static_tar(verify.smoke_static_dir, owner),
                         tuple(verify.smoke_command), verify.smoke_user, verify.smoke_port,
                         float(verify.smoke_timeout_s), environment,
                         tuple(verify.smoke_writable_dirs))


def _static_tar(root: Path, owner: tuple[int, int]) -> bytes:
    """wicked's static configuration as a tar, every entry owned by ``owner``."""
    def own(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid = owner
        info.uname = info.gname = ""
        return info

    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w") as tar:
            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name, filter=own)
    except OSError as exc:
        raise ConfigError([f"verify.smoke_static_dir ({root}) cannot be read: "
                          f"{exc.strerror}"]) from None
    return out.getvalue()


def _probe_all(repo: Repository, config: Config, snapshot: Snapshot, bench: ProbeBench,
               options: RunOptions) -> list[ProbeResult]:
    """Each source of the snapshot that has a probe, in the snapshot's order."""
    reader = snapshot_reader(repo, config, snapshot, options)
    probes = []
    for name, record in snapshot.sources.items():
        source = source_named(name, config)
        if isinstance(source, ProbedSource):
            options.cancel.check()
            probes.extend(_probe(source, reader, record, bench))
        else:
            log.info("source has no probe; not verified in containers", source=name)
    return probes


def _probe(source: ProbedSource, reader: TreeReader, record: SourceRecord,
           bench: ProbeBench) -> list[ProbeResult]:
    """The source's probes; data the repository cannot give back (a damaged pack found while
    filling the scratch volume) fails the probe, it does not end the verification. Docker
    or I/O trouble does: then nothing was proven either way, and no record is written."""
    started = time.monotonic()
    try:
        return source.probe(reader, record, bench)
    except IntegrityError as exc:
        return [ProbeResult(source.name, (exc.one_line(),),
                            duration_s=round(time.monotonic() - started, 3))]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
