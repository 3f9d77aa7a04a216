"""A repository in an S3 bucket (AWS, MinIO, Ceph or any S3-compatible store).

Objects live under ``s3://<bucket>/<prefix>/<name>``. botocore retries throttling, 5xx and
connection errors itself ("standard" mode, 8 attempts in all, exponential backoff with
jitter); what still fails afterwards is raised as ``RetryableBackendError``, everything
permanent as ``BackendError``/``NotFoundError``/``PreconditionFailed`` with a message that
says what to fix.

Conditional writes use S3's ``If-None-Match: *`` and ``If-Match: <etag>`` on PutObject, so the
compare-and-swap happens on the server. Etags are S3's, without the surrounding quotes.

``storage_class`` applies only to packs (``data/...``): index, snapshot and lock objects are
small and read or rewritten often, where infrequent-access classes bill a 128 KiB minimum
size and a 30-day minimum life. ``sse``/``sse_kms_key_id`` apply to every object.

Credentials are taken from the repository configuration when both keys are set and from
the standard AWS chain otherwise; they are never logged or put in messages.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from wicked_dr.backends.base import ObjectInfo, PreconditionFailed
from wicked_dr.config import RepositoryConfig
from wicked_dr.errors import BackendError, NotFoundError, RetryableBackendError
from wicked_dr.log import get_logger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = get_logger(__name__)

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 refuses smaller parts (except the last one)
MAX_ATTEMPTS = 8
PACK_PREFIX = "data/"
# Reading a response body is outside botocore's retry loop; we repeat whole GETs this often.
_BODY_READ_ATTEMPTS = 3

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                     "ExpiredToken", "TokenRefreshRequired"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                   "RequestTimeTooSkewed", "ServiceUnavailable", "InternalError",
                   "RequestLimitExceeded", "TooManyRequestsException"}
_STREAM_ERRORS = (IncompleteReadError, ReadTimeoutError, ResponseStreamingError,
                  BotoConnectionError, HTTPClientError)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b/"); the prefix is empty or ends in '/'."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Backend:
    """Objects in one bucket under one key prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, sse: str | None = None,
                 sse_kms_key_id: str | None = None, storage_class: str | None = None,
                 multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_size: int = MULTIPART_PART_SIZE, max_attempts: int = MAX_ATTEMPTS,
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0,
                 list_page_size: int = 1000) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.storage_class = storage_class
        self.multipart_threshold = multipart_threshold
        # Parts below 5 MiB are refused by S3; part size never drops below that.
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.list_page_size = list_page_size
        self._client = _make_client(endpoint_url, region, access_key_id, secret_access_key,
                                    max_attempts, connect_timeout_s, read_timeout_s)

    @classmethod
    def from_config(cls, config: RepositoryConfig, **overrides: Any) -> S3Backend:
        """Build from ``repository`` settings; ``overrides`` are tuning knobs for tests."""
        bucket, prefix = split_s3_url(config.url)
        key_id = config.access_key_id.get_secret_value() if config.access_key_id else None
        secret = (config.secret_access_key.get_secret_value() if config.secret_access_key
                  else None)
        return cls(bucket, prefix, endpoint_url=config.endpoint_url, region=config.region,
                   access_key_id=key_id, secret_access_key=secret, sse=config.sse,
                   sse_kms_key_id=config.sse_kms_key_id, storage_class=config.storage_class,
                   **overrides)

    # --- writing ---------------------------------------------------------------------------

    def put(self, name: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        """PutObject (atomic on S3); conditions are checked by the server."""
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are mutually exclusive")
        args = self._put_args(name)
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = f'"{if_match}"'
        try:
            response = self._client.put_object(Body=data, **args)
        except ClientError as exc:
            if if_match is not None and _code(exc) in _NOT_FOUND_CODES:
                # If-Match on a missing object: the condition does not hold.
                raise PreconditionFailed(f"object {name!r} does not exist (expected etag "
                                         f"{if_match})") from None
            self._raise(exc, "write", name)
        except BotoCoreError as exc:
            self._raise(exc, "write", name)
        return _strip(response["ETag"])

    def put_file(self, name: str, path: Path) -> str:
        """One PutObject up to ``multipart_threshold``, a multipart upload above it."""
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from None
        if size <= self.multipart_threshold:
            return self.put(name, _read_file(path))
        return self._put_multipart(name, path)

    def delete(self, name: str) -> None:
        """DeleteObject; S3 answers success for a missing key."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, "delete", name)

    # --- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> bytes:
        """GetObject, the whole body."""
        return self._get(name, None)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the object)."""
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            return b""
        return self._get(name, f"bytes={offset}-{offset + length - 1}")

    def stat(self, name: str) -> ObjectInfo:
        """HeadObject."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, "stat", name)
        return ObjectInfo(name=name, size=head["ContentLength"], etag=_strip(head["ETag"]))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """ListObjectsV2, every page."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix, check=False),
                                   PaginationConfig={"PageSize": self.list_page_size})
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(name=item["Key"][len(self.prefix):], size=item["Size"],
                                     etag=_strip(item["ETag"]))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, "list", prefix or "(all)")

    # --- the bucket -------------------------------------------------------------------------

    def exists(self) -> bool:
        """HeadBucket: True if the bucket exists and we may use it."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                return False
            self._raise(exc, "open", None)
        except BotoCoreError as exc:
            self._raise(exc, "open", None)
        return True

    def create(self) -> None:
        """CreateBucket in the configured region; a bucket we already own is fine."""
        args: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":  # us-east-1 refuses an explicit constraint
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**args)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyOwnedByYou":
                return
            if _code(exc) == "BucketAlreadyExists":
                raise BackendError(f"S3 bucket name {self.bucket!r} is taken by another "
                                   "account; choose another bucket in repository.url") from None
            self._raise(exc, "create", None)
        except BotoCoreError as exc:
            self._raise(exc, "create", None)

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a put only once it is durable."""

    # --- internals --------------------------------------------------------------------------

    def _key(self, name: str, *, check: bool = True) -> str:
        if check and (not name or any(p in ("", ".", "..") for p in name.split("/"))):
            # Same rule as the local backend, so a repository moves between them unchanged.
            raise BackendError(f"invalid object name {name!r}: expected a relative path "
                               "without empty, '.' or '..' parts")
        return self.prefix + name

    def _put_args(self, name: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
            if self.sse == "aws:kms" and self.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class and name.startswith(PACK_PREFIX):
            args["StorageClass"] = self.storage_class
        return args

    def _get(self, name: str, byte_range: str | None) -> bytes:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if byte_range:
            args["Range"] = byte_range
        for attempt in range(1, _BODY_READ_ATTEMPTS + 1):
            try:
                response = self._client.get_object(**args)
                return response["Body"].read()
            except ClientError as exc:
                if byte_range and _code(exc) == "InvalidRange":
                    return b""  # the range starts at or after the end of the object
                self._raise(exc, "read", name)
            except _STREAM_ERRORS as exc:
                if attempt == _BODY_READ_ATTEMPTS:
                    self._raise(exc, "read", name)
                log.warning("s3_read_retry", object=name, attempt=attempt,
                            error=type(exc).__name__)
            except BotoCoreError as exc:
                self._raise(exc, "read", name)
        raise AssertionError("unreachable")

    def _put_multipart(self, name: str, path: Path) -> str:
        args = self._put_args(name)
        try:
            upload_id = self._client.create_multipart_upload(**args)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, "write", name)
        try:
            parts = self._upload_parts(name, path, upload_id)
            done = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=args["Key"], UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException as exc:
            self._abort_multipart(args["Key"], upload_id)
            if isinstance(exc, ClientError | BotoCoreError):
                self._raise(exc, "write", name)
            raise
        return _strip(done["ETag"])

    def _upload_parts(self, name: str, path: Path,
                      upload_id: str) -> builtins.list[CompletedPartTypeDef]:
        parts: builtins.list[CompletedPartTypeDef] = []
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from None
        with handle:
            while chunk := handle.read(self.part_size):
                number = len(parts) + 1
                answer = self._client.upload_part(
                    Bucket=self.bucket, Key=self._key(name), UploadId=upload_id,
                    PartNumber=number, Body=chunk)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        return parts

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        """Best effort: an unaborted upload only costs storage until a lifecycle rule."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("s3_abort_multipart_failed", bucket=self.bucket, key=key,
                        error=type(exc).__name__)

    def _raise(self, exc: Exception, action: str, name: str | None) -> NoReturn:
        """Map a boto error to the project's exceptions (one line, what to fix)."""
        raise _map_error(exc, action, self.bucket, self.prefix, name, self.endpoint_url,
                         self._bucket_missing) from None

    def _bucket_missing(self) -> bool:
        """HeadObject's 404 has no body: ask HeadBucket whether the bucket is the problem."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            return _code(exc) in _NOT_FOUND_CODES | {"NoSuchBucket"}
        except BotoCoreError:
            return False
        return False


def _make_client(endpoint_url: str | None, region: str | None, access_key_id: str | None,
                 secret_access_key: str | None, max_attempts: int, connect_timeout_s: float,
                 read_timeout_s: float) -> S3Client:
    config_args: dict[str, Any] = {
        # total_max_attempts counts the first try too (botocore's max_attempts does not).
        "retries": {"mode": "standard", "total_max_attempts": max_attempts},
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
    }
    if endpoint_url:
        # MinIO, Ceph and loopback test servers have no per-bucket DNS names, and many of
        # them reject the CRC checksums newer botocore sends by default.
        config_args["s3"] = {"addressing_style": "path"}
        config_args["request_checksum_calculation"] = "when_required"
        config_args["response_checksum_validation"] = "when_required"
    use_keys = bool(access_key_id and secret_access_key)
    session = boto3.session.Session(
        aws_access_key_id=access_key_id if use_keys else None,
        aws_secret_access_key=secret_access_key if use_keys else None,
        region_name=region)
    return session.client("s3", endpoint_url=endpoint_url, config=BotoConfig(**config_args))


def _map_error(exc: Exception, action: str, bucket: str, prefix: str, name: str | None,
               endpoint_url: str | None, bucket_missing: Any) -> Exception:
    where = f"object {name!r} in s3://{bucket}/{prefix}" if name else f"bucket {bucket!r}"
    if isinstance(exc, NoCredentialsError):
        return BackendError(f"no S3 credentials for bucket {bucket!r}: set "
                            "repository.access_key_id/secret_access_key or the AWS "
                            "credential chain")
    if not isinstance(exc, ClientError):
        endpoint = endpoint_url or "AWS S3"
        return RetryableBackendError(f"cannot reach {endpoint} to {action} {where} after "
                                     f"retries: {type(exc).__name__}; check "
                                     "repository.endpoint_url and the network")
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and name is None):
        return _no_bucket(bucket)
    if code in _NOT_FOUND_CODES:
        return _no_bucket(bucket) if bucket_missing() else NotFoundError(
            f"{where} not found")
    if code in _PRECONDITION_CODES or status in (409, 412):
        return PreconditionFailed(f"{where} changed or exists: S3 answered {code}")
    if code in _CREDENTIAL_CODES:
        return BackendError(f"S3 refused the credentials for bucket {bucket!r} ({code}); check "
                            "repository.access_key_id/secret_access_key or the AWS "
                            "credential chain")
    if status == 403 or code == "AccessDenied":
        return BackendError(f"S3 denied access to {where} ({code}); check the credentials "
                            "(repository.access_key_id/secret_access_key or the AWS "
                            "credential chain) and their bucket permissions")
    if code in _THROTTLE_CODES or status >= 500 or status == 429:
        return RetryableBackendError(f"S3 could not {action} {where} after retries: {code} "
                                     f"(HTTP {status}); try again later")
    message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
    return BackendError(f"S3 could not {action} {where}: {code} {message}".rstrip())


def _no_bucket(bucket: str) -> NotFoundError:
    return NotFoundError(f"S3 bucket {bucket!r} does not exist; check repository.url or run "
                         "'wicked-dr init'")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _strip(etag: str) -> str:
    return etag.strip('"')


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from None
