"""What every module talking to the Docker engine shares: the connection and the edge
where docker/requests exceptions become one-line ``DockerError``\\ s (never a traceback).

``portal/containers.py`` (Kong restarts) and ``portal/scratch.py`` (throwaway containers
for ``verify``) both connect and translate errors here, so they read and fail alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors

from wicked_dr.errors import DockerError

CLIENT_TIMEOUT_S = 60


def connect(docker_url: str | None, *, setting: str = "containers.docker_url") -> Any:
    """A connected Docker client: ``docker_url`` if set, else DOCKER_HOST or the socket."""
    where = docker_url or "DOCKER_HOST or the default socket"
    try:
        client = (docker.DockerClient(base_url=docker_url, timeout=CLIENT_TIMEOUT_S)
                  if docker_url else docker.from_env(timeout=CLIENT_TIMEOUT_S))
        client.ping()
    # requests' exceptions are OSErrors: an engine that does not answer lands here too.
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerError(f"cannot reach the Docker engine at {where} ({exc}): check "
                          f"{setting} or DOCKER_HOST") from None
    return client


def reason(exc: BaseException) -> str:
    """The engine's own words for a failure, on one line."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Turn docker and requests failures inside the block into ``DockerError``: "<what>
    failed: <the engine's reason>". wicked-dr's own errors pass through unchanged."""
    try:
        yield
    # requests' exceptions are OSErrors (connection refused, read timeout).
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerError(f"{what} failed: {reason(exc)}") from None
