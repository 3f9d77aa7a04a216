"""Kong OAuth2 tokens end to end: ``wicked-dr backup`` with a Kong DSN, a Kong database loss and
adapter rebuild, then ``wicked-dr restore --tokens-only`` as real subprocesses, against the real
PostgreSQL fixture and a local or S3 (moto server) repository."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import kong_data
from tests.fixtures.kong_data import Subscription, TokenSpec
from tests.fixtures.postgres import PgServer
from tests.fixtures.repos import (
    REPO_ROOT,
    Run,
    Setup,
    backdate,
    cli_command,
    make_setup,
    repo_target,
)
from wicked_dr.engine.catalog import load_snapshot
from wicked_dr.testing.sample_volume import generate

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DSN_ENV = "WICKED_DR_KONG_TOKENS__DSN"
# (repository backend, Kong generation): both backends, wicked's Kong and the newest layout.
CASES = [("local", "0.14"), ("s3", "3.x"), ("local", "3.x"), ("s3", "0.14")]


@dataclass
class KongWorld:
    """One test's Kong database (behind a dedicated password) and the tokens in it."""

    generation: str
    dsn: str
    password: str
    subs: list[Subscription]
    gone_client: Subscription
    live: list[TokenSpec]
    expired: list[TokenSpec]

    def expected_back(self) -> list[TokenSpec]:
        """Unexpired tokens whose client the adapter brings back."""
        return [t for t in self.live if t.client_id != self.gone_client.client_id]


def _token(sub: Subscription, api_id: str | None, expires_in_s: int) -> TokenSpec:
    return kong_data.live_token(sub.client_id, api_id, expires_in_s=expires_in_s)


def _kong_world(pg_server: PgServer, dbname: str, generation: str,
                subs: list[Subscription]) -> KongWorld:
    """A Kong database owned by its own role, filled as the adapter and the plugin would."""
    password = f"kong-pw-{uuid.uuid4().hex}"
    role = f"kong_{uuid.uuid4().hex[:8]}"
    pg_server.create_role(role, password)
    with pg_server.connect() as admin:
        admin.execute(f'CREATE DATABASE "{dbname}" OWNER "{role}"')
    dsn = pg_server.dsn(dbname, user=role)
    gone_client = subs[0]
    live = [_token(s, s.api_id, kong_data.REFRESH_TTL_S) for s in subs[:10]]
    live.append(_token(subs[1], None, 7200))  # a bundled API: service_id stays NULL
    expired = [_token(s, s.api_id, -60) for s in subs[2:4]]
    with kong_data.connect(dsn) as conn:
        kong_data.load_ddl(conn, generation)
        kong_data.sync_like_adapter(conn, generation, subs)
        kong_data.add_tokens(conn, generation, [*live, *expired])
    return KongWorld(generation, dsn, password, subs, gone_client, live, expired)


def _lose_and_rebuild(world: KongWorld) -> None:
    """A Kong database loss, then the adapter's full sync with new UUIDs, one client gone."""
    with kong_data.connect(world.dsn) as conn:
        kong_data.lose_kong(conn, world.generation)
        kong_data.sync_like_adapter(conn, world.generation,
                                    [s for s in world.subs if s != world.gone_client])
        assert _count(conn, "oauth2_tokens") == 0


def _count(conn: Any, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0])


def _db_state(dsn: str, generation: str) -> tuple[int, int]:
    """(tokens, ttls rows) -- ttls is 0 on generations without that table."""
    with kong_data.connect(dsn) as conn:
        ttls = _count(conn, "ttls") if generation in ("0.11", "0.14") else 0
        return _count(conn, "oauth2_tokens"), ttls


def _attached(dsn: str) -> dict[str, tuple[str, str | None]]:
    """token id -> (client_id of its credential, name of its service)."""
    with kong_data.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT t.id::text, c.client_id, s.name FROM oauth2_tokens t "
            "JOIN oauth2_credentials c ON c.id = t.credential_id "
            "LEFT JOIN services s ON s.id = t.service_id").fetchall()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def _wdr(setup: Setup, *args: str, dsn: str | None) -> Run:
    """``wicked-dr`` as a real subprocess without a terminal, the DSN only in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICKED_DR_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if dsn is not None:
        env[DSN_ENV] = dsn
    done = subprocess.run(cli_command(setup.config_path, *args), capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def subs(tmp_path_factory: pytest.TempPathFactory) -> list[Subscription]:
    """The approved OAuth2 subscriptions of a generated wicked volume (what Kong mirrors)."""
    root = tmp_path_factory.mktemp("kong-volume")
    generate(root, 30, seed=11, untidy=False)
    found = kong_data.subscriptions_from_volume(root)
    assert len(found) >= 10 and len({s.api_id for s in found}) >= 3
    return found


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    """A database name, dropped after the test."""
    name = f"kong_{uuid.uuid4().hex[:12]}"
    yield name
    pg_server.drop_database(name)


def _setup(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> Setup:
    setup = make_setup(tmp_path, repo_target(request, tmp_path, kind))
    generate(setup.volume, users=30, seed=11, untidy=False)
    backdate(setup.volume)
    return setup


@pytest.mark.parametrize(("kind", "generation"), CASES)
def test_cli_tokens_backup_loss_restore_reattaches_every_unexpired_token(
        request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgServer, database: str,
        subs: list[Subscription], kind: str, generation: str) -> None:
    """backup with a DSN, Kong lost and rebuilt, then restore --tokens-only: dry run and refusal
    write nothing, --yes re-attaches every unexpired token, a second run is a no-op."""
    setup = _setup(request, tmp_path, kind)
    world = _kong_world(pg_server, database, generation, subs)
    with kong_data.connect(world.dsn) as conn:
        # 3.x's insert trigger already deleted the expired rows; count what is still there.
        expired_rows = int(conn.execute("SELECT count(*) FROM oauth2_tokens WHERE id = ANY(%s)",
                                        ([t.id for t in world.expired],)).fetchone()[0])

    run = _wdr(setup, "-v", "backup", "--json", dsn=world.dsn)
    assert run.code == 0, run.err
    assert world.password not in run.out + run.err
    snapshot_id = json.loads(run.out)["snapshot"]
    meta = load_snapshot(setup.repo(), snapshot_id).source("kong_tokens").metadata
    assert (meta["generation"], meta["exported"], meta["skipped_expired"]) == (
        generation, len(world.live), expired_rows)
    # Stream format 3: the tokens and the lookup tables as separate sections.
    assert meta["version"] == 3
    assert meta["sections"]["oauth2_tokens"] == len(world.live)
    assert meta["sections"]["oauth2_credentials"] == len(world.subs)
    assert ("ttls" in meta["sections"]) == (generation == "0.14")
    run = _wdr(setup, "snapshots", "--json", dsn=None)
    assert run.code == 0, run.err
    assert [(r["id"], r["sources"]) for r in json.loads(run.out)] == [
        (snapshot_id, ["kong_tokens", "volume"])]

    _lose_and_rebuild(world)
    expected = world.expected_back()
    lost = len(world.live) - len(expected)
    empty = _db_state(world.dsn, generation)

    run = _wdr(setup, "restore", "latest", "--tokens-only", "--dry-run", "--json", dsn=world.dsn)
    assert run.code == 0, run.err
    dry = json.loads(run.out)
    assert dry["dry_run"] and dry["snapshot"] == snapshot_id
    assert (dry["tokens"]["restored"], dry["tokens"]["skipped_no_client"]) == (len(expected), lost)
    assert _db_state(world.dsn, generation) == empty

    run = _wdr(setup, "restore", "latest", "--tokens-only", "--json", dsn=world.dsn)
    assert run.code == 2, run.err
    assert "--yes" in run.err
    assert _db_state(world.dsn, generation) == empty

    run = _wdr(setup, "restore", "latest", "--tokens-only", "--yes", "--json", dsn=world.dsn)
    assert run.code == 0, run.err
    assert world.password not in run.out + run.err
    first = json.loads(run.out)
    assert first["ok"] and not first["dry_run"]
    tokens = first["tokens"]
    assert (tokens["total"], tokens["restored"], tokens["already_present"],
            tokens["skipped_no_client"], tokens["skipped_no_service"],
            tokens["skipped_expired"]) == (len(world.live), len(expected), 0, lost, 0, 0)
    assert _attached(world.dsn) == {t.id: (t.client_id, t.api_id) for t in expected}
    if generation == "0.14":
        with kong_data.connect(world.dsn) as conn:
            rows = conn.execute("SELECT primary_key_value FROM ttls t JOIN oauth2_tokens o "
                                "ON o.id::text = t.primary_key_value").fetchall()
        assert sorted(r[0] for r in rows) == sorted(t.id for t in expected)
    after_first = _db_state(world.dsn, generation)

    run = _wdr(setup, "restore", "latest", "--tokens-only", "--yes", "--json", dsn=world.dsn)
    assert run.code == 0, run.err
    second = json.loads(run.out)["tokens"]
    assert (second["restored"], second["already_present"], second["ok"]) == (
        0, len(expected), True)
    assert _db_state(world.dsn, generation) == after_first


def test_cli_tokens_only_snapshot_without_tokens_exits_5(
        request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgServer, database: str,
        subs: list[Subscription]) -> None:
    """A snapshot taken without a Kong DSN: restore --tokens-only exits 5, says why, writes
    nothing."""
    setup = _setup(request, tmp_path, "local")
    world = _kong_world(pg_server, database, "3.x", subs)
    run = _wdr(setup, "backup", "--json", dsn=None)
    assert run.code == 0, run.err
    run = _wdr(setup, "snapshots", "--json", dsn=None)
    assert [r["sources"] for r in json.loads(run.out)] == [["volume"]]
    _lose_and_rebuild(world)

    run = _wdr(setup, "restore", "latest", "--tokens-only", "--yes", "--json", dsn=world.dsn)
    assert run.code == 5, run.err
    assert "holds no 'kong_tokens' data" in json.loads(run.out)["error"]
    assert any("kong_tokens.dsn" in line for line in run.err.splitlines())
    assert _db_state(world.dsn, "3.x") == (0, 0)
