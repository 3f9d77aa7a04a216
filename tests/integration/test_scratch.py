"""The product's scratch containers (wicked_dr.portal.scratch) on the real Docker engine.

Every container the module creates is inspected for its lock-down, the network isolation is
checked from inside against a positive control with host networking, and no container or
volume may outlive its run, whatever ends it; a run killed with SIGKILL is swept at the next
start, while a live owner's resources are left alone.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.models.containers
import pytest

import wicked_dr
from tests.fixtures.images import ImageBuilder, owner_labels, scratch_name, tar_of
from wicked_dr.cancel import CancelToken
from wicked_dr.errors import DockerError, Interrupted
from wicked_dr.portal import scratch
from wicked_dr.portal.scratch import ScratchRun, ensure_image, owner_gone, sweep

pytestmark = pytest.mark.integration

REPO_ROOT = Path(wicked_dr.__file__).resolve().parents[1]
# Waits until /sync/go exists: the test decides when the command ends, no sleep involved.
WAIT_FOR_GO = ("import os, time\n"
               "while not os.path.exists('/sync/go'):\n"
               "    time.sleep(0.01)\n"
               "print('released')\n")


@pytest.fixture(scope="module")
def base_image(image_builder: ImageBuilder) -> str:
    return image_builder.base()


def _resources(client: docker.DockerClient, run_id: str) -> list[str]:
    """Names of the containers and volumes of scratch run ``run_id`` that still exist."""
    selector = {"label": f"{scratch.LABEL_RUN}={run_id}"}
    containers = client.containers.list(all=True, filters=selector)
    volumes = client.volumes.list(filters=selector)
    return [c.name for c in containers] + [v.name for v in volumes]


def _until(what: str, probe: Callable[[], Any], timeout_s: float = 30) -> Any:
    """Poll ``probe`` until it returns something true; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def _running(client: docker.DockerClient, run_id: str, part: str) -> list[Any]:
    """Running containers of ``run_id`` whose name contains ``part``."""
    found = client.containers.list(filters={"label": f"{scratch.LABEL_RUN}={run_id}",
                                            "status": "running"})
    return [c for c in found if part in c.name]


def _assert_hardened(attrs: dict[str, Any]) -> None:
    """The lock-down every scratch container must have, read from ``docker inspect``."""
    name, host = attrs["Name"], attrs["HostConfig"]
    assert host["NetworkMode"] == "none", name
    assert "ALL" in host["CapDrop"], name
    assert host["ReadonlyRootfs"] is True, name
    assert host["Memory"] > 0, name
    assert host["PidsLimit"] and host["PidsLimit"] > 0, name
    assert "no-new-privileges" in (host["SecurityOpt"] or []), name
    assert not host.get("Binds"), name
    assert all(m["Type"] in ("volume", "tmpfs") for m in host.get("Mounts") or []), name
    assert all(m["Type"] in ("volume", "tmpfs") for m in attrs.get("Mounts") or []), name
    assert attrs["Config"]["Labels"][scratch.LABEL_SCRATCH] == "1", name
    assert attrs["Config"]["Labels"][scratch.LABEL_PID] == str(os.getpid()), name


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``docker inspect`` of every container created during the test, taken at creation."""
    seen: list[dict[str, Any]] = []
    original = docker.models.containers.ContainerCollection.create

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        container = original(self, *args, **kwargs)
        seen.append(self.client.api.inspect_container(container.id))
        return container

    monkeypatch.setattr(docker.models.containers.ContainerCollection, "create", spy)
    return seen


def test_every_scratch_container_is_locked_down(
    docker_client: docker.DockerClient, base_image: str, created: list[dict[str, Any]]
) -> None:
    """fill, run and service containers: no network, read-only root, no capabilities, no new
    privileges, memory and pids limits, volumes and tmpfs only; inspected at creation and,
    for run and service, again while they run."""
    with ScratchRun(docker_client, "lockdown") as run:
        sync = run.volume("sync")
        run.fill(sync, tar_of({"ready": b"1"}), base_image, mount="/sync")
        service = run.service(base_image, mounts={sync: "/sync"})
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.append(run.run(
            base_image, ["python3", "-c", WAIT_FOR_GO], {sync: "/sync"}, timeout_s=30)))
        worker.start()
        try:
            [running] = _until("the run container", lambda: _running(docker_client,
                                                                     run.run_id, "-run-"))
            live = [docker_client.api.inspect_container(running.id),
                    docker_client.api.inspect_container(service.id)]
        finally:
            service.exec(["touch", "/sync/go"])
            worker.join(30)
        assert results and results[0].exit_code == 0, results
        assert results[0].stdout == "released\n"
    names = sorted(attrs["Name"].rsplit("-", 2)[-2] for attrs in created)
    assert names == ["fill", "run", "service"]
    for attrs in [*created, *live]:
        _assert_hardened(attrs)
    assert all(attrs["State"]["Running"] for attrs in live)
    assert _resources(docker_client, run.run_id) == []


def test_scratch_container_sees_only_loopback(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """Inside a scratch container /sys/class/net is just lo; the same command with host
    networking (the positive control, created directly) sees more, so the check can fail."""
    with ScratchRun(docker_client, "net") as run:
        result = run.run(base_image, ["ls", "/sys/class/net"], timeout_s=30)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["lo"]
    control = docker_client.containers.run(
        base_image, ["ls", "/sys/class/net"], name=scratch_name("hostnet"),
        labels=owner_labels(), network_mode="host", remove=True)
    assert set(control.decode().split()) - {"lo"}


def test_filled_volume_is_read_back_by_a_command(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """A tar streamed into a volume is what a command in another container reads back; exit
    code and stdout carry the result, stderr apart."""
    payload = os.urandom(100_000)
    reader = ("import hashlib, sys\n"
              "data = open('/data/deep/blob.bin', 'rb').read()\n"
              "print(hashlib.sha256(data).hexdigest())\n"
              "print('to stderr', file=sys.stderr)\n"
              "sys.exit(7)\n")
    with ScratchRun(docker_client, "fill") as run:
        volume = run.volume("data")
        run.fill(volume, tar_of({"deep/blob.bin": payload}), base_image)
        result = run.run(base_image, ["python3", "-c", reader], {volume: "/data"},
                         user="65534:65534", timeout_s=30)
    assert result.exit_code == 7, result.stderr
    assert result.stdout.strip() == hashlib.sha256(payload).hexdigest()
    assert result.stderr.strip() == "to stderr"
    assert result.duration_s > 0


def _cancel_when_running(client: docker.DockerClient, run: ScratchRun,
                         token: CancelToken) -> threading.Thread:
    def target() -> None:
        _until("the container to cancel", lambda: _running(client, run.run_id, "-run-"))
        token.cancel("test")
    thread = threading.Thread(target=target)
    thread.start()
    return thread


@pytest.mark.parametrize("ending", ["success", "failing command", "exception", "timeout",
                                    "cancel", "exec timeout"])
def test_nothing_outlives_a_run(
    docker_client: docker.DockerClient, base_image: str, ending: str
) -> None:
    """No container or volume of a run remains, whatever ends it; a timeout or cancel
    removes the container at once and says so in one line."""
    run_id = ""
    error: BaseException | None = None
    try:
        with ScratchRun(docker_client, "cleanup") as run:
            run_id = run.run_id
            volume = run.volume("data")
            service = run.service(base_image, mounts={volume: "/data"})
            if ending == "success":
                assert run.run(base_image, ["true"], {volume: "/data"}, timeout_s=30
                               ).exit_code == 0
            elif ending == "failing command":
                result = run.run(base_image, ["sh", "-c", "echo no >&2; exit 3"],
                                 timeout_s=30)
                assert (result.exit_code, result.stderr) == (3, "no\n")
            elif ending == "exception":
                raise RuntimeError("boom")
            elif ending == "timeout":
                run.run(base_image, ["sleep", "30"], {volume: "/data"}, timeout_s=0.5)
            elif ending == "cancel":
                token = CancelToken()
                helper = _cancel_when_running(docker_client, run, token)
                try:
                    run.run(base_image, ["sleep", "30"], timeout_s=30, cancel=token)
                finally:
                    helper.join(30)
            else:
                service.exec(["sleep", "30"], timeout_s=0.5)
            # Only the service and the volume are left inside the run, never a finished
            # or killed command's container.
            assert sorted(_resources(docker_client, run_id)) == sorted([service.name, volume])
    except (RuntimeError, DockerError, Interrupted) as exc:
        error = exc
        if not isinstance(exc, RuntimeError):
            assert len(_resources(docker_client, run_id)) <= 2
    assert _resources(docker_client, run_id) == []
    if ending in ("success", "failing command"):
        assert error is None
    elif ending == "exception":
        assert str(error) == "boom"
    elif ending == "cancel":
        assert isinstance(error, Interrupted)
        assert "killed and removed" in str(error)
    else:
        assert isinstance(error, DockerError)
        assert "ran longer than 0.5s" in str(error)
        assert error.one_line() == str(error)


CHILD = """
import sys
import docker
from wicked_dr.portal.scratch import ScratchRun
run = ScratchRun(docker.from_env(), "killed")
volume = run.volume("data")
run.service(sys.argv[1], mounts={volume: "/data"})
print(run.run_id, flush=True)
sys.stdin.read()  # blocks until killed
"""


@pytest.fixture
def killed_owner(base_image: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process owning a scratch run with a volume and a running container."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, base_image], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()  # the readiness signal
        if not run_id:
            child.kill()
            pytest.fail(f"the owner child did not start: {child.communicate()[1]}")
        yield child, run_id
    finally:
        child.kill()
        child.communicate()


def test_sweep_removes_a_killed_owners_leftovers_only(
    docker_client: docker.DockerClient, base_image: str,
    killed_owner: tuple[subprocess.Popen[str], str]
) -> None:
    """After SIGKILL the child's container and volume remain; ``sweep`` removes them and
    leaves a live owner's (this process's) run alone."""
    child, dead_run = killed_owner
    with ScratchRun(docker_client, "live") as live:
        volume = live.volume("data")
        service = live.service(base_image, mounts={volume: "/data"})
        live_names = sorted([volume, service.name])
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        assert len(_resources(docker_client, dead_run)) == 2  # nothing removed them yet
        assert sweep(docker_client) >= 2
        assert _resources(docker_client, dead_run) == []
        assert sorted(_resources(docker_client, live.run_id)) == live_names
        assert service.exec(["true"]).exit_code == 0
        sweep(docker_client)  # a second sweep still leaves the live run alone
        assert sorted(_resources(docker_client, live.run_id)) == live_names
    assert _resources(docker_client, live.run_id) == []


def test_owner_is_gone_only_when_provably_so() -> None:
    """A recycled pid (same pid, other start time) is gone; another host or pid namespace
    is never judged; this process is alive."""
    mine = scratch.owner_labels()
    assert not owner_gone(mine)
    assert owner_gone({**mine, scratch.LABEL_START: str(int(mine[scratch.LABEL_START]) + 1)})
    assert owner_gone({**mine, scratch.LABEL_BOOT: "another-boot"})
    assert not owner_gone({**mine, scratch.LABEL_START: "1",
                           scratch.LABEL_HOST: socket.gethostname() + "-other"})
    assert not owner_gone({**mine, scratch.LABEL_START: "1",
                           scratch.LABEL_PIDNS: "pid:[1]"})
    assert not owner_gone({})


def test_ensure_image_names_a_missing_image_in_one_line(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """A missing image with pull=never is a one-line DockerError naming it and how to get
    it; a present image passes; running a missing image is a one-line error too."""
    ensure_image(docker_client, base_image, "never")
    missing = "wicked-dr-test/never-built:nope"
    with pytest.raises(DockerError) as caught:
        ensure_image(docker_client, missing, "never")
    message = str(caught.value)
    assert missing in message and "docker load" in message and "verify.image" in message
    assert caught.value.one_line() == message and caught.value.exit_code == 1
    with ScratchRun(docker_client, "noimage") as run, pytest.raises(DockerError) as failed:
        run.run(missing, ["true"], timeout_s=5)
    assert missing in str(failed.value) and "\n" not in str(failed.value)
    assert _resources(docker_client, run.run_id) == []
