"""The storage backend contract (wicked_dr/backends/base.py), one suite for every backend.

Local runs in tmp_path; S3 runs against moto's standalone server on 127.0.0.1 (real HTTP).
Backend-specific behaviour (S3 credentials, retries, storage class; local crash safety)
follows the shared part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.fixtures.s3 import (
    AuthS3Server,
    FlakyProxy,
    S3Server,
    closed_port_endpoint,
    s3_repository_config,
    s3_test_client,
)
from wicked_dr.backends import open_backend
from wicked_dr.backends.base import Backend, PreconditionFailed
from wicked_dr.backends.local import TEMP_PREFIX, LocalBackend
from wicked_dr.backends.s3 import S3Backend
from wicked_dr.config import RepositoryConfig
from wicked_dr.errors import BackendError, NotFoundError, RetryableBackendError

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
# Small enough to keep tests fast, large enough for S3's 5 MiB minimum part size.
TEST_MULTIPART_THRESHOLD = 5 * MiB


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which backend the shared test runs on."""
    return str(request.param)


@pytest.fixture
def repo_config(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> RepositoryConfig:
    """A repository configuration for a fresh, empty repository of ``kind``."""
    if kind == "local":
        return RepositoryConfig(url=str(tmp_path / "repo"))
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    config: RepositoryConfig = s3_repository_config(server.endpoint_url, bucket)
    return config


@pytest.fixture
def backend(repo_config: RepositoryConfig) -> Backend:
    """The backend under test, its directory/bucket created."""
    opened = open_backend(repo_config)
    opened.create()
    return opened


@pytest.fixture
def missing_repository(kind: str, tmp_path: Path,
                       request: pytest.FixtureRequest) -> tuple[Backend, str]:
    """A backend whose directory/bucket does not exist, and the name a message must show."""
    if kind == "local":
        root = tmp_path / "never-created"
        return open_backend(RepositoryConfig(url=f"file://{root}")), str(root)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"wdr-missing-{os.urandom(6).hex()}"
    return open_backend(s3_repository_config(server.endpoint_url, bucket)), bucket


def _plain_config(config: RepositoryConfig) -> str:
    """The config as JSON with secrets revealed, for a child process we start ourselves."""
    data: dict[str, Any] = config.model_dump(mode="python")
    for key, value in data.items():
        if isinstance(value, SecretStr):
            data[key] = value.get_secret_value()
    return json.dumps(data, default=str)


# --- the shared contract --------------------------------------------------------------------


def test_put_then_get_returns_same_bytes(backend: Backend) -> None:
    """What put stores, get returns byte for byte, including empty and binary objects."""
    payloads = {"snapshots/a": b"", "data/00/blob": bytes(range(256)) * 1000, "config": b"x"}
    for name, data in payloads.items():
        backend.put(name, data)
    for name, data in payloads.items():
        assert backend.get(name) == data


def test_put_existing_name_replaces_content(backend: Backend) -> None:
    """An unconditional put over an existing object replaces it."""
    backend.put("index/1", b"first")
    backend.put("index/1", b"second")
    assert backend.get("index/1") == b"second"


def test_get_range_inside_and_at_end_returns_requested_bytes(backend: Backend) -> None:
    """get_range returns the slice; at the end it returns fewer bytes; past it none."""
    data = os.urandom(10_000)
    backend.put("data/ab/pack", data)
    assert backend.get_range("data/ab/pack", 1234, 100) == data[1234:1334]
    assert backend.get_range("data/ab/pack", 0, 1) == data[:1]
    assert backend.get_range("data/ab/pack", 9_990, 100) == data[9_990:]
    assert backend.get_range("data/ab/pack", 10_000, 5) == b""


def test_get_range_of_missing_object_raises_not_found(backend: Backend) -> None:
    """A range read of a missing object is a NotFoundError naming it."""
    with pytest.raises(NotFoundError, match="data/none"):
        backend.get_range("data/none", 0, 10)


def test_stat_reports_size_and_the_etag_put_returned(backend: Backend) -> None:
    """stat gives the object's size and the etag its put returned."""
    etag = backend.put("snapshots/s1", b"12345")
    info = backend.stat("snapshots/s1")
    assert (info.name, info.size, info.etag) == ("snapshots/s1", 5, etag)


def test_stat_missing_object_raises_not_found(backend: Backend) -> None:
    """stat of a missing object is a NotFoundError naming the object."""
    with pytest.raises(NotFoundError, match="snapshots/none"):
        backend.stat("snapshots/none")


def test_list_with_prefix_returns_only_matching_objects(backend: Backend) -> None:
    """list is a plain string-prefix match over names, with each object's size and etag."""
    etags = {name: backend.put(name, name.encode()) for name in
             ["data/ab/1", "data/ab/2", "data/abc", "data/b/1", "index/1", "config"]}
    assert {i.name for i in backend.list("data/ab")} == {"data/ab/1", "data/ab/2", "data/abc"}
    assert {i.name for i in backend.list("data/ab/")} == {"data/ab/1", "data/ab/2"}
    assert {i.name for i in backend.list("nothing/")} == set()
    everything = {i.name: i for i in backend.list("")}
    assert set(everything) == set(etags)
    assert all(everything[n].etag == etags[n] and everything[n].size == len(n) for n in etags)


def test_delete_twice_removes_object_without_error(backend: Backend) -> None:
    """delete removes the object and a repeated delete succeeds."""
    backend.put("locks/a", b"x")
    backend.delete("locks/a")
    backend.delete("locks/a")
    with pytest.raises(NotFoundError):
        backend.get("locks/a")
    assert [i.name for i in backend.list("locks/")] == []


def test_get_missing_object_raises_not_found_naming_it(backend: Backend) -> None:
    """get of a missing object is a NotFoundError whose message names the object."""
    with pytest.raises(NotFoundError, match="index/missing"):
        backend.get("index/missing")


def test_put_if_none_match_on_existing_object_raises_and_keeps_it(backend: Backend) -> None:
    """If-None-Match on an existing object fails and leaves the object unchanged."""
    etag = backend.put("locks/exclusive", b"first holder")
    with pytest.raises(PreconditionFailed):
        backend.put("locks/exclusive", b"second holder", if_none_match=True)
    assert backend.get("locks/exclusive") == b"first holder"
    assert backend.stat("locks/exclusive").etag == etag


def test_put_if_none_match_on_absent_object_creates_it(backend: Backend) -> None:
    """If-None-Match on an absent object stores it and returns its etag."""
    etag = backend.put("locks/new", b"mine", if_none_match=True)
    assert backend.get("locks/new") == b"mine"
    assert backend.stat("locks/new").etag == etag


def test_put_if_match_with_stale_etag_raises_and_keeps_object(backend: Backend) -> None:
    """If-Match with an etag that is no longer current fails and changes nothing."""
    stale = backend.put("locks/l", b"v1")
    current = backend.put("locks/l", b"v2")
    with pytest.raises(PreconditionFailed):
        backend.put("locks/l", b"v3", if_match=stale)
    assert backend.get("locks/l") == b"v2"
    assert backend.stat("locks/l").etag == current


def test_put_if_match_with_current_etag_replaces_and_returns_new_etag(backend: Backend) -> None:
    """If-Match with the current etag replaces the object and returns a new etag."""
    first = backend.put("locks/l", b"v1")
    second = backend.put("locks/l", b"v2-renewed", if_match=first)
    assert second != first
    assert backend.get("locks/l") == b"v2-renewed"
    assert backend.stat("locks/l").etag == second
    with pytest.raises(PreconditionFailed):
        backend.put("locks/l", b"v3", if_match=first)


def test_put_if_match_on_missing_object_raises_precondition(backend: Backend) -> None:
    """If-Match on an object that does not exist fails and creates nothing."""
    etag = backend.put("locks/gone", b"x")
    backend.delete("locks/gone")
    with pytest.raises(PreconditionFailed):
        backend.put("locks/gone", b"y", if_match=etag)
    with pytest.raises(NotFoundError):
        backend.get("locks/gone")


def test_concurrent_if_none_match_from_threads_exactly_one_wins(backend: Backend) -> None:
    """Eight threads racing If-None-Match on one name: exactly one wins, its data stays."""
    for round_ in range(5):
        name = f"locks/race-{round_}"
        start = threading.Barrier(8)

        def claim(i: int, name: str = name, start: threading.Barrier = start) -> int | None:
            start.wait()
            try:
                backend.put(name, f"holder-{i}".encode(), if_none_match=True)
            except PreconditionFailed:
                return None
            return i

        with ThreadPoolExecutor(max_workers=8) as pool:
            winners = [w for w in pool.map(claim, range(8)) if w is not None]
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert backend.get(name) == f"holder-{winners[0]}".encode()


_CLAIM_SCRIPT = """
import json, os, sys, time
from wicked_dr.backends import open_backend
from wicked_dr.backends.base import PreconditionFailed
from wicked_dr.config import RepositoryConfig
backend = open_backend(RepositoryConfig.model_validate(json.loads(sys.argv[1])))
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
try:
    backend.put("locks/process-race", sys.argv[3].encode(), if_none_match=True)
    print("won")
except PreconditionFailed:
    print("lost")
"""


def test_concurrent_if_none_match_from_processes_exactly_one_wins(
        backend: Backend, repo_config: RepositoryConfig, tmp_path: Path) -> None:
    """Four processes racing If-None-Match on one name: exactly one wins, its data stays."""
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", _CLAIM_SCRIPT, _plain_config(repo_config),
                          str(go), f"process-{i}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                         text=True)
        for i in range(4)]
    for child in children:  # every child has imported and connected: start them together
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = [child.communicate(timeout=60)[0].strip() for child in children]
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    winner = outcomes.index("won")
    assert backend.get("locks/process-race") == f"process-{winner}".encode()


def _with_small_multipart(repo_config: RepositoryConfig) -> Backend:
    if repo_config.url.startswith("s3://"):
        backend: Backend = S3Backend.from_config(
            repo_config, multipart_threshold=TEST_MULTIPART_THRESHOLD,
            part_size=TEST_MULTIPART_THRESHOLD)
        return backend
    return open_backend(repo_config)


def test_put_file_above_multipart_threshold_round_trips(
        backend: Backend, repo_config: RepositoryConfig, tmp_path: Path) -> None:
    """put_file of a file above the multipart threshold stores it whole (3 parts on S3)."""
    source = tmp_path / "big.bin"
    data = os.urandom(2 * TEST_MULTIPART_THRESHOLD + 12345)
    source.write_bytes(data)
    etag = _with_small_multipart(repo_config).put_file("data/cd/bigpack", source)
    assert backend.get("data/cd/bigpack") == data
    info = backend.stat("data/cd/bigpack")
    assert (info.size, info.etag) == (len(data), etag)
    if repo_config.url.startswith("s3://"):
        assert etag.endswith("-3"), f"expected a 3-part multipart etag, got {etag}"


def test_put_file_below_threshold_round_trips(backend: Backend, tmp_path: Path) -> None:
    """put_file of a small file stores exactly its bytes."""
    source = tmp_path / "small.bin"
    source.write_bytes(b"small pack")
    etag = backend.put_file("data/ef/small", source)
    assert backend.get("data/ef/small") == b"small pack"
    assert backend.stat("data/ef/small").etag == etag


def test_missing_repository_raises_not_found_naming_it(
        missing_repository: tuple[Backend, str]) -> None:
    """get/stat/list/put on a missing bucket or directory raise NotFoundError naming it."""
    backend, expected = missing_repository
    assert backend.exists() is False
    calls: list[Callable[[], object]] = [
        lambda: backend.get("config"), lambda: backend.stat("config"),
        lambda: list(backend.list("")), lambda: backend.put("config", b"x")]
    for call in calls:
        with pytest.raises(NotFoundError) as raised:
            call()
        assert expected in str(raised.value)


def test_create_makes_missing_repository_and_is_idempotent(
        missing_repository: tuple[Backend, str]) -> None:
    """create() makes the bucket/directory; a second create() is a no-op."""
    backend, _ = missing_repository
    backend.create()
    backend.create()
    assert backend.exists() is True
    backend.put("config", b"c")
    assert backend.get("config") == b"c"


def test_invalid_object_names_are_refused(backend: Backend) -> None:
    """Names that are absolute or contain empty, '.' or '..' parts are refused."""
    for name in ["/etc/passwd", "data/../../x", "data//x", "", "./x"]:
        with pytest.raises(BackendError, match="invalid object name"):
            backend.put(name, b"x")


def test_sync_after_puts_keeps_objects_readable(backend: Backend) -> None:
    """sync() succeeds after puts and objects stay readable (durability itself needs a crash)."""
    backend.put("data/aa/p", b"pack")
    backend.sync()
    assert backend.get("data/aa/p") == b"pack"


# --- S3 only -------------------------------------------------------------------------------


def _s3(config: RepositoryConfig, **overrides: Any) -> S3Backend:
    return S3Backend.from_config(config, **overrides)


def test_s3_objects_are_stored_under_the_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    """Object names are joined under the URL's prefix in the bucket."""
    backend = _s3(s3_repository_config(s3_server.endpoint_url, s3_bucket, "prod/wicked"))
    backend.put("data/ab/p", b"x")
    listed = s3_test_client(s3_server.endpoint_url).list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["prod/wicked/data/ab/p"]
    assert [i.name for i in backend.list("")] == ["data/ab/p"]


def test_s3_list_beyond_one_page_returns_every_object(s3_server: S3Server,
                                                       s3_bucket: str) -> None:
    """list follows continuation tokens past S3's 1000-object page."""
    backend = _s3(s3_repository_config(s3_server.endpoint_url, s3_bucket))
    names = {f"data/{i % 16:02x}/{i:05d}" for i in range(1005)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda n: backend.put(n, b""), names))
    backend.put("index/x", b"")
    assert {i.name for i in backend.list("data/")} == names


def test_s3_storage_class_applies_to_packs_and_sse_to_all(s3_server: S3Server,
                                                          s3_bucket: str) -> None:
    """storage_class is sent for data/ objects only; sse for every object."""
    config = s3_repository_config(s3_server.endpoint_url, s3_bucket, storage_class="STANDARD_IA",
                                  sse="AES256")
    backend = _s3(config)
    backend.put("data/ab/pack", b"p")
    backend.put("index/one", b"i")
    client = s3_test_client(s3_server.endpoint_url)
    pack = client.head_object(Bucket=s3_bucket, Key="repo/data/ab/pack")
    index = client.head_object(Bucket=s3_bucket, Key="repo/index/one")
    assert pack.get("StorageClass") == "STANDARD_IA"
    assert index.get("StorageClass", "STANDARD") == "STANDARD"
    assert pack.get("ServerSideEncryption") == index.get("ServerSideEncryption") == "AES256"


def test_s3_valid_credentials_on_authenticating_server_work(
        s3_auth_server: AuthS3Server) -> None:
    """The authenticating server accepts its IAM user's keys (so refusals below mean keys)."""
    backend = _s3(s3_repository_config(
        s3_auth_server.endpoint_url, s3_auth_server.bucket,
        access_key_id=s3_auth_server.access_key_id,
        secret_access_key=s3_auth_server.secret_access_key))
    backend.put("config", b"ok")
    assert backend.get("config") == b"ok"


@pytest.mark.parametrize("wrong", ["secret", "key_id"])
def test_s3_wrong_credentials_raise_clear_credentials_error(
        s3_auth_server: AuthS3Server, wrong: str) -> None:
    """A wrong secret or unknown key id is a BackendError telling which settings to check."""
    key_id = "AKIAUNKNOWN000000000" if wrong == "key_id" else s3_auth_server.access_key_id
    secret = "not-the-secret" if wrong == "secret" else s3_auth_server.secret_access_key
    backend = _s3(s3_repository_config(s3_auth_server.endpoint_url, s3_auth_server.bucket,
                                       access_key_id=key_id, secret_access_key=secret))
    with pytest.raises(BackendError) as raised:
        backend.put("config", b"x")
    message = str(raised.value)
    assert not isinstance(raised.value, RetryableBackendError)
    assert "S3 refused the credentials" in message
    assert s3_auth_server.bucket in message
    assert "repository.access_key_id/secret_access_key" in message
    assert secret not in message


def test_s3_503_responses_are_retried_until_success(
        flaky_s3_proxy: Callable[[int], FlakyProxy], s3_bucket: str) -> None:
    """Two 503 SlowDown answers are retried and the third attempt stores the object."""
    proxy = flaky_s3_proxy(2)
    backend = _s3(s3_repository_config(proxy.endpoint_url, s3_bucket))
    backend.put("data/ab/p", b"after retries")
    assert proxy.requests_seen() == 3
    assert backend.get("data/ab/p") == b"after retries"


def test_s3_persistent_503_raises_retryable_after_max_attempts(
        flaky_s3_proxy: Callable[[int], FlakyProxy], s3_bucket: str) -> None:
    """503 on every attempt ends in RetryableBackendError after exactly max_attempts tries."""
    proxy = flaky_s3_proxy(1000)
    backend = _s3(s3_repository_config(proxy.endpoint_url, s3_bucket), max_attempts=3)
    with pytest.raises(RetryableBackendError, match="SlowDown"):
        backend.put("data/ab/p", b"never")
    assert proxy.requests_seen() == 3


def test_s3_unreachable_endpoint_raises_retryable_naming_endpoint() -> None:
    """A refused connection is a RetryableBackendError naming the endpoint to check."""
    endpoint = closed_port_endpoint()
    backend = _s3(s3_repository_config(endpoint, "some-bucket"), max_attempts=2,
                  connect_timeout_s=2)
    with pytest.raises(RetryableBackendError) as raised:
        backend.get("config")
    assert endpoint in str(raised.value)
    assert "repository.endpoint_url" in str(raised.value)


# --- local only ------------------------------------------------------------------------------


_WRITER_SCRIPT = """
import sys
from pathlib import Path
from wicked_dr.backends.local import LocalBackend
LocalBackend(Path(sys.argv[1])).put_file(sys.argv[2], Path(sys.argv[3]))
"""


@pytest.mark.parametrize("existing", [b"", b"the old, complete object"],
                         ids=["new-object", "overwrite"])
def test_local_kill_9_mid_put_never_exposes_partial_object(tmp_path: Path,
                                                           existing: bytes) -> None:
    """A writer killed with SIGKILL mid-put leaves the old object (or none), only a temp file."""
    root = tmp_path / "repo"
    backend = LocalBackend(root)
    backend.create()
    name = "data/ab/pack"
    if existing:
        backend.put(name, existing)
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(root), name,
                               str(fifo)], cwd=REPO_ROOT)
    try:
        with fifo.open("wb") as feed:
            feed.write(os.urandom(9 * MiB))  # more than one copy chunk: the temp file grows
            feed.flush()
            _wait_for_temp_file(root / "data" / "ab", min_size=8 * MiB)
            writer.kill()
            writer.wait(timeout=10)
    except BrokenPipeError:
        pass
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -9
    if existing:
        assert backend.get(name) == existing
    else:
        with pytest.raises(NotFoundError):
            backend.get(name)
    assert [i.name for i in backend.list("")] == ([name] if existing else [])
    assert backend.remove_stale_temp_files(older_than_s=0) == 1


def _wait_for_temp_file(directory: Path, min_size: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.name.startswith(TEMP_PREFIX) and entry.stat().st_size >= min_size:
                    return
        time.sleep(0.01)
    pytest.fail(f"the writer never wrote {min_size} bytes to a temp file in {directory}")


def test_local_list_skips_temp_files_and_lock_area(tmp_path: Path) -> None:
    """list shows objects only: no .tmp-* leftovers and nothing from the .locks area."""
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    backend.put("data/ab/p", b"x")
    (tmp_path / "repo" / "data" / "ab" / f"{TEMP_PREFIX}leftover").write_bytes(b"partial")
    assert (tmp_path / "repo" / ".locks").is_dir()
    assert [i.name for i in backend.list("")] == ["data/ab/p"]


def test_local_put_leaves_no_temp_files_behind(tmp_path: Path) -> None:
    """Successful and refused puts both clean up their temp files."""
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    backend.put("locks/l", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        backend.put("locks/l", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        backend.put("locks/l", b"3", if_match="stale")
    leftovers = [p for p in (tmp_path / "repo").rglob(f"{TEMP_PREFIX}*")]
    assert leftovers == []


def test_local_file_path_blocking_a_directory_raises_backend_error_naming_it(
        tmp_path: Path) -> None:
    """An OS error while writing is a one-line BackendError that names the path."""
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    backend.put("data", b"a file where a directory is needed")
    with pytest.raises(BackendError) as raised:
        backend.put("data/ab/p", b"x")
    assert str(tmp_path / "repo" / "data") in str(raised.value)
    assert "\n" not in str(raised.value)


def test_open_backend_chooses_by_url(tmp_path: Path) -> None:
    """/path and file:///path open a LocalBackend, s3:// an S3Backend with bucket and prefix."""
    assert isinstance(open_backend(RepositoryConfig(url=str(tmp_path))), LocalBackend)
    local = open_backend(RepositoryConfig(url=f"file://{tmp_path}/r"))
    assert isinstance(local, LocalBackend) and local.root == tmp_path / "r"
    s3 = open_backend(RepositoryConfig(url="s3://my-bucket/a/b/", region="eu-central-1"))
    assert isinstance(s3, S3Backend)
    assert (s3.bucket, s3.prefix, s3.url) == ("my-bucket", "a/b/", "s3://my-bucket/a/b")
