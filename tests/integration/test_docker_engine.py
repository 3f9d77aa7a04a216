"""The Docker side of the harness: isolated scratch containers and a checksum that can fail."""

from __future__ import annotations

import contextlib
import hashlib
import os

import docker
import docker.errors
import pytest

from tests.fixtures.images import (
    LABEL_OWNER,
    RUN_ID,
    ImageBuilder,
    owner_labels,
    remove_leftovers,
    run_scratch,
    scratch_name,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_image(image_builder: ImageBuilder) -> str:
    return image_builder.base()


def _tree() -> dict[str, bytes]:
    """A small file tree with nested folders and binary content."""
    return {
        "users/_index.json": b'[{"id": "u1", "email": "a@example.org"}]\n',
        "users/u1.json": b'{"id": "u1", "groups": ["admin"]}\n',
        "applications/deep/nested/blob.bin": os.urandom(4096),
        "meta.json": b'{"dynamicVersion": 3}\n',
    }


def _sha256sums(files: dict[str, bytes]) -> bytes:
    """A SHA256SUMS file in the format ``sha256sum -c`` reads."""
    return "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    ).encode()


def _our_leftovers(client: docker.DockerClient) -> list[str]:
    """Names of this run's harness containers and volumes that still exist."""
    containers = client.containers.list(all=True, filters={"label": LABEL_OWNER})
    volumes = client.volumes.list(filters={"label": LABEL_OWNER})
    names = [c.name for c in containers] + [v.name for v in volumes]
    return [name for name in names if RUN_ID in name]


def test_scratch_container_network_none_sees_only_loopback(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """A scratch container has the loopback interface only, while the host has others."""
    code, output = run_scratch(docker_client, base_image, {}, ["ls", "/sys/class/net"], 60)
    assert code == 0, output
    assert output.split() == ["lo"]
    # The host has more than loopback, so the container's view is isolation, not absence.
    assert set(os.listdir("/sys/class/net")) - {"lo"}


def test_scratch_files_with_matching_sha256sums_pass_check(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """Files copied into a scratch container verify against their SHA256SUMS."""
    tree = _tree()
    files = {**tree, "SHA256SUMS": _sha256sums(tree)}
    code, output = run_scratch(
        docker_client, base_image, files, ["sha256sum", "--strict", "-c", "SHA256SUMS"], 60
    )
    assert code == 0, output
    assert sorted(line for line in output.splitlines() if line.endswith(": OK")) == sorted(
        f"{name}: OK" for name in tree
    )


def test_scratch_files_with_one_flipped_byte_fail_check(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """One flipped byte in one file makes ``sha256sum -c`` fail and name that file."""
    tree = _tree()
    sums = _sha256sums(tree)
    victim = "applications/deep/nested/blob.bin"
    corrupt = bytearray(tree[victim])
    corrupt[1234] ^= 0x01
    files = {**tree, victim: bytes(corrupt), "SHA256SUMS": sums}
    code, output = run_scratch(
        docker_client, base_image, files, ["sha256sum", "--strict", "-c", "SHA256SUMS"], 60
    )
    assert code != 0, output
    assert f"{victim}: FAILED" in output
    assert "users/u1.json: OK" in output


def test_run_scratch_failing_command_leaves_no_container_or_volume(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """run_scratch returns a failing exit code and removes its container and volume."""
    code, output = run_scratch(
        docker_client, base_image, {"a.txt": b"x"}, ["sh", "-c", "cat a.txt; exit 7"], 60
    )
    assert (code, output) == (7, "x")
    assert _our_leftovers(docker_client) == []


def test_run_scratch_overlong_command_times_out_and_cleans_up(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """A command past its timeout is killed, raises TimeoutError and leaves nothing behind."""
    with pytest.raises(TimeoutError, match="ran longer than"):
        run_scratch(docker_client, base_image, {}, ["sleep", "60"], timeout_s=2)
    assert _our_leftovers(docker_client) == []


def test_image_builder_same_recipe_reuses_tag(
    image_builder: ImageBuilder, docker_client: docker.DockerClient, base_image: str
) -> None:
    """The base image is tagged by recipe hash under wicked-dr-test/ and found again."""
    assert base_image.startswith("wicked-dr-test/base:")
    image = docker_client.images.get(base_image)
    assert image_builder.base() == base_image
    assert docker_client.images.get(base_image).id == image.id
    assert not any(t.startswith(("python:", "postgres:")) for t in image.tags)


def test_remove_leftovers_dead_owner_removed_live_owner_kept(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """Leftovers of a gone pytest process are removed; this live session's are kept."""
    dead = docker_client.containers.create(
        base_image, ["true"], name=scratch_name("dead"), labels={LABEL_OWNER: "1:0"},
        network_mode="none",
    )
    live = docker_client.containers.create(
        base_image, ["true"], name=scratch_name("live"), labels=owner_labels(),
        network_mode="none",
    )
    try:
        assert remove_leftovers(docker_client) >= 1
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(dead.id)
        assert docker_client.containers.get(live.id).name == live.name
    finally:
        live.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            dead.remove(force=True)
