"""The smoke probe of ``verify``: portal-api started on the restored volume answers /ping.

No registry is reachable and wicked's real portal-api image (node, 200 MB of npm modules)
is not built here, so portal-api is played by a *stand-in*: the locally built ``base``
image plus a small python3 HTTP server at ``/usr/src/app/bin/api`` that honours the
contract the probe relies on: it reads ``/var/portal-api/dynamic/meta.json`` and
``/var/portal-api/static/globals.json`` at start and exits non-zero when either does not
parse, rewrites ``meta.json`` as portal-api does (so the volume's root must be writable by
uid 888), writes ``swagger.json`` into its image's root-owned ``routes/internal_apis/ping``
as portal-api does (``verify.smoke_writable_dirs``), and answers ``GET /ping`` with
``{"message": "OK", "version": "stand-in"}`` on 3001. Everything runs on the real engine;
nothing sleeps to synchronise."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.fixtures.images import ImageBuilder, owner_labels, scratch_name
from tests.fixtures.repos import Setup, verify_setup
from wicked_dr.actions.verify import VerifyFailed, VerifyResult, run_verify
from wicked_dr.config import load_config
from wicked_dr.portal import scratch

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_scratch_leftovers")]

STAND_IN = r'''
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
dynamic, static = "/var/portal-api/dynamic", "/var/portal-api/static"
print(f"stand-in portal-api starting as uid {os.getuid()}", flush=True)
try:
    with open(f"{dynamic}/meta.json") as f:
        meta = json.load(f)
    with open(f"{static}/globals.json") as f:
        json.load(f)
except (OSError, ValueError) as exc:
    print(f"stand-in portal-api cannot start: {exc}", flush=True)
    sys.exit(2)
with open(f"{dynamic}/meta.json.tmp", "w") as f:  # portal-api rewrites meta.json
    json.dump(meta, f)
os.replace(f"{dynamic}/meta.json.tmp", f"{dynamic}/meta.json")
# portal-api writes swagger.json files into its image at start (routes/internal_apis).
with open("/usr/src/app/routes/internal_apis/ping/swagger.json", "w") as f:
    json.dump({"swagger": "2.0"}, f)

class Ping(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"message": "OK", "version": "stand-in"}).encode()
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "3001"))), Ping).serve_forever()
'''


@pytest.fixture(scope="module")
def stand_in_image(docker_client: docker.DockerClient, image_builder: ImageBuilder) -> str:
    """``base`` plus the stand-in server at /usr/src/app/bin/api (working dir /usr/src/app)."""
    base = image_builder.base()
    tag = base.replace("/base:", "/portal-api-stand-in:")
    tag = f"{tag}-{hashlib.sha256(STAND_IN.encode()).hexdigest()[:8]}"
    try:
        docker_client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        script = STAND_IN.encode()
        info = tarfile.TarInfo("usr/src/app/bin/api")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
        for name in ("usr/src/app/routes/internal_apis", "usr/src/app/routes/internal_apis/ping"):
            directory = tarfile.TarInfo(name)  # root-owned, as wicked's image has it
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
        swagger = b"swagger: '2.0'\n"
        info = tarfile.TarInfo("usr/src/app/routes/internal_apis/ping/swagger.yaml")
        info.size, info.mode = len(swagger), 0o644
        tar.addfile(info, io.BytesIO(swagger))
    container = docker_client.containers.create(base, ["true"], name=scratch_name("commit"),
                                                labels=owner_labels(), network_mode="none")
    try:
        assert container.put_archive("/", data.getvalue())
        repository, _, version = tag.rpartition(":")
        container.commit(repository=repository, tag=version,
                         changes=["WORKDIR /usr/src/app", 'CMD ["python3", "bin/api"]'])
    finally:
        container.remove(force=True)
    return tag


def _static(root: Path, *, globals_json: bool = True) -> Path:
    root.mkdir()
    if globals_json:
        (root / "globals.json").write_text(json.dumps({"storage": {"type": "json"}}))
    (root / "apis").mkdir()
    (root / "apis" / "apis.json").write_text('{"apis": []}')
    return root


@pytest.fixture
def setup(tmp_path: Path, image_builder: ImageBuilder) -> Setup:
    """One snapshot of a small sample volume; verify runs the ``base`` image, never pulls."""
    return verify_setup(tmp_path, image_builder.base(), users=5, seed=3)


def _configure(s: Setup, image: str, static: Path, timeout_s: int = 30) -> None:
    doc = yaml.safe_load(s.config_path.read_text())
    doc["verify"].update({"smoke_image": image, "smoke_static_dir": str(static),
                          "smoke_command": ["python3", "bin/api"],
                          "smoke_timeout_s": timeout_s, "smoke_aeskey": "not-a-real-key"})
    s.config_path.write_text(yaml.safe_dump(doc))


def _verify(s: Setup) -> VerifyResult:
    try:
        return run_verify(load_config(s.config_path), "latest")
    except VerifyFailed as exc:
        return exc.result




def test_smoke_probe_passes_and_is_recorded(setup: Setup, stand_in_image: str,
                                            tmp_path: Path) -> None:
    _configure(setup, stand_in_image, _static(tmp_path / "static"))
    result = _verify(setup)
    assert result.ok, result.problems
    probes = {p["name"]: p for p in result.probes}
    assert list(probes) == ["volume", "smoke"]
    assert probes["smoke"]["ok"] and probes["smoke"]["figures"]["ping_rounds"] >= 1
    assert "not-a-real-key" not in json.dumps(result.probes)


def test_portal_api_that_cannot_start_fails_the_smoke_probe(setup: Setup,
                                                            stand_in_image: str,
                                                            tmp_path: Path) -> None:
    """The static configuration lacks globals.json: the stand-in exits at start; the
    problem names /ping, the exit and the service's own words, at once (no full timeout)."""
    _configure(setup, stand_in_image, _static(tmp_path / "static", globals_json=False),
               timeout_s=120)
    result = _verify(setup)
    assert not result.ok
    probes = {p["name"]: p for p in result.probes}
    assert probes["volume"]["ok"]
    (problem,) = probes["smoke"]["problems"]
    print(f"\n{problem}")
    assert "did not answer /ping" in problem and "exit code 2" in problem
    assert "globals.json" in problem
    assert probes["smoke"]["duration_s"] < 60


def test_smoke_probe_is_off_by_default(setup: Setup) -> None:
    assert load_config(setup.config_path).verify.smoke_image is None
    result = _verify(setup)
    assert result.ok and [p["name"] for p in result.probes] == ["volume"]


def test_ping_container_shares_only_the_services_loopback(
        setup: Setup, stand_in_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller joins the service's network namespace (whose network is none) and keeps
    every other hardening; the service runs as 888 with the static volume read-only."""
    created: list[dict[str, Any]] = []
    original = scratch.ScratchRun._create

    def recording(self: scratch.ScratchRun, *args: Any, **kwargs: Any) -> Any:
        container = original(self, *args, **kwargs)
        created.append(container.attrs)
        return container

    monkeypatch.setattr(scratch.ScratchRun, "_create", recording)
    _configure(setup, stand_in_image, _static(tmp_path / "static"))
    assert _verify(setup).ok

    (service,) = [a for a in created if "-service-" in a["Name"]]
    assert service["Config"]["Image"] == stand_in_image
    pollers = [a for a in created if a["HostConfig"]["NetworkMode"].startswith("container:")]
    assert pollers and all(a["HostConfig"]["NetworkMode"] == f"container:{service['Id']}"
                           for a in pollers)
    assert service["HostConfig"]["NetworkMode"] == "none"
    assert service["Config"]["User"] == "888:888"
    assert "PORTAL_API_AESKEY=not-a-real-key" in service["Config"]["Env"]
    mounts = {m["Target"]: m for m in service["HostConfig"]["Mounts"]}
    assert mounts["/var/portal-api/static"]["ReadOnly"] is True
    assert not mounts["/var/portal-api/dynamic"].get("ReadOnly", False)
    assert not mounts["/usr/src/app/routes/internal_apis"].get("ReadOnly", False)
    for attrs in [service, *pollers]:
        host = attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert not host.get("Binds") and not host.get("PortBindings")
        assert all(m["Type"] == "volume" for m in host.get("Mounts") or [])
