"""The stand-ins of wicked's components honour the contract later tests lean on.

tests/fixtures/portal_standins.py runs them as real containers on host networking (bound
to 127.0.0.1): portal-api validates its volume and is a singleton, the Kong Adapter goes
through ``healthy: 2`` before ``1`` and rebuilds Kong's consumers with new ids at every
start, ``/resync`` answers statistics (404 unless allowed), and every container stops on
SIGTERM at once with exit code 0. No sleeps: every wait polls with a deadline.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.fixtures.kong_data import connect
from tests.fixtures.portal_standins import DeploymentFactory, http_json

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 10  # Docker's default grace period before SIGKILL


def _stop_cleanly(deployment: Any, key: str) -> None:
    container = deployment.container(key)
    container.stop(timeout=STOP_TIMEOUT_S)
    state = deployment.container(key).attrs["State"]
    assert state["ExitCode"] == 0, (key, state, deployment.logs(key))
    assert not state["OOMKilled"]


@pytest.mark.parametrize("layout", ["subdir", "mountpoint"])
def test_start_all_syncs_kong_and_stops_cleanly(portal_deployment: DeploymentFactory,
                                                layout: str) -> None:
    d = portal_deployment(layout)
    assert os.path.ismount(d.volume_path) is (layout == "mountpoint")
    assert (d.volume_path / "meta.json").is_file()
    d.start_all()
    assert all(d.running().values()), d.running()
    (start,) = [e for e in d.events("portal-api") if e["event"] == "start"]
    assert start["users"] == 30 and len(start["meta_sha256"]) == 64
    consumers = d.consumers()
    sync = d.wait_event("kong-adapter", "sync")[0]
    assert consumers and sync["consumers"] == len(consumers) and sync["deleted"] == 0
    assert all(c["credential_id"] and c["username"].count("$") == 1 for c in consumers)
    overrides = d.config_overrides()
    assert overrides["containers"]["kong"] == d.kong_selector
    kong_nodes = d.client.containers.list(filters={"label": d.kong_selector[len("label="):]})
    assert len(kong_nodes) == 2
    for key in ("portal_api", "kong_adapter", "mailer", "chatbot", "kong1", "kong2"):
        _stop_cleanly(d, key)
    assert not any(d.running().values())
    for component in ("portal-api", "kong-adapter", "mailer", "chatbot", "kong1", "kong2"):
        assert [e["event"] for e in d.events(component)][-1] == "stop", component


def test_adapter_goes_through_healthy_2_and_rebuilds_with_new_ids(
        portal_deployment: DeploymentFactory) -> None:
    d = portal_deployment("subdir", generation="3.x")
    d.start_all()
    before = d.consumers()
    with connect(d.kong_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM consumers WHERE ws_id = "
                           "(SELECT id FROM workspaces WHERE name = 'default')").fetchone()
    assert row is not None and row[0] == len(before)
    adapter = d.container("kong_adapter")
    adapter.restart(timeout=STOP_TIMEOUT_S)
    seen = d.wait_kong_adapter()
    healthy = [body["healthy"] for _, body in seen]
    assert healthy[0] == 2 and healthy[-1] == 1 and 0 not in healthy, seen
    after = d.consumers()
    assert [(c["username"], c["client_id"]) for c in after] == \
        [(c["username"], c["client_id"]) for c in before]
    assert not {c["id"] for c in after} & {c["id"] for c in before}
    assert not {c["credential_id"] for c in after} & {c["credential_id"] for c in before}
    syncs = d.wait_event("kong-adapter", "sync", 2)
    assert syncs[-1]["deleted"] == len(before)


def test_adapter_reports_healthy_0_when_portal_api_is_gone(
        portal_deployment: DeploymentFactory) -> None:
    d = portal_deployment("subdir")
    d.start_all()
    d.container("portal_api").stop(timeout=STOP_TIMEOUT_S)
    d.wait_ping("kong_adapter", lambda status, body: status == 503 and body == {"healthy": 0})
    d.container("portal_api").start()
    d.wait_kong_adapter()


def test_resync_answers_statistics(portal_deployment: DeploymentFactory) -> None:
    d = portal_deployment("subdir")
    d.start_all()
    count = len(d.consumers())
    with connect(d.kong_dsn) as conn:
        conn.execute("INSERT INTO consumers (id, username, custom_id) VALUES "
                     "(gen_random_uuid(), 'stranger$petstore', 'not-wicked')")
    status, stats = http_json("POST", d.kong_adapter_url + "/resync")
    assert status == 200, stats
    assert stats["failedComparisons"] == [] and stats["GET"] >= 1
    assert stats["DELETE"] == count + 1 and stats["POST"] == 2 * count
    assert {"method": "POST", "url": "/consumers"}.items() <= stats["actions"][-2].items()
    assert [c["username"] for c in d.consumers()].count("stranger$petstore") == 0
    assert d.wait_event("kong-adapter", "resync")
    assert d.wait_event("kong-adapter", "sync", 2)[-1]["unknown"] == 1


def test_resync_is_404_unless_allowed(portal_deployment: DeploymentFactory) -> None:
    d = portal_deployment("subdir", allow_resync=False)
    d.start_all()
    status, _ = http_json("POST", d.kong_adapter_url + "/resync")
    assert status == 404
    assert not [e for e in d.events("kong-adapter") if e["event"] == "resync"]


def test_second_portal_api_is_refused(portal_deployment: DeploymentFactory) -> None:
    d = portal_deployment("mountpoint")
    d.container("portal_api").start()
    d.wait_portal_api()
    second = d.create_portal_api()
    second.start()
    assert second.wait(timeout=30)["StatusCode"] == 3
    refused = [e for e in d.events("portal-api") if e["event"] == "refused"]
    assert len(refused) == 1 and "instance lock" in refused[0]["reason"]
    assert [e["event"] for e in d.events("portal-api")].count("start") == 1
    assert http_json("GET", d.portal_api_url + "/ping")[0] == 200


def test_portal_api_deletes_locks_but_not_hidden_entries(
        portal_deployment: DeploymentFactory) -> None:
    d = portal_deployment("subdir")
    (d.volume_path / "global.lock").write_text("")
    (d.volume_path / "users" / "_index.json.lock").write_text("")
    hidden = d.volume_path / ".wicked-dr-staging"
    hidden.mkdir()
    (hidden / "x.lock").write_text("")
    d.container("portal_api").start()
    d.wait_portal_api()
    assert not (d.volume_path / "global.lock").exists()
    assert not (d.volume_path / "users" / "_index.json.lock").exists()
    assert (hidden / "x.lock").exists()
    (validated,) = [e for e in d.events("portal-api") if e["event"] == "validated"]
    assert sorted(validated["locks_deleted"]) == ["global.lock", "users/_index.json.lock"]


@pytest.mark.parametrize("damage", ["broken-json", "knob"])
def test_invalid_volume_keeps_portal_api_unhealthy(portal_deployment: DeploymentFactory,
                                                   damage: str) -> None:
    d = portal_deployment("subdir")
    if damage == "broken-json":
        (d.volume_path / "applications" / "_index.json").write_text('[{"id": ')
        expected = "applications/_index.json"
    else:
        (d.state_dir / "unhealthy-if").write_text("meta.json\n")
        expected = "unhealthy-if"
    d.container("portal_api").start()
    seen = d.wait_ping("portal_api", lambda status, body: status == 503)
    assert all(status == 503 for status, _ in seen), seen
    # Still unhealthy after it validated: the answer never changes for this process.
    d.wait_event("portal-api", "validated")
    status, body = http_json("GET", d.portal_api_url + "/ping")
    assert status == 503 and body["message"].startswith("invalid dynamic data: ")
    assert expected in body["message"]


@pytest.mark.parametrize("generation", ["0.11", "0.14", "2.x"])
def test_adapter_syncs_every_generation(portal_deployment: DeploymentFactory,
                                        generation: str) -> None:
    d = portal_deployment("subdir", generation=generation, users=10)
    d.container("portal_api").start()
    d.wait_portal_api()
    d.container("kong_adapter").start()
    seen = d.wait_kong_adapter()
    assert [body["healthy"] for _, body in seen] == [2, 1], seen
    consumers = d.consumers()
    assert consumers and all(c["credential_id"] for c in consumers)
    status, stats = http_json("POST", d.kong_adapter_url + "/resync")
    assert status == 200 and stats["DELETE"] == len(consumers), stats
    table = "apis" if generation == "0.11" else "services"
    with connect(d.kong_dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None and 0 < row[0] == len({c["username"].split("$")[1]
                                                  for c in consumers})
