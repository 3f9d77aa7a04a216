"""The token probe (wicked_dr/sources/kong_probe.py) on the real Docker engine.

A real snapshot with tokens (a Kong database on the loopback PostgreSQL fixture, backed up by
``run_backup``) is probed in a scratch PostgreSQL server built from the locally built
``postgres`` image (Debian bookworm, postgresql-15, no entrypoint): the token source's
``probe`` is called directly with a real ``ScratchRun`` and the snapshot's real reader, so
the test needs nothing of the volume probe. A section file changed inside the scratch volume
before the check is found and named.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from tests.fixtures import kong_data
from tests.fixtures.images import ImageBuilder, owner_labels, scratch_name
from tests.fixtures.kong_data import Subscription, TokenSpec
from tests.fixtures.postgres import PgServer
from wicked_dr.actions.backup import run_backup
from wicked_dr.actions.common import open_repository, snapshot_reader
from wicked_dr.config import Config, load_config
from wicked_dr.engine.catalog import resolve
from wicked_dr.errors import DockerError
from wicked_dr.portal import scratch
from wicked_dr.portal.scratch import ScratchRun
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources import kong_probe
from wicked_dr.sources.base import ProbeBench
from wicked_dr.sources.kong_tokens import KongTokensSource
from wicked_dr.testing.sample_volume import generate

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_scratch_leftovers")]

# Values that need COPY's escapes and UTF-8 on the way through the scratch server.
AWKWARD_SCOPE = "read\twrite\\admin\nline two ü"


@dataclass
class TokenSnapshot:
    """A repository holding one snapshot with tokens, and the config that made it."""

    config: Config
    generation: str
    tokens: int
    sections: dict[str, int]


@pytest.fixture(scope="module")
def images(image_builder: ImageBuilder) -> tuple[str, str]:
    """(base image with python3, postgres image), built locally."""
    return image_builder.base(), image_builder.postgres()


def _tokens(subs: list[Subscription]) -> list[TokenSpec]:
    now = datetime.now(UTC)
    tokens = []
    for index, sub in enumerate(subs[:12]):
        token_id = str(uuid.uuid4())
        tokens.append(TokenSpec(
            id=token_id, access_token=f"at-{token_id}",
            refresh_token=None if index % 4 == 0 else f"rt-{token_id}", client_id=sub.client_id,
            api_id=None if index == 1 else sub.api_id, created_at=now - timedelta(seconds=60),
            expires_at=now + timedelta(seconds=kong_data.REFRESH_TTL_S),
            scope=AWKWARD_SCOPE if index % 3 == 0 else "read"))
    return tokens


def _snapshot(tmp: Path, pg_server: PgServer, generation: str,
              images: tuple[str, str]) -> TokenSnapshot:
    volume = tmp / "dynamic"
    generate(volume, users=20, seed=5, untidy=False)
    subs = kong_data.subscriptions_from_volume(volume)
    dbname = f"kong_probe_{uuid.uuid4().hex[:10]}"
    dsn = pg_server.create_database(dbname)
    tokens = _tokens(subs)
    with kong_data.connect(dsn) as conn:
        kong_data.load_ddl(conn, generation)
        kong_data.sync_like_adapter(conn, generation, subs)
        kong_data.add_tokens(conn, generation, tokens)
    doc = {"state_dir": str(tmp / "state"), "repository": {"url": str(tmp / "repo")},
           "volume": {"path": str(volume), "quiesce": "wicked-lock"},
           "kong_tokens": {"dsn": dsn},
           "verify": {"image": images[0], "postgres_image": images[1], "pull": "never",
                      "timeout_s": 120},
           "log": {"level": "warning", "format": "json"}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp / "config.yaml", {})
    run_backup(config)
    repo = open_repository(config)
    metadata = resolve(repo, "latest").source("kong_tokens").metadata
    assert metadata["exported"] == len(tokens)
    return TokenSnapshot(config, generation, len(tokens), dict(metadata["sections"]))


@pytest.fixture(scope="module", params=["0.14", "3.x"])
def token_snapshot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   pg_server: PgServer, images: tuple[str, str]) -> TokenSnapshot:
    """A snapshot with tokens of wicked's Kong (0.14: five sections) and of the newest."""
    generation = str(request.param)
    return _snapshot(tmp_path_factory.mktemp(f"kong-{generation}"), pg_server, generation,
                     images)


@pytest.fixture(scope="module")
def wicked_kong_snapshot(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer,
                         images: tuple[str, str]) -> TokenSnapshot:
    """A snapshot with tokens of wicked's Kong (0.14), for the tampering tests."""
    return _snapshot(tmp_path_factory.mktemp("kong-tamper"), pg_server, "0.14", images)


def _probe(docker_client: docker.DockerClient, snap: TokenSnapshot, tmp: Path,
           before_check: Callable[[str], None] | None = None,
           inspect: Callable[[ScratchRun], None] | None = None) -> ProbeResult:
    """The token source's probe with a real scratch run and the snapshot's real reader."""
    config = snap.config
    repo = open_repository(config)
    snapshot = resolve(repo, "latest")
    reader = snapshot_reader(repo, config, snapshot)
    with ScratchRun(docker_client, "verify") as run:
        bench = ProbeBench(scratch=run, image=config.verify.image,
                           postgres_image=config.verify.postgres_image,
                           owner=(config.restore.owner_uid, config.restore.owner_gid),
                           spool_dir=tmp, timeout_s=float(config.verify.timeout_s),
                           before_check=before_check, pull=config.verify.pull)
        (result,) = KongTokensSource(config.kong_tokens).probe(
            reader, snapshot.source("kong_tokens"), bench)
        if inspect is not None:
            inspect(run)
    return result


def _service_inspected(docker_client: docker.DockerClient,
                       found: list[dict[str, Any]]) -> Callable[[ScratchRun], None]:
    def inspect(run: ScratchRun) -> None:
        containers = docker_client.containers.list(
            all=True, filters={"label": f"{scratch.LABEL_RUN}={run.run_id}"})
        found.extend(c.attrs for c in containers)
    return inspect


def test_probe_snapshot_with_tokens_passes_with_row_counts(
        docker_client: docker.DockerClient, token_snapshot: TokenSnapshot,
        tmp_path: Path) -> None:
    """Every section loads into the scratch server and reads back equal: counts and checksum
    match the snapshot's manifest; the server ran with no network and nothing of the host."""
    attrs: list[dict[str, Any]] = []
    result = _probe(docker_client, token_snapshot, tmp_path,
                    inspect=_service_inspected(docker_client, attrs))

    assert result.ok, result.problems
    assert result.name == "kong_tokens"
    assert {k: int(v) for k, v in result.figures.items() if k.startswith("rows_")} == {
        f"rows_{name}": rows for name, rows in token_snapshot.sections.items()}
    assert result.figures["rows_oauth2_tokens"] == token_snapshot.tokens
    assert ("rows_ttls" in result.figures) == (token_snapshot.generation == "0.14")
    assert result.figures["server_start_s"] > 0 and result.figures["load_s"] > 0
    print(f"\n{token_snapshot.generation}: server start {result.figures['server_start_s']}s, "
          f"load {result.figures['load_s']}s, check {result.figures['check_s']}s, "
          f"probe {result.duration_s}s")
    # The PostgreSQL service (the only container still there once the probe is done).
    assert len(attrs) == 1
    host = attrs[0]["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True and "ALL" in host["CapDrop"]
    assert not host.get("Binds")
    assert all(m["Type"] == "volume" for m in attrs[0]["Mounts"])
    assert attrs[0]["Config"]["User"] == "postgres"
    assert attrs[0]["Config"]["Image"] == token_snapshot.config.verify.postgres_image


@pytest.fixture(scope="module")
def official_like_image(docker_client: docker.DockerClient, images: tuple[str, str]) -> str:
    """The postgres image shaped like the official one where it matters to the probe: an
    entrypoint (here one that does not exist: the probe must not use it), a ``VOLUME`` for
    the data directory, and the server binaries off PATH."""
    tag = f"{images[1].replace('/postgres:', '/postgres-official-like:')}"
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        container = docker_client.containers.create(images[1], ["true"],
                                                    name=scratch_name("commit"),
                                                    labels=owner_labels(), network_mode="none")
        try:
            repository, _, version = tag.rpartition(":")
            container.commit(repository=repository, tag=version, changes=[
                'ENTRYPOINT ["docker-entrypoint.sh"]', 'CMD ["postgres"]',
                "VOLUME /var/lib/postgresql/data",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        finally:
            container.remove(force=True)
    return tag


def test_probe_official_like_image_entrypoint_unused_and_no_volume_left(
        docker_client: docker.DockerClient, wicked_kong_snapshot: TokenSnapshot,
        official_like_image: str, tmp_path: Path) -> None:
    """The server binaries are found without PATH and the image's entrypoint is never run;
    the anonymous volume its ``VOLUME`` gives the service goes with the run."""
    snap = TokenSnapshot(wicked_kong_snapshot.config.model_copy(update={
        "verify": wicked_kong_snapshot.config.verify.model_copy(
            update={"postgres_image": official_like_image})}),
        wicked_kong_snapshot.generation, wicked_kong_snapshot.tokens,
        wicked_kong_snapshot.sections)
    attrs: list[dict[str, Any]] = []
    result = _probe(docker_client, snap, tmp_path,
                    inspect=_service_inspected(docker_client, attrs))

    assert result.ok, result.problems
    assert result.figures["rows_oauth2_tokens"] == snap.tokens
    assert attrs[0]["Config"]["Image"] == official_like_image
    anonymous = [m["Name"] for m in attrs[0]["Mounts"]
                 if m["Destination"] == "/var/lib/postgresql/data"]
    assert len(anonymous) == 1
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(anonymous[0])


@pytest.fixture(scope="module")
def no_server_image(docker_client: docker.DockerClient, images: tuple[str, str]) -> str:
    """The base image plus a ``postgres`` user: everything but a PostgreSQL server."""
    tag = images[0].replace("/base:", "/base-postgres-user:")
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        container = docker_client.containers.create(
            images[0], ["sh", "-ec", "echo 'postgres:x:999:999::/tmp:/bin/sh' >> /etc/passwd"],
            name=scratch_name("commit"), labels=owner_labels(), network_mode="none")
        try:
            container.start()
            assert container.wait(timeout=60)["StatusCode"] == 0
            repository, _, version = tag.rpartition(":")
            container.commit(repository=repository, tag=version)
        finally:
            container.remove(force=True)
    return tag


@pytest.mark.parametrize(("image", "reason"), [
    ("base", "unable to find user postgres"),
    ("no-server", "no PostgreSQL server binaries"),
])
def test_probe_image_without_postgres_raises_docker_error_not_a_verdict(
        docker_client: docker.DockerClient, wicked_kong_snapshot: TokenSnapshot,
        images: tuple[str, str], no_server_image: str, tmp_path: Path, image: str,
        reason: str) -> None:
    """An image without a PostgreSQL server (or its user) is the configuration's fault, not
    the snapshot's: a DockerError naming the image and the reason, and no probe result that
    would mark the snapshot failed."""
    tag = images[0] if image == "base" else no_server_image
    snap = TokenSnapshot(wicked_kong_snapshot.config.model_copy(update={
        "verify": wicked_kong_snapshot.config.verify.model_copy(
            update={"postgres_image": tag})}),
        wicked_kong_snapshot.generation, wicked_kong_snapshot.tokens,
        wicked_kong_snapshot.sections)
    with pytest.raises(DockerError) as caught:
        _probe(docker_client, snap, tmp_path)
    message = caught.value.one_line()
    assert tag in message and reason in message and "verify.postgres_image" in message


def test_probe_absent_image_never_pulled_fails_before_reading(
        docker_client: docker.DockerClient, wicked_kong_snapshot: TokenSnapshot,
        tmp_path: Path) -> None:
    """``verify.pull: never`` and an image the engine lacks: a DockerError naming it, before
    anything is read or created."""
    absent = f"wicked-dr-test/absent:{uuid.uuid4().hex[:12]}"
    snap = TokenSnapshot(wicked_kong_snapshot.config.model_copy(update={
        "verify": wicked_kong_snapshot.config.verify.model_copy(
            update={"postgres_image": absent})}),
        wicked_kong_snapshot.generation, wicked_kong_snapshot.tokens,
        wicked_kong_snapshot.sections)
    with pytest.raises(DockerError, match="is never pulled") as caught:
        _probe(docker_client, snap, tmp_path)
    assert absent in caught.value.one_line()
    assert list(tmp_path.iterdir()) == []  # nothing spooled


def _tamper(docker_client: docker.DockerClient, image: str,
            script: str) -> Callable[[str], None]:
    """A ``before_check`` that runs ``script`` on the filled volume (mounted at /v)."""
    def before_check(volume: str) -> None:
        output = docker_client.containers.run(
            image, ["sh", "-ec", script], name=scratch_name("tamper"), labels=owner_labels(),
            network_mode="none", remove=True,
            volumes={volume: {"bind": "/v", "mode": "rw"}})
        assert output is not None
    return before_check


TOKENS_FILE = f"/v/{kong_probe.section_file(0, 'oauth2_tokens')}"


@pytest.mark.parametrize(("script", "expected"), [
    (f"sed -i '$d' {TOKENS_FILE}", "section oauth2_tokens: 11 rows read back, the snapshot "
                                   "holds 12"),
    (f"sed -i '1s/at-/xt-/' {TOKENS_FILE}", "section oauth2_tokens: checksum differs"),
    (f"sed -i '1s/^./z/' {TOKENS_FILE}", "section oauth2_tokens: line 1, column id does not "
                                         "load into the scratch server: invalid input syntax "
                                         'for type uuid: "..."'),
    (f"sed -i '2s/$/\\textra/' {TOKENS_FILE}", "section oauth2_tokens: line 2 does not load "
                                              "into the scratch server: extra data after "
                                              "last expected column"),
], ids=["row-dropped", "value-changed", "unloadable", "extra-column"])
def test_probe_section_changed_in_scratch_volume_fails_naming_it(
        docker_client: docker.DockerClient, wicked_kong_snapshot: TokenSnapshot,
        images: tuple[str, str], tmp_path: Path, script: str, expected: str) -> None:
    """A section file changed after the fill: the rows the server reads back are not the
    snapshot's, and the problem names the section."""
    result = _probe(docker_client, wicked_kong_snapshot, tmp_path,
                    before_check=_tamper(docker_client, images[0], script))

    print(f"\n{result.problems}")
    assert not result.ok
    assert len(result.problems) == 1, result.problems
    assert expected in result.problems[0], result.problems
    assert "at-" not in result.problems[0]  # no token of the rows in the record




def test_verify_of_a_snapshot_with_tokens_runs_both_probes(
        wicked_kong_snapshot: TokenSnapshot) -> None:
    """``verify`` end to end on a snapshot holding the volume and tokens: both probes run,
    both pass, and the token rows read back equal what the snapshot holds."""
    from wicked_dr.actions.verify import run_verify

    result = run_verify(wicked_kong_snapshot.config, "latest")
    assert result.ok
    probes = {p["name"]: p for p in result.probes}
    assert set(probes) == {"volume", "kong_tokens"} and all(p["ok"] for p in probes.values())
    assert probes["kong_tokens"]["figures"]["rows_oauth2_tokens"] == wicked_kong_snapshot.tokens
