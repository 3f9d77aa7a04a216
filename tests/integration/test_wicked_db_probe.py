"""The wicked_db probe (wicked_dr/sources/wicked_db_probe.py) on the real Docker engine.

A real snapshot of wicked's schema (tests/fixtures/wicked_schema.sql on the loopback
PostgreSQL fixture, filled by tests/fixtures/wicked_pg.py, backed up by ``run_backup`` with
no volume) is probed in a scratch PostgreSQL server of the locally built ``postgres`` image
(Debian bookworm, postgresql-15): the source's ``probe`` is called with a real
``ScratchRun`` and the snapshot's real reader. Broken relations are made in the source
database the way only a superuser can (``session_replication_role = replica`` skips the
foreign keys), so the backup holds them and the probe must find them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import yaml

from tests.fixtures import wicked_pg
from tests.fixtures.images import ImageBuilder
from tests.fixtures.repos import cli
from wicked_dr.actions.backup import run_backup
from wicked_dr.actions.common import open_repository, snapshot_reader
from wicked_dr.config import Config, load_config
from wicked_dr.engine.catalog import resolve
from wicked_dr.portal.scratch import ScratchRun
from wicked_dr.repository.verification import ProbeResult, Status, load_verification
from wicked_dr.sources.base import ProbeBench
from wicked_dr.sources.wicked_db import WickedDbSource

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_scratch_leftovers")]

Change = Callable[[psycopg.Connection[Any]], None]


@pytest.fixture(scope="module")
def postgres_image(image_builder: ImageBuilder) -> str:
    return image_builder.postgres()


def _config_doc(tmp: Path, dsn: str, image: str) -> dict[str, Any]:
    return {"state_dir": str(tmp / "state"), "repository": {"url": str(tmp / "repo")},
            "volume": {"path": None}, "wicked_db": {"dsn": dsn},
            # verify.image is the volume probe's: absent on purpose, never needed here.
            "verify": {"image": "wicked-dr-test/absent:never", "postgres_image": image,
                       "pull": "never", "timeout_s": 120},
            "log": {"level": "warning", "format": "json"}}


def _snapshot(tmp: Path, dsn: str, image: str, change: Change | None = None) -> Config:
    """wicked's schema in ``dsn``, filled, changed by ``change``, backed up; the config."""
    wicked_pg.create_schema(dsn)
    wicked_pg.populate(dsn, tmp)
    if change is not None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            change(conn)
    (tmp / "config.yaml").write_text(yaml.safe_dump(_config_doc(tmp, dsn, image)))
    config = load_config(tmp / "config.yaml", {})
    run_backup(config)
    return config


def _probe(docker_client: docker.DockerClient, config: Config, tmp: Path) -> ProbeResult:
    repo = open_repository(config)
    snapshot = resolve(repo, "latest")
    assert set(snapshot.sources) == {"wicked_db"}
    reader = snapshot_reader(repo, config, snapshot)
    spool = tmp / "spool"
    spool.mkdir()
    with ScratchRun(docker_client, "verify") as run:
        bench = ProbeBench(scratch=run, image=config.verify.image,
                           postgres_image=config.verify.postgres_image,
                           owner=(config.restore.owner_uid, config.restore.owner_gid),
                           spool_dir=spool, timeout_s=float(config.verify.timeout_s),
                           pull=config.verify.pull)
        (result,) = WickedDbSource(config.wicked_db).probe(
            reader, snapshot.source("wicked_db"), bench)
    print(f"\n{result.to_json()}")
    return result


def _first_app(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT id FROM wicked.applications ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])




def test_probe_good_snapshot_loads_reads_back_and_passes(
        docker_client: docker.DockerClient, pg_database: str, postgres_image: str,
        tmp_path: Path) -> None:
    config = _snapshot(tmp_path, pg_database, postgres_image)
    with psycopg.connect(pg_database) as conn:
        rows = {t: len(r) for t, r in wicked_pg.dump_rows(conn).items()}

    result = _probe(docker_client, config, tmp_path)

    assert result.ok, result.problems
    assert result.name == "wicked_db"
    assert result.figures["tables"] == len(rows) == 14
    assert result.figures["rows"] == sum(rows.values())
    assert {t: int(result.figures[f"rows_{t}"]) for t in rows} == rows
    assert result.figures["model_checks"] == 11
    assert result.figures["server_start_s"] > 0 and result.figures["load_s"] > 0
    assert not [w for w in result.warnings if "access_tokens" in w]


def _orphan_owner(conn: psycopg.Connection[Any]) -> None:
    """An owner row whose user does not exist: only with the foreign keys off."""
    app = _first_app(conn)
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("INSERT INTO wicked.owners (id, users_id, applications_id, data) "
                     "VALUES (%s, 'ghost-user', %s, '{}')", (f"{app}:ghost-user", app))
        conn.execute("INSERT INTO wicked.approvals (id, subscriptions_id, data) "
                     "VALUES ('approval-ghost', 'no-such-subscription', '{}')")


def test_probe_broken_relations_fail_naming_table_and_ids(
        docker_client: docker.DockerClient, pg_database: str, postgres_image: str,
        tmp_path: Path) -> None:
    config = _snapshot(tmp_path, pg_database, postgres_image, _orphan_owner)

    result = _probe(docker_client, config, tmp_path)

    assert not result.ok
    problems = list(result.problems)
    owner = [p for p in problems if p.startswith("table owners: 1 owner rows whose user")]
    assert len(owner) == 1 and "(users_id ghost-user)" in owner[0], problems
    approval = [p for p in problems if p.startswith("table approvals: 1 approvals whose")]
    assert approval == ["table approvals: 1 approvals whose subscription does not exist: "
                        "approval-ghost (subscriptions_id no-such-subscription)"], problems
    # ...and the restore's load itself fails on the foreign keys, naming a table.
    load = [p for p in problems if "does not load into the scratch server" in p]
    assert len(load) == 1 and "violates foreign key constraint" in load[0], problems
    assert "ghost-user" not in load[0]  # the key's value stays out of the load's message


def _untidy(conn: psycopg.Connection[Any]) -> None:
    """What a portal's database may hold without breaking portal-api: an application
    without owners (its owner rows gone), a token of a deleted user, a grant of a deleted
    application."""
    app = _first_app(conn)
    conn.execute("DELETE FROM wicked.owners WHERE applications_id = %s", (app,))
    conn.execute("INSERT INTO wicked.access_tokens (id, access_token, users_id, expires, "
                 "data) VALUES ('tok-gone', 'at-gone', 'gone-user', 1900000000, '{}')")
    user = conn.execute("SELECT id FROM wicked.users ORDER BY id LIMIT 1").fetchone()
    assert user is not None
    conn.execute("INSERT INTO wicked.grants (id, users_id, api_id, application_id, data) "
                 "VALUES ('grant-gone', %s, 'petstore', 'gone-app', '[]')", (user[0],))


def test_probe_untidiness_warns_and_passes(
        docker_client: docker.DockerClient, pg_database: str, postgres_image: str,
        tmp_path: Path) -> None:
    config = _snapshot(tmp_path, pg_database, postgres_image, _untidy)
    with psycopg.connect(pg_database) as conn:
        app = _first_app(conn)

    result = _probe(docker_client, config, tmp_path)

    assert result.ok, result.problems
    warnings = "\n".join(result.warnings)
    assert "table applications:" in warnings and app in warnings
    assert ("table access_tokens: 1 users with access tokens who no longer exist (the "
            "tokens expire): gone-user") in result.warnings
    assert "at-gone" not in warnings and "tok-gone" not in warnings
    assert "table grants: 1 grants for applications that no longer exist: grant-gone " \
           "(application_id gone-app)" in result.warnings


def test_cli_verify_of_a_wicked_db_only_snapshot_records_a_pass(
        pg_database: str, postgres_image: str, tmp_path: Path) -> None:
    """``volume.path: null``: the snapshot holds only wicked_db; ``verify`` probes it (and
    does not need the volume probe's image) and records a passing verification."""
    wicked_pg.create_schema(pg_database)
    wicked_pg.populate(pg_database, tmp_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(_config_doc(tmp_path, pg_database, postgres_image)))
    assert cli(config_path, "init").code == 0
    backup = cli(config_path, "backup", "--json")
    assert backup.code == 0, backup.err

    verified = cli(config_path, "verify", "--json")

    assert verified.code == 0, verified.err
    doc = json.loads(verified.out)
    assert doc["ok"] is True
    assert [p["name"] for p in doc["probes"]] == ["wicked_db"]
    config = load_config(config_path, {})
    repo = open_repository(config)
    snapshot = resolve(repo, "latest")
    record = load_verification(repo, snapshot.id)
    assert record is not None and record.ok and record.status is Status.VERIFIED


def test_verify_and_drill_of_volume_and_wicked_db_run_both_probes(
        pg_database: str, image_builder: ImageBuilder, postgres_image: str,
        tmp_path: Path) -> None:
    """A snapshot holding the volume and wicked_db: both probes run and pass, in verify and
    in the drill (the same path)."""
    from wicked_dr.actions.drill import run_drill
    from wicked_dr.actions.verify import run_verify
    from wicked_dr.testing.sample_volume import generate

    generate(tmp_path / "dynamic", 3)
    wicked_pg.create_schema(pg_database)
    wicked_pg.populate(pg_database, tmp_path)
    doc = _config_doc(tmp_path, pg_database, postgres_image)
    doc["volume"] = {"path": str(tmp_path / "dynamic")}
    doc["verify"]["image"] = image_builder.base()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "config.yaml", {})
    run_backup(config)

    verified = run_verify(config, "latest")
    drilled = run_drill(config)

    for probes in (verified.probes, drilled.report["probes"]):
        assert {p["name"]: p["ok"] for p in probes} == {"volume": True, "wicked_db": True}
