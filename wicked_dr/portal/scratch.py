"""Throwaway ("scratch") containers and volumes, for ``verify`` and the drills.

wicked-dr runs in production in a container of its own with the Docker socket ("Docker out
of Docker"): a path inside that container is not a path on the host, so nothing is ever
bind-mounted. A scratch volume is filled by streaming instead: a container that mounts the
volume is created (never started), the tar is ``put_archive``\\ d into the mount path, and
the container is removed.

Every scratch container is locked down the same way (``_hardened``): no network
(``network_mode="none"``), a read-only root file system, every capability dropped,
``no-new-privileges``, memory and pids limits, volumes (some read-only) and tmpfs only;
a ``run`` may instead join the network namespace of a service of the same run
(``network_mode="container:<id>"``: the service's own loopback, nothing more); the image's
entrypoint is replaced by the command's first word, and the anonymous volumes an image's
``VOLUME`` creates go with their container. Containers and
volumes carry labels: a wicked-dr scratch resource, its run id and purpose, and the owning
process (host, boot id, pid namespace, pid, process start time). ``ScratchRun.__exit__``
removes everything of its run in every outcome; what a killed process left behind,
``sweep`` removes at the next start, but only when its owner is provably gone from this
host (a recycled pid has another start time), never a concurrent verify's or drill's.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Literal

import docker
import docker.errors
import docker.types

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.errors import DockerError, Interrupted
from wicked_dr.holder import boot_id, process_start_time
from wicked_dr.log import get_logger
from wicked_dr.portal.docker_api import engine_errors, reason

log = get_logger(__name__)

NAME_PREFIX = "wicked-dr-scratch-"
LABEL_SCRATCH = "io.wicked-dr.scratch"
LABEL_RUN = "io.wicked-dr.scratch.run"
LABEL_PURPOSE = "io.wicked-dr.scratch.purpose"
LABEL_HOST = "io.wicked-dr.scratch.owner.host"
LABEL_BOOT = "io.wicked-dr.scratch.owner.boot-id"
LABEL_PIDNS = "io.wicked-dr.scratch.owner.pid-ns"
LABEL_PID = "io.wicked-dr.scratch.owner.pid"
LABEL_START = "io.wicked-dr.scratch.owner.start-time"

DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_PIDS_LIMIT = 256
# Writable scratch space besides the volumes; the root file system is read-only.
DEFAULT_TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}
SERVICE_COMMAND = ["sleep", "infinity"]
# Output kept per stream: the tail, so a runaway command cannot fill our memory.
MAX_OUTPUT_BYTES = 1024 * 1024
# Where ``own_root`` mounts a volume: one level down, so the tar can name its root.
OWN_ROOT_PARENT = "/wicked-dr-own"
# Largest directory ``copy_from_image`` copies.
MAX_COPY_BYTES = 64 * 1024 * 1024
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.2
# How soon an exec notices a cancel; its end is noticed at once.
EXEC_POLL_S = 0.05

PullPolicy = Literal["missing", "never"]


@dataclass(frozen=True)
class ScratchResult:
    """How a command in a scratch container ended."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


# --- owners ------------------------------------------------------------------------------


def _pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``): pids of another one say nothing
    about ours, even when both report the same host name."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def owner_labels() -> dict[str, str]:
    """The labels naming this process as the owner of a scratch resource."""
    pid = os.getpid()
    return {LABEL_HOST: socket.gethostname(), LABEL_BOOT: boot_id(),
            LABEL_PIDNS: _pid_namespace(), LABEL_PID: str(pid),
            LABEL_START: str(process_start_time(pid) or 0)}


def owner_gone(labels: Mapping[str, str] | None) -> bool:
    """Whether the owner named by ``labels`` is provably gone: same host, pid namespace and
    boot, and its pid no longer runs or runs a later process. Owners elsewhere (another host,
    another container's pid namespace) and unreadable labels are never judged gone."""
    labels = labels or {}
    if labels.get(LABEL_HOST) != socket.gethostname():
        return False
    if labels.get(LABEL_PIDNS) != _pid_namespace():
        return False
    if labels.get(LABEL_BOOT) != boot_id():
        return True  # the host rebooted since: every process of then is gone
    pid, start = labels.get(LABEL_PID, ""), labels.get(LABEL_START, "")
    if not (pid.isdigit() and start.isdigit()):
        return False
    return process_start_time(int(pid)) != int(start)


def sweep(client: Any) -> int:
    """Remove scratch containers and volumes whose owner is gone; return how many.

    Run at start-up, before a run of our own: a verify or drill killed with SIGKILL (or a
    crashed host) leaves its resources behind, and only this can find them. Resources of a
    live owner, on this host or another, are left alone."""
    removed = 0
    with engine_errors("listing leftover scratch containers"):
        containers = client.containers.list(all=True, filters={"label": LABEL_SCRATCH},
                                            ignore_removed=True)
    for container in containers:
        if owner_gone(container.labels) and _remove(container, "container"):
            removed += 1
            log.info("leftover scratch container removed", container=container.name,
                     run=container.labels.get(LABEL_RUN),
                     owner_pid=container.labels.get(LABEL_PID))
    with engine_errors("listing leftover scratch volumes"):
        volumes = client.volumes.list(filters={"label": LABEL_SCRATCH})
    for volume in volumes:
        labels = volume.attrs.get("Labels") or {}
        if owner_gone(labels) and _remove(volume, "volume"):
            removed += 1
            log.info("leftover scratch volume removed", volume=volume.name,
                     run=labels.get(LABEL_RUN), owner_pid=labels.get(LABEL_PID))
    return removed


def _remove(resource: Any, kind: str) -> bool:
    """Remove a container (with the anonymous volumes an image's ``VOLUME`` gave it, which
    carry no label of ours) or a volume, by force; False, with a warning, when the engine
    refused. Gone already counts as removed by someone else: False, silently."""
    try:
        if kind == "container":
            resource.remove(force=True, v=True)
        else:
            resource.remove(force=True)
    except docker.errors.NotFound:
        return False
    except (docker.errors.DockerException, OSError) as exc:
        log.warning(f"scratch {kind} not removed", name=getattr(resource, "name", "?"),
                    error=reason(exc))
        return False
    return True


# --- images ------------------------------------------------------------------------------


def ensure_image(client: Any, image: str, pull: PullPolicy = "never") -> None:
    """Make sure the engine has ``image``: present is fine; absent and ``pull="missing"``,
    it is pulled; otherwise a ``DockerError`` names the image and how to provide it."""
    how = (f"load it with 'docker load -i FILE' or build it with 'docker build -t {image} .', "
           "or set verify.image to an image the engine has")
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerError(f"looking up the image {image} failed: {reason(exc)}") from None
    if pull == "never":
        raise DockerError(f"the image {image} is not on the Docker engine and is never "
                          f"pulled: {how}")
    log.info("pulling the scratch image", image=image)
    try:
        client.images.pull(image)
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerError(f"the image {image} is not on the Docker engine and pulling it "
                          f"failed ({reason(exc)}): {how}") from None


# --- runs --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """A fragment safe in a container or volume name."""
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")[:32] or "x"


def _decode(data: bytes | None) -> str:
    return (data or b"")[-MAX_OUTPUT_BYTES:].decode(errors="replace")


class ScratchService:
    """A long-running scratch container (a server a probe talks to through ``exec``).

    Removed with its run; ``exec`` runs a command in it, as ``user`` when given."""

    def __init__(self, run: ScratchRun, container: Any, image: str) -> None:
        self._run = run
        self._container = container
        self.image = image

    @property
    def name(self) -> str:
        return str(self._container.name)

    @property
    def id(self) -> str:
        return str(self._container.id)

    def state(self) -> tuple[str, int | None]:
        """The container's status (``running``, ``exited``...) and its exit code once ended."""
        with engine_errors(f"inspecting the scratch service {self.name}"):
            self._container.reload()
        state = self._container.attrs.get("State", {})
        status = str(state.get("Status", "unknown"))
        code = state.get("ExitCode")
        return status, (int(code) if status in ("exited", "dead") and code is not None
                        else None)

    def logs(self, max_bytes: int = 4096) -> str:
        """The tail (``max_bytes`` at most) of the service's stdout and stderr, interleaved."""
        with engine_errors(f"reading the output of the scratch service {self.name}"):
            data = self._container.logs(stdout=True, stderr=True, tail=200)
        return (data or b"")[-max_bytes:].decode(errors="replace")

    def exec(self, command: list[str], user: str | None = None, *, timeout_s: float = 300,
             environment: Mapping[str, str] | None = None,
             cancel: CancelToken = NOT_CANCELLED) -> ScratchResult:
        """Run ``command`` in the service and wait for it, ``timeout_s`` at most.

        A command that outlives ``timeout_s`` (or a cancel) cannot be stopped alone: the
        whole service is removed, then ``DockerError`` (or ``Interrupted``) is raised."""
        cancel.check()
        what = f"running {command[0]!r} in the scratch service {self.name}"
        api = self._run.client.api
        with engine_errors(what):
            exec_id = api.exec_create(self.id, command, stdout=True, stderr=True,
                                      user=user or "", environment=dict(environment or {}))
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def target() -> None:
            try:
                outcome["output"] = api.exec_start(exec_id, demux=True)
            except BaseException as exc:  # handed to the waiting thread below
                outcome["error"] = exc
            finally:
                finished.set()

        began = time.monotonic()
        threading.Thread(target=target, name=f"scratch-exec-{self.name}", daemon=True).start()
        deadline = began + timeout_s
        while not finished.wait(min(EXEC_POLL_S, max(0.0, deadline - time.monotonic()))):
            if cancel.cancelled:
                self._run._discard(self._container)
                cancel.check(f"interrupted; the scratch service {self.name} was removed")
            if time.monotonic() >= deadline:
                self._run._discard(self._container)
                raise DockerError(f"{what} ran longer than {timeout_s:g}s; the service was "
                                  "removed")
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, (docker.errors.DockerException, OSError)):
                raise DockerError(f"{what} failed: {reason(error)}")
            raise error
        stdout, stderr = outcome["output"]
        with engine_errors(what):
            exit_code = api.exec_inspect(exec_id)["ExitCode"]
        return ScratchResult(int(exit_code if exit_code is not None else -1), _decode(stdout),
                             _decode(stderr), round(time.monotonic() - began, 3))


class ScratchRun:
    """One verify's or drill's scratch resources; a context manager that removes them all.

    ``volume`` creates a labelled volume, ``fill`` streams a tar into it, ``run`` runs a
    command to its end, ``service`` starts a long-running container for ``exec`` probes.
    ``__exit__`` removes every container, then every volume, of the run: found by the run's
    label, so even one whose creation answer was lost goes too."""

    def __init__(self, client: Any, purpose: str, *,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 pids_limit: int = DEFAULT_PIDS_LIMIT) -> None:
        self.client = client
        self.purpose = _slug(purpose)
        self.run_id = secrets.token_hex(6)
        self.memory_bytes = memory_bytes
        self.pids_limit = pids_limit
        self._volumes: list[str] = []
        # Containers of ``service``: the only network namespaces a ``run`` may join.
        self._services: set[str] = set()
        self._counter = 0
        self._closed = False

    # -- lifecycle --

    def __enter__(self) -> ScratchRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove every container, then every volume of this run; never raises (what the
        engine refused is logged, and ``sweep`` takes it once this process is gone)."""
        if self._closed:
            return
        self._closed = True
        selector = {"label": f"{LABEL_RUN}={self.run_id}"}
        try:
            containers = self.client.containers.list(all=True, filters=selector,
                                                     ignore_removed=True)
        except (docker.errors.DockerException, OSError) as exc:
            log.warning("scratch containers not listed for removal", run=self.run_id,
                        error=reason(exc))
            containers = []
        for container in containers:
            _remove(container, "container")
        names = set(self._volumes)
        try:
            names |= {v.name for v in self.client.volumes.list(filters=selector)}
        except (docker.errors.DockerException, OSError) as exc:
            log.warning("scratch volumes not listed for removal", run=self.run_id,
                        error=reason(exc))
        for name in sorted(names):
            try:
                _remove(self.client.volumes.get(name), "volume")
            except docker.errors.NotFound:
                pass
            except (docker.errors.DockerException, OSError) as exc:
                log.warning("scratch volume not removed", name=name, error=reason(exc))

    # -- resources --

    def ensure_image(self, image: str, pull: PullPolicy = "never") -> None:
        """``ensure_image`` on this run's engine (a probe checks the image it needs)."""
        ensure_image(self.client, image, pull)

    def _labels(self) -> dict[str, str]:
        return {LABEL_SCRATCH: "1", LABEL_RUN: self.run_id, LABEL_PURPOSE: self.purpose,
                **owner_labels()}

    def _name(self, hint: str) -> str:
        self._counter += 1
        return f"{NAME_PREFIX}{self.run_id}-{self.purpose}-{_slug(hint)}-{self._counter}"

    def volume(self, name_hint: str = "data", *, memory_mib: int = 0,
               holder_image: str | None = None) -> str:
        """Create a labelled, empty volume of this run; return its name.

        With ``memory_mib`` the volume is a tmpfs of at most that size on the Docker host,
        kept mounted for the whole run by a holder service of ``holder_image``: the engine
        mounts a tmpfs volume only while a container uses it, so what ``fill`` put into it
        would otherwise land beneath the mount, and the files would go with the last
        container. Filling and removing 100 k small files then costs no disk work."""
        self._open()
        name = self._name(name_hint)
        options = ({"type": "tmpfs", "device": "tmpfs", "o": f"size={memory_mib}m"}
                   if memory_mib else None)
        # Recorded first: a creation whose answer is lost is still removed at the end.
        self._volumes.append(name)
        with engine_errors(f"creating the scratch volume {name}"):
            self.client.volumes.create(name=name, labels=self._labels(), driver_opts=options)
        if memory_mib:
            if holder_image is None:
                raise ValueError("an in-memory scratch volume needs a holder image")
            self.service(holder_image, mounts={name: "/held"}, hint="holder")
        return name

    def fill(self, volume: str, tar: bytes | IO[bytes] | Iterable[bytes], image: str,
             mount: str = "/data") -> None:
        """Stream ``tar`` into ``volume`` (its root is ``mount`` in the tar's view).

        A container mounting the volume is created, never started; the engine extracts the
        tar into the mount (owners and modes as the tar says) and the container is removed.
        Nothing of this machine's file system is mounted."""
        container = self._create(image, ["true"], {volume: mount}, None, None, None,
                                 hint="fill")
        try:
            with engine_errors(f"copying into the scratch volume {volume}"):
                if not container.put_archive(mount, tar):
                    raise DockerError(f"copying into the scratch volume {volume} failed: "
                                      "the engine refused the archive")
        finally:
            self._discard(container)

    def own_root(self, volume: str, owner: tuple[int, int], image: str,
                 mode: int = 0o755) -> None:
        """Give the root directory of ``volume`` to ``owner`` (the engine creates it owned by
        root, and a tar entry for the mount itself is ignored): the volume is mounted one
        level down, below a throwaway volume (the root file system is read-only), and a
        tar holding just that directory entry is put into the parent."""
        parent = self.volume("own")
        container = self._create(image, ["true"], {parent: OWN_ROOT_PARENT,
                                                   volume: f"{OWN_ROOT_PARENT}/v"},
                                 None, None, None, hint="own")
        entry = tarfile.TarInfo("v")
        entry.type, entry.mode = tarfile.DIRTYPE, mode
        entry.uid, entry.gid = owner
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            tar.addfile(entry)
        try:
            with engine_errors(f"setting the owner of the scratch volume {volume}"):
                if not container.put_archive(OWN_ROOT_PARENT, out.getvalue()):
                    raise DockerError(f"setting the owner of the scratch volume {volume} "
                                      "failed: the engine refused the archive")
        finally:
            self._discard(container)
            self._drop_volume(parent)

    def copy_from_image(self, volume: str, image: str, path: str,
                        owner: tuple[int, int]) -> None:
        """Fill ``volume`` with the content of directory ``path`` of ``image``, every entry
        (the volume's root too) owned by ``owner``: a writable copy of a directory the
        image's program writes into at start (its root file system stays read-only). Read
        from a created, never started container; at most ``MAX_COPY_BYTES``."""
        source = self._create(image, ["true"], None, None, None, None, hint="copy")
        what = f"copying {path} out of {image}"
        try:
            with engine_errors(what):
                chunks, _ = source.get_archive(path)
                data = b""
                for chunk in chunks:
                    data += chunk
                    if len(data) > MAX_COPY_BYTES:
                        raise DockerError(f"{what} failed: more than {MAX_COPY_BYTES} bytes")
        finally:
            self._discard(source)
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar_in, \
                tarfile.open(fileobj=out, mode="w") as tar_out:
            for entry in tar_in:
                # The archive's top entry is the directory itself: its content goes to the root.
                _, _, rest = entry.name.partition("/")
                if not rest:
                    continue
                entry.name, entry.uid, entry.gid = rest, owner[0], owner[1]
                entry.uname = entry.gname = ""
                tar_out.addfile(entry, tar_in.extractfile(entry) if entry.isreg() else None)
        self.fill(volume, out.getvalue(), image, "/data")
        self.own_root(volume, owner, image)

    def run(self, image: str, command: list[str], mounts: Mapping[str, str] | None = None,
            user: str | None = None, tmpfs: Mapping[str, str] | None = None, *,
            timeout_s: float, environment: Mapping[str, str] | None = None,
            cancel: CancelToken = NOT_CANCELLED, network_mode: str | None = None,
            readonly: Collection[str] = ()) -> ScratchResult:
        """Run ``command`` in a new scratch container to its end; ``mounts`` maps volumes of
        this run to paths (those named in ``readonly`` mounted read-only). The container is
        removed before this returns or raises. ``network_mode="container:<id>"`` joins the
        network namespace of a service of this run (its loopback only); default: none.

        Longer than ``timeout_s``: killed, removed, ``DockerError``. Cancelled: killed,
        removed, ``Interrupted``. A non-zero exit is a result, not an error."""
        cancel.check()
        container = self._create(image, command, mounts, user, tmpfs, environment,
                                 hint="run", network_mode=network_mode, readonly=readonly)
        what = f"the scratch command {command[0]!r} in {image}"
        try:
            began = time.monotonic()
            with engine_errors(f"starting {what}"):
                container.start()
            state = self._wait_exit(container, what, began + timeout_s, timeout_s, cancel)
            duration = round(time.monotonic() - began, 3)
            with engine_errors(f"reading the output of {what}"):
                stdout = container.logs(stdout=True, stderr=False)
                stderr = container.logs(stdout=False, stderr=True)
            return ScratchResult(int(state.get("ExitCode", -1)), _decode(stdout),
                                 _decode(stderr), duration)
        finally:
            self._discard(container)

    def service(self, image: str, command: list[str] | None = None,
                mounts: Mapping[str, str] | None = None, user: str | None = None,
                tmpfs: Mapping[str, str] | None = None, *,
                environment: Mapping[str, str] | None = None,
                readonly: Collection[str] = (), must_stay_up: bool = True,
                hint: str = "service") -> ScratchService:
        """Start a long-running scratch container (default command ``sleep infinity``) and
        return its handle; it lives until the run ends (or a timed-out ``exec``). Volumes
        named in ``readonly`` are mounted read-only. A service that ended at once is a
        ``DockerError`` unless ``must_stay_up`` is False (the caller then reads its state
        and logs: a server under test that cannot start is a finding, not a failure)."""
        container = self._create(image, command or SERVICE_COMMAND, mounts, user, tmpfs,
                                 environment, hint=hint, readonly=readonly)
        self._services.add(str(container.id))
        with engine_errors(f"starting the scratch service {container.name}"):
            container.start()
            container.reload()
        if must_stay_up and container.status != "running":
            state = container.attrs.get("State", {})
            self._discard(container)
            raise DockerError(f"the scratch service in {image} did not stay up (state "
                              f"{state.get('Status')}, exit code {state.get('ExitCode')})")
        return ScratchService(self, container, image)

    # -- internals --

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError(f"scratch run {self.run_id} is closed")

    def _create(self, image: str, command: list[str], mounts: Mapping[str, str] | None,
                user: str | None, tmpfs: Mapping[str, str] | None,
                environment: Mapping[str, str] | None, *, hint: str,
                network_mode: str | None = None, readonly: Collection[str] = ()) -> Any:
        self._open()
        name = self._name(hint)
        with engine_errors(f"creating the scratch container {name} from {image}"):
            # The image's entrypoint is replaced, never used: an official postgres image's
            # would start a server, the wicked-dr image's would run wicked-dr.
            return self.client.containers.create(
                image, list(command[1:]), entrypoint=[command[0]], name=name,
                labels=self._labels(),
                environment=dict(environment or {}), user=user or "",
                **self._hardened(mounts or {}, tmpfs, network_mode, readonly))

    def _hardened(self, mounts: Mapping[str, str], tmpfs: Mapping[str, str] | None,
                  network_mode: str | None = None,
                  readonly: Collection[str] = ()) -> dict[str, Any]:
        """The host configuration of every scratch container: no network (or the loopback
        of a service of this run), nothing of the host, no privileges, bounded memory and
        processes."""
        unknown = sorted(set(mounts) - set(self._volumes))
        if unknown:
            # A name that is not ours might be a host path in disguise: refuse, never bind.
            raise ValueError(f"not volumes of scratch run {self.run_id}: {unknown}")
        if set(readonly) - set(mounts):
            raise ValueError(f"read-only volumes not mounted: {sorted(set(readonly))}")
        if network_mode is not None and (
                not network_mode.startswith("container:")
                or network_mode.removeprefix("container:") not in self._services):
            raise ValueError(f"network mode {network_mode!r}: only 'container:<id>' of a "
                             f"service of scratch run {self.run_id}")
        return {
            "network_mode": network_mode or "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": self.memory_bytes,
            "memswap_limit": self.memory_bytes,
            "pids_limit": self.pids_limit,
            "mounts": [docker.types.Mount(target=path, source=volume, type="volume",
                                          read_only=volume in readonly)
                       for volume, path in mounts.items()],
            "tmpfs": dict(DEFAULT_TMPFS if tmpfs is None else tmpfs),
        }

    def _wait_exit(self, container: Any, what: str, deadline: float, timeout_s: float,
                   cancel: CancelToken) -> dict[str, Any]:
        """Poll until ``container`` exited; its State. Timeout or cancel: kill, remove, raise."""
        pause = POLL_FIRST_S
        while True:
            with engine_errors(f"waiting for {what}"):
                container.reload()
            state: dict[str, Any] = container.attrs.get("State", {})
            if state.get("Status") in ("exited", "dead"):
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._discard(container)
                raise DockerError(f"{what} ran longer than {timeout_s:g}s; it was killed and "
                                  "removed")
            if cancel.wait(min(pause, remaining)):
                self._discard(container)
                raise Interrupted(f"interrupted; {what} was killed and removed",
                                  reason=cancel.reason)
            pause = min(pause * 2, POLL_MAX_S)

    def _drop_volume(self, name: str) -> None:
        """Remove one volume of this run now (``close`` would otherwise)."""
        try:
            if _remove(self.client.volumes.get(name), "volume"):
                self._volumes.remove(name)
        except (docker.errors.DockerException, OSError, ValueError):
            pass

    def _discard(self, container: Any) -> None:
        """Kill and remove one container now (force removal kills it)."""
        _remove(container, "container")
