"""Restarting every Kong node, one at a time, on the real Docker engine.

Kong itself cannot run here (no registry, no network), so the "Kong nodes" are stand-ins:
containers of the suite's base image without network that append their start time to
/starts (in the container's own layer, which survives a restart) and then sleep, leaving
cleanly on SIGTERM as Kong does. One of them carries a Docker HEALTHCHECK that passes only
1 s after each start, like a Kong that is still loading its configuration.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.fixtures import kong_data
from tests.fixtures.images import ImageBuilder, owner_labels, scratch_name
from tests.fixtures.repos import backdate
from wicked_dr.actions.backup import run_backup
from wicked_dr.actions.restore import run_restore_tokens
from wicked_dr.config import Config, ContainersConfig
from wicked_dr.errors import DockerError, NotFoundError
from wicked_dr.portal.containers import restart_kong_nodes
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration

ROLE_LABEL = "wicked-dr-test.role"
SETTLE_S = 0.5
NS = 1_000_000_000
# The trap comes first, so a stop request never meets a PID 1 without a SIGTERM handler.
STAND_IN = (
    "trap 'exit 0' TERM; date +%s%N >> /starts; "
    'if [ -n "$FAIL_ON_RESTART" ] && [ "$(wc -l < /starts)" -gt 1 ]; then '
    "echo 'stand-in refuses to start twice' >&2; exit 3; fi; "
    "sleep infinity & wait"
)
# Healthy once the newest start is 1 s old: readiness lags behind "running". A passing check
# appends its time to /passes (the engine's health log keeps only the last five checks).
HEALTHY_AFTER_1S = {
    "test": ["CMD-SHELL", "test $(( $(date +%s%N) - $(tail -n 1 /starts) )) -ge 1000000000 "
             "&& date +%s%N >> /passes"],
    "interval": NS // 5, "timeout": 2 * NS, "retries": 1000, "start_period": 0,
}
# Passes on the first start only: after a restart the node never becomes healthy again.
HEALTHY_FIRST_START_ONLY = {
    "test": ["CMD-SHELL", 'test "$(wc -l < /starts)" -eq 1'],
    "interval": NS // 5, "timeout": 2 * NS, "retries": 1, "start_period": 0,
}

MakeNode = Callable[..., Any]


@pytest.fixture(scope="module")
def base_image(image_builder: ImageBuilder) -> str:
    return image_builder.base()


@pytest.fixture
def group() -> str:
    """A label value unique to the test, so selectors never see another test's nodes."""
    return f"kong-{secrets.token_hex(4)}"


@pytest.fixture
def make_node(docker_client: docker.DockerClient, base_image: str) -> Iterator[MakeNode]:
    """Starts stand-in nodes (harness-labelled, no network); removes every one afterwards."""
    created: list[Any] = []

    def make(name: str, role: str, *, healthcheck: dict[str, Any] | None = None,
             fail_on_restart: bool = False) -> Any:
        container = docker_client.containers.run(
            base_image, ["sh", "-c", STAND_IN], name=name, detach=True, network_mode="none",
            labels={**owner_labels(), ROLE_LABEL: role}, healthcheck=healthcheck,
            environment={"FAIL_ON_RESTART": "1"} if fail_on_restart else {})
        created.append(container)
        _wait_until(lambda: len(_starts(container)) == 1, f"{name} never started")
        container.reload()
        return container

    yield make
    for container in created:
        with suppress(docker.errors.NotFound):
            container.remove(force=True)


def _wait_until(condition: Callable[[], bool], message: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def _starts(container: Any) -> list[int]:
    """The start times (ns) the stand-in recorded; works on stopped containers too."""
    return _times(container, "starts")


def _times(container: Any, name: str) -> list[int]:
    """The ns times in the stand-in's file /<name>, read through the engine."""
    try:
        stream, _ = container.get_archive(f"/{name}")
    except docker.errors.NotFound:
        return []
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        member = archive.extractfile(name)
        assert member is not None
        return [int(line) for line in member.read().split()]


def _state(container: Any) -> dict[str, Any]:
    container.reload()
    state: dict[str, Any] = container.attrs["State"]
    return state


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _ns_time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / NS, UTC)


def _nodes(make_node: MakeNode, group: str, count: int, **special: dict[str, Any]) -> list[Any]:
    """``count`` nodes named <base>-a, -b, ... (sorted order = restart order)."""
    base = scratch_name("kong")
    names = [f"{base}-{chr(ord('a') + i)}" for i in range(count)]
    return [make_node(name, group, **special.get(name[-1], {})) for name in names]


def test_restart_kong_nodes_label_selector_restarts_each_once_in_sequence(
        make_node: MakeNode, group: str) -> None:
    """Every labelled node restarts once, in name order, each only after the one before is
    back (healthy, for the node with a health check); other containers are not touched."""
    nodes = _nodes(make_node, group, 3, a={"healthcheck": HEALTHY_AFTER_1S})
    bystander = make_node(scratch_name("bystander"), f"other-{group}")
    before = {c.name: _state(c)["StartedAt"] for c in [*nodes, bystander]}

    report = restart_kong_nodes(ContainersConfig(kong=f"label={ROLE_LABEL}={group}"),
                                settle_s=SETTLE_S)

    assert [r["name"] for r in report] == [c.name for c in nodes]
    assert [r["restarted"] for r in report] == [True, True, True]
    assert [r["state"] for r in report] == ["healthy", "running", "running"]
    starts = [_state(c)["StartedAt"] for c in nodes]
    for node, row, started in zip(nodes, report, starts, strict=True):
        assert len(_starts(node)) == 2, node.name
        assert started != before[node.name] and row["started_at"] == started
        assert row["id"] == node.short_id
    # Sequential: node i+1 started only after node i was back -- by the nodes' own records
    # (first passing health check, or up for the settle period) and by the reported time.
    second = [_starts(node)[1] for node in nodes]
    first_pass = min(t for t in _times(nodes[0], "passes") if t > second[0])
    assert first_pass - second[0] >= NS
    assert second[1] > first_pass
    assert second[2] - second[1] >= SETTLE_S * NS
    for row, next_started in zip(report, second[1:], strict=False):
        assert _time(row["ready_at"]) < _ns_time(next_started)
    assert report[0]["seconds"] >= 1.0
    assert _state(bystander)["StartedAt"] == before[bystander.name]
    assert len(_starts(bystander)) == 1


def test_restart_kong_nodes_by_name_restarts_only_that_container(
        make_node: MakeNode, group: str) -> None:
    """A plain name selects exactly that container; its labelled siblings keep running."""
    first, second = _nodes(make_node, group, 2)
    untouched = _state(first)["StartedAt"]

    report = restart_kong_nodes(ContainersConfig(kong=second.name), settle_s=SETTLE_S)

    assert [(r["name"], r["restarted"]) for r in report] == [(second.name, True)]
    assert len(_starts(second)) == 2
    assert (_state(first)["StartedAt"], len(_starts(first))) == (untouched, 1)


def test_restart_kong_nodes_stopped_match_left_stopped_and_reported(
        make_node: MakeNode, group: str) -> None:
    """A matching container that is not running is reported, not started; the rest restart."""
    running, stopped = _nodes(make_node, group, 2)
    stopped.stop(timeout=5)

    report = restart_kong_nodes(ContainersConfig(kong=f"label={ROLE_LABEL}={group}"),
                                settle_s=SETTLE_S)

    assert [(r["name"], r["restarted"], r["state"]) for r in report] == [
        (running.name, True, "running"), (stopped.name, False, "exited")]
    assert (_state(stopped)["Status"], len(_starts(stopped))) == ("exited", 1)
    assert len(_starts(running)) == 2


@pytest.mark.parametrize("selector", ["label", "name"])
def test_restart_kong_nodes_selector_matching_nothing_raises_not_found(
        docker_client: docker.DockerClient, selector: str) -> None:
    """A label or a name that matches no container raises NotFoundError naming it."""
    missing = scratch_name("absent")
    kong = f"label={ROLE_LABEL}={missing}" if selector == "label" else missing
    with pytest.raises(NotFoundError, match=missing):
        restart_kong_nodes(ContainersConfig(kong=kong))


def test_restart_kong_nodes_node_exits_after_restart_stops_and_names_it(
        make_node: MakeNode, group: str) -> None:
    """A node that dies on restart stops the round: DockerError names it and the node left
    running; nodes after it are not restarted, nodes before it were."""
    first, broken, last = _nodes(make_node, group, 3, b={"fail_on_restart": True})
    last_started = _state(last)["StartedAt"]

    with pytest.raises(DockerError) as caught:
        restart_kong_nodes(ContainersConfig(kong=f"label={ROLE_LABEL}={group}"),
                           settle_s=SETTLE_S)

    message = caught.value.one_line()
    assert f"Kong node {broken.name} did not come back" in message
    assert "exited with code 3" in message
    assert f"left running without a restart: {last.name}" in message
    assert first.name not in message
    assert len(_starts(first)) == 2
    assert (_state(broken)["Status"], len(_starts(broken))) == ("exited", 2)
    assert (_state(last)["StartedAt"], len(_starts(last))) == (last_started, 1)


def test_restart_kong_nodes_never_healthy_again_times_out_with_docker_error(
        make_node: MakeNode, group: str) -> None:
    """A node that runs but never turns healthy after its restart fails after the bounded
    wait, and the next node is not touched."""
    stuck, after = _nodes(make_node, group, 2, a={"healthcheck": HEALTHY_FIRST_START_ONLY})
    after_started = _state(after)["StartedAt"]
    began = time.monotonic()

    with pytest.raises(DockerError, match=f"{stuck.name} did not come back.*health"):
        restart_kong_nodes(ContainersConfig(kong=f"label={ROLE_LABEL}={group}"), timeout_s=2)

    # The wait is the 2 s asked for, not the default 120 s: at least 2 s, and far below 120 s
    # however loaded the machine (the bound tells the two apart, it times nothing).
    assert 2 <= time.monotonic() - began < 100
    assert len(_starts(stuck)) == 2
    assert (_state(after)["StartedAt"], len(_starts(after))) == (after_started, 1)


# --- through restore --tokens-only ---------------------------------------------------------


def test_restore_tokens_with_kong_configured_restarts_nodes_after_writing(
        tmp_path: Path, pg_database: str, make_node: MakeNode, group: str) -> None:
    """restore --tokens-only restarts every configured Kong node once after a real restore,
    none on a dry run (which keeps the reminder); a failed restart says the tokens are in."""
    volume = tmp_path / "dynamic"
    generate(volume, 20, seed=5, untidy=False)
    backdate(volume)
    subs = kong_data.subscriptions_from_volume(volume)
    tokens = [kong_data.live_token(s.client_id, s.api_id) for s in subs[:5]]
    with kong_data.connect(pg_database) as conn:
        kong_data.load_ddl(conn, "3.x")
        kong_data.sync_like_adapter(conn, "3.x", subs)
        kong_data.add_tokens(conn, "3.x", tokens)
    nodes = _nodes(make_node, group, 2)
    config = Config.model_validate({
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        "volume": {"path": str(volume), "quiesce": "none"},
        "kong_tokens": {"dsn": pg_database},
        "containers": {"kong": f"label={ROLE_LABEL}={group}"}})
    run_backup(config)
    with kong_data.connect(pg_database) as conn:
        kong_data.lose_kong(conn, "3.x")
        kong_data.sync_like_adapter(conn, "3.x", subs)

    dry = run_restore_tokens(config, "latest", dry_run=True).to_json()
    assert "kong_restarts" not in dry and "restart every Kong node" in dry["next_step"]
    assert [len(_starts(n)) for n in nodes] == [1, 1]

    done = run_restore_tokens(config, "latest", dry_run=False).to_json()
    assert done["ok"] and done["tokens"]["restored"] == len(tokens)
    assert "next_step" not in done
    assert [(r["name"], r["restarted"]) for r in done["kong_restarts"]] == [
        (n.name, True) for n in nodes]
    assert [len(_starts(n)) for n in nodes] == [2, 2]

    # Kong gone by now: the error keeps its kind and says the tokens are already in place.
    config.containers.kong = f"label={ROLE_LABEL}=gone-{group}"
    with pytest.raises(NotFoundError, match=r"tokens restored \(0 new\), but restarting Kong"):
        run_restore_tokens(config, "latest", dry_run=False)
