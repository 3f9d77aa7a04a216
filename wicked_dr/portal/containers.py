"""Container control for the product: the portal's singletons and Kong, through Docker.

``ContainerControl`` stops and starts the containers a ``containers.*`` key names (a
container name, or ``label=key=value`` for every match), waiting until each really stopped
or runs; the live restore and ``kong-resync`` use it, and so do the tests.

Restarting every Kong node, one at a time:

Kong caches database lookups with no expiry by default (``db_cache_ttl = 0``), "not found"
included, and rows written by SQL bypass its cache invalidation: tokens restored into Kong's
database stay invisible until each node has restarted. Kong scales out, so every node matched
by ``containers.kong`` is restarted in turn, and the next one only once the previous one is
running again (and healthy, when it has a Docker HEALTHCHECK): never two nodes down at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from wicked_dr.config import ContainersConfig
from wicked_dr.errors import ConfigError, DockerError, NotFoundError
from wicked_dr.log import get_logger
from wicked_dr.portal.docker_api import connect

log = get_logger(__name__)

LABEL_PREFIX = "label="
# Docker's own default grace period; a container's StopTimeout overrides it.
DEFAULT_STOP_TIMEOUT_S = 10
POLL_S = 0.1
# A node without a health check counts as back once it has stayed up this long, so a process
# that dies right after starting (bad config, port in use) is not taken for a healthy node.
SETTLE_S = 2.0


@dataclass(frozen=True)
class _Ready:
    """How a restarted node was found back: its state and the engine's start time."""

    state: str
    started_at: str


class _NotBack(Exception):
    """A restarted node did not come back; the message says in which state it was found."""


def restart_kong_nodes(config: ContainersConfig, *, timeout_s: float = 120,
                       settle_s: float = SETTLE_S) -> list[dict[str, Any]]:
    """Restart every container ``config.kong`` selects, one after the other, sorted by name.

    Each node must be running again (and healthy, if it has a health check) within
    ``timeout_s``, counted once the engine has started it again, before the next is touched;
    one without a health check must stay up ``settle_s``. Matching containers that are not
    running are left alone and reported with ``restarted: False``: a stopped Kong has no
    stale cache, and starting it is the operator's decision.
    """
    if not config.kong:
        raise ConfigError(["containers.kong is not set: name the Kong container or give a "
                           "label selector label=key=value"])
    client = _client(config.docker_url)
    try:
        nodes = _select(client, config.kong, "containers.kong")
        log.info("kong restart plan", selector=config.kong, nodes=[n.name for n in nodes])
        report: list[dict[str, Any]] = []
        for index, node in enumerate(nodes):
            if node.status != "running":
                log.warning("kong node not running, left alone", container=node.name,
                            state=node.status)
                report.append({"name": node.name, "id": node.short_id, "restarted": False,
                               "state": node.status, "seconds": 0.0})
                continue
            later = [n.name for n in nodes[index + 1:] if n.status == "running"]
            report.append(_restart_one(node, timeout_s, settle_s, later))
        return report
    finally:
        client.close()


def _client(docker_url: str | None) -> Any:
    """A connected Docker client: ``docker_url`` if set, else DOCKER_HOST or the socket."""
    return connect(docker_url)


def _select(client: Any, selector: str, key: str) -> list[Any]:
    """The containers ``selector`` (config key ``key``) names: one by name, or every match
    of a label filter."""
    try:
        if selector.startswith(LABEL_PREFIX):
            label = selector[len(LABEL_PREFIX):]
            if not label:
                raise ConfigError([f"{key} {selector!r}: the label selector is empty; "
                                   "use label=key=value"])
            found = client.containers.list(all=True, filters={"label": label},
                                           ignore_removed=True)
            if not found:
                raise NotFoundError(f"no container carries the label {label!r} "
                                    f"({key}): check the containers' labels")
        else:
            try:
                found = [client.containers.get(selector)]
            except docker.errors.NotFound:
                raise NotFoundError(f"no container named {selector!r} ({key}): check "
                                    "the name with 'docker ps'") from None
    except docker.errors.APIError as exc:
        raise DockerError(f"listing the containers of {key} ({selector!r}) failed: "
                          f"{exc.explanation or exc}") from None
    # A stable order, so that operators know which node goes first.
    return sorted(found, key=lambda container: str(container.name))


def _restart_one(container: Any, timeout_s: float, settle_s: float,
                 later: list[str]) -> dict[str, Any]:
    """Restart one node and wait until it is back; DockerError names it if it is not."""
    name = str(container.name)
    stop_timeout = int(container.attrs["Config"].get("StopTimeout") or DEFAULT_STOP_TIMEOUT_S)
    has_health = _has_healthcheck(container.attrs)
    log.info("kong node restarting", container=name, health_check=has_health)
    began = time.monotonic()
    try:
        # The SDK would send its own 10 s; Kong's configured grace period is the one to honour.
        container.restart(timeout=stop_timeout)
        ready = _wait_ready(container, has_health, time.monotonic() + timeout_s, settle_s)
    except _NotBack as exc:
        raise DockerError(_not_back_message(name, str(exc), later)) from None
    except docker.errors.APIError as exc:
        reason = f"the engine refused the restart: {exc.explanation or exc}"
        raise DockerError(_not_back_message(name, reason, later)) from None
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerError(_not_back_message(name, f"the engine failed: {exc}", later)) from None
    seconds = round(time.monotonic() - began, 3)
    log.info("kong node back", container=name, state=ready.state, seconds=seconds)
    return {"name": name, "id": container.short_id, "restarted": True, "state": ready.state,
            "seconds": seconds, "started_at": ready.started_at,
            "ready_at": datetime.now(UTC).isoformat()}


def _not_back_message(name: str, reason: str, later: list[str]) -> str:
    left = ", ".join(later) if later else "none"
    return (f"Kong node {name} did not come back after its restart ({reason}); stopped there, "
            f"the nodes after it were left running without a restart: {left}. Fix {name} "
            "(docker logs), then restart the remaining Kong nodes one at a time")


def _has_healthcheck(attrs: dict[str, Any]) -> bool:
    test = (attrs["Config"].get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def _wait_ready(container: Any, has_health: bool, deadline: float, settle_s: float) -> _Ready:
    """Poll until the node runs (and is healthy, or stayed up ``settle_s``); _NotBack if not."""
    up_since: tuple[str, float] | None = None
    while True:
        container.reload()
        state: dict[str, Any] = container.attrs["State"]
        now = time.monotonic()
        if state.get("Running") and not state.get("Restarting"):
            started_at = str(state["StartedAt"])
            if has_health:
                if _healthy_since(state, started_at):
                    return _Ready("healthy", started_at)
            elif up_since is None or up_since[0] != started_at:
                # A new start time means the engine restarted it meanwhile: count again.
                up_since = (started_at, now)
            elif now - up_since[1] >= settle_s:
                return _Ready("running", started_at)
        elif state.get("Status") in ("exited", "dead"):
            # The engine decides about a restart policy before it reports "exited": final.
            raise _NotBack(f"it {state.get('Status')} with code {state.get('ExitCode')}")
        else:
            up_since = None
        if now >= deadline:
            raise _NotBack(f"still {_describe(state)} when the wait ran out")
        time.sleep(POLL_S)


def _healthy_since(state: dict[str, Any], started_at: str) -> bool:
    """Healthy, proven by a passing check of this start (not a result from before it)."""
    health = state.get("Health") or {}
    if health.get("Status") != "healthy":
        return False
    since = _parse_time(started_at)
    return any(entry.get("ExitCode") == 0 and _parse_time(str(entry.get("Start", ""))) >= since
               for entry in health.get("Log") or [])


def _describe(state: dict[str, Any]) -> str:
    health = (state.get("Health") or {}).get("Status")
    return f"{state.get('Status')}" + (f", health {health}" if health else "")


def _parse_time(text: str) -> datetime:
    """Docker's RFC 3339 time with nanoseconds (Python keeps microseconds)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        # An unreadable time proves nothing: treat it as older than any start.
        return datetime.min.replace(tzinfo=UTC)


# --- stop and start the portal's containers ----------------------------------------------------


class ContainerControl:
    """Stop, start and inspect the containers ``containers.*`` keys select. Every call
    waits until the engine reports the new state (bounded) and raises DockerError naming
    the container otherwise; a selector matching nothing is NotFoundError."""

    def __init__(self, docker_url: str | None) -> None:
        self._client = _client(docker_url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ContainerControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def select(self, selector: str, key: str) -> list[Any]:
        """The containers ``selector`` (the value of config key ``key``) matches."""
        return _select(self._client, selector, key)

    def running(self, selector: str, key: str) -> list[str]:
        """The names of the matching containers that run now."""
        return [str(c.name) for c in self.select(selector, key) if c.status == "running"]

    def stop(self, selector: str, key: str) -> list[str]:
        """Stop every matching container that runs (within its own stop timeout) and wait
        until it has exited; the names of those stopped."""
        stopped = []
        for container in self.select(selector, key):
            if container.status != "running":
                continue
            timeout = int(container.attrs["Config"].get("StopTimeout") or
                          DEFAULT_STOP_TIMEOUT_S)
            log.info("stopping container", container=container.name, key=key)
            self._engine(f"stopping {container.name}", container.stop, timeout=timeout)
            self._engine(f"waiting for {container.name} to exit", container.wait,
                         timeout=timeout + 30)
            stopped.append(str(container.name))
        return stopped

    def start(self, names: list[str]) -> None:
        """Start the named containers (running ones are left alone)."""
        for name in names:
            container = self._get(name)
            if container.status == "running":
                continue
            log.info("starting container", container=name)
            self._engine(f"starting {name}", container.start)

    def restart(self, name: str) -> None:
        """Restart one container (its own stop timeout)."""
        container = self._get(name)
        timeout = int(container.attrs["Config"].get("StopTimeout") or DEFAULT_STOP_TIMEOUT_S)
        log.info("restarting container", container=name)
        self._engine(f"restarting {name}", container.restart, timeout=timeout)

    def _get(self, name: str) -> Any:
        try:
            return self._client.containers.get(name)
        except docker.errors.NotFound:
            raise NotFoundError(f"container {name!r} is gone: check 'docker ps -a'") from None
        except (docker.errors.DockerException, OSError) as exc:
            raise DockerError(f"the Docker engine failed looking up {name}: {exc}") from None

    @staticmethod
    def _engine(what: str, call: Any, **kwargs: Any) -> Any:
        try:
            return call(**kwargs)
        except docker.errors.APIError as exc:
            raise DockerError(f"{what} failed: {exc.explanation or exc}") from None
        except (docker.errors.DockerException, OSError) as exc:
            raise DockerError(f"{what} failed: {exc}") from None
