"""Amazon S3 (and S3-compatible stores) as a store, through boto3.

Compare-and-swap is S3's conditional write: a create sends ``If-None-Match: *``, an update
``If-Match: <ETag>``, and S3 answers 412 when the object is not (or no longer) what the writer named.
A version here is the object's ETag, a string with no order: the MD5 of the bytes for a single-part
upload, so two writes of identical bytes carry identical versions. What makes that safe is above the
store: every state write puts a unique ``write_token`` in its bytes, so no version ever comes back
(the hazard is shown by the contract suite, and tests/store/test_s3_etag.py shows the real protocol
defeats it). User metadata (``x-amz-meta-*``) does not enter the ETag.

The endpoint is boto3's own configuration — ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, or
``endpoint_url`` in the AWS config file — which s3fs (the chunk data) reads too; ``endpoint_url=`` here
sets it for this store's own requests. boto3's retries are off: retrying is decided once, above every
backend, by :mod:`shardclaim.store.retry`. Store time is the ``Date`` header of the answers.

**Listings.** ListObjectsV2 gives key, ETag, size and update time, but no user metadata, which the lease
layer reads from a listing to see every shard without reading any. The store fills it in: it keeps the
metadata of each object it has seen, keyed by (key, ETag), and asks S3 (HEAD, up to ``head_threads`` at
once) only for the objects whose ETag it has not seen — a listing costs one request per 1,000 keys plus
one per object changed since the last listing (its own writes and reads are seen already). As long as
writes' bytes are unique, an ETag names one write, so the metadata it keys is that write's; where bytes
repeat (a hand copy), the cache is only a cache, and every decision is confirmed by a conditional write.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import boto3
import botocore.exceptions as bexc
from botocore.config import Config
from botocore.parsers import ResponseParserError

from shardclaim.errors import (
    GenerationMismatchError,
    ObjectNotFoundError,
    StoreError,
    TransientStoreError,
)
from shardclaim.store.base import (
    ABSENT,
    Generation,
    ObjectInfo,
    StoredObject,
    bind_metadata,
    bound_metadata,
    clock_checked,
    content_md5,
    http_date,
    refuse_identical_rewrite,
    store_now,
    untimed_if_refused,
    validate_key,
    validate_metadata,
)

__all__ = ["MIN_PART_BYTES", "S3Store", "chunk_filesystem", "default_client", "endpoint_url"]

#: S3's smallest multipart part: an s3fs file being written buffers at least this much.
MIN_PART_BYTES = 5 << 20
_CONNECT_TIMEOUT, _READ_TIMEOUT = 10.0, 60.0  # seconds
_HEAD_THREADS = 32
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MD5 = re.compile(r"[0-9a-f]{32}")
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
_NETWORK_ERRORS: tuple[type[Exception], ...] = (
    bexc.ConnectionError,  # refused, connect timeout, DNS, TLS
    bexc.HTTPClientError,  # reset, read timeout, a body cut short
    bexc.IncompleteReadError,
    # botocore's own check of a body against the checksum S3 sent (newer botocore): not the object's bytes
    *((bexc.FlexibleChecksumError,) if hasattr(bexc, "FlexibleChecksumError") else ()),
)
_CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    bexc.NoCredentialsError,
    bexc.PartialCredentialsError,
    bexc.CredentialRetrievalError,
)


def endpoint_url() -> str | None:
    """The S3 endpoint the environment names (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``), or None
    for AWS itself (or whatever the AWS config file says)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def default_client(endpoint: str | None = None, *, pool: int = _HEAD_THREADS) -> Any:
    """An S3 client with shardclaim's timeouts, a connection per listing thread, and no retries of its own."""
    config = Config(
        connect_timeout=_CONNECT_TIMEOUT,
        read_timeout=_READ_TIMEOUT,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=pool,
    )
    with _session_lock:
        return _session(os.getpid()).client("s3", endpoint_url=endpoint or endpoint_url(), config=config)


# One boto3 session per process: a client made from a new session loads the service model again (0.19 s
# against 0.03 s here), and the dataset reader opens a store per call. Sessions are not thread-safe
# (hence the lock) nor fork-safe (hence the pid in the key).
_session_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _session(pid: int) -> Any:
    return boto3.session.Session()


def chunk_filesystem(url: str) -> tuple[Any, str]:
    """``(s3fs filesystem, bucket/path)`` for an ``s3://`` URL: the chunk data's way to S3, at the
    store's endpoint, with write buffers of at least :data:`MIN_PART_BYTES`."""
    endpoint = endpoint_url()
    fs = _chunk_filesystem_class()(**({"endpoint_url": endpoint} if endpoint else {}))
    return fs, url.split("://", 1)[1].rstrip("/")


@functools.cache
def _chunk_filesystem_class() -> type[Any]:
    import s3fs

    class ChunkS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
        """s3fs, with a block size raised to S3's smallest part where the caller asks for less (the
        builder shares a memory budget among its open chunk files, in units GCS accepts: 256 KiB)."""

        def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
            if "r" not in mode and isinstance(block_size, int):
                block_size = max(block_size, MIN_PART_BYTES)
            return super()._open(path, mode, block_size=block_size, **kwargs)

    return ChunkS3FileSystem


class S3Store:
    """Objects under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        head_threads: int = _HEAD_THREADS,
        list_page_size: int = 1000,
    ) -> None:
        if head_threads < 1:
            raise ValueError(f"head_threads must be at least 1, got {head_threads!r}")
        if not 1 <= list_page_size <= 1000:
            raise ValueError(f"list_page_size must be in 1..1000, got {list_page_size!r}")
        self._page_size = list_page_size
        self._client = client if client is not None else default_client(endpoint_url, pool=head_threads)
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._head_threads = head_threads
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, dict[str, str]]] = {}  # key -> (ETag, its metadata)

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    @property
    def client(self) -> Any:
        return self._client

    def _name(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def _remember(self, key: str, etag: str, metadata: dict[str, str]) -> None:
        with self._lock:
            self._seen[key] = (etag, metadata)

    def read(self, key: str) -> StoredObject:
        with _translated("read", key):
            resp = self._client.get_object(Bucket=self._bucket, Key=self._name(key))
            data = resp["Body"].read()
        etag = _etag(resp["ETag"])
        md5 = _md5_of(resp, etag)
        if md5 is not None and content_md5(data) != md5:
            raise TransientStoreError("read", f"{key!r}: the body does not match its ETag (cut short?)")
        metadata = _bound(resp, etag, md5)
        self._remember(key, etag, metadata)
        updated = _utc(resp["LastModified"])
        return StoredObject(key, data, etag, updated, metadata, untimed_if_refused(self._url(), _date(resp)))

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        meta = validate_metadata(metadata)
        md5 = content_md5(data)
        refuse_identical_rewrite(key, md5, if_generation_match)
        args: dict[str, Any] = {"Bucket": self._bucket, "Key": self._name(key), "Body": data}
        args.update(Metadata=bind_metadata(meta, md5), ContentType="application/octet-stream")
        if if_generation_match == ABSENT:
            args["IfNoneMatch"] = "*"
        elif if_generation_match is not None:
            args["IfMatch"] = f'"{if_generation_match}"'
        try:
            with _translated("write", key):
                resp = self._client.put_object(**args)
        except _Refused:
            raise GenerationMismatchError(key, if_generation_match or ABSENT) from None
        etag = _etag(resp["ETag"])
        self._remember(key, etag, meta)
        headers = resp["ResponseMetadata"].get("HTTPHeaders", {})
        updated = http_date(headers.get("last-modified")) or _date(resp) or datetime.now(UTC)
        return ObjectInfo(key, etag, updated, len(data), meta)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        full = self._prefix + prefix
        listed: list[tuple[str, str, datetime, int]] = []  # key, ETag, updated, size
        with _translated("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=full, PaginationConfig={"PageSize": self._page_size}
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self._prefix) :]
                    if key and key.endswith(suffix):
                        etag, updated = _etag(item["ETag"]), _utc(item["LastModified"])
                        listed.append((key, etag, updated, int(item["Size"])))
        with self._lock:
            seen = dict(self._seen)
        found: dict[str, ObjectInfo] = {}
        unseen: list[str] = []
        for key, etag, updated, size in listed:
            known = seen.get(key)
            if known is not None and known[0] == etag:
                found[key] = ObjectInfo(key, etag, updated, size, known[1])
            else:
                unseen.append(key)
        for info in self._head_all(unseen):
            found[info.key] = info
        with self._lock:  # forget what is gone, so the cache stays the size of what exists
            for key in [k for k in self._seen if k.startswith(prefix) and k.endswith(suffix)]:
                if key not in found:
                    del self._seen[key]
        return sorted(found.values(), key=lambda o: o.key)

    def _head_all(self, keys: Sequence[str]) -> Iterator[ObjectInfo]:
        """Each object's info from a HEAD, several at once; objects deleted since the listing are left out."""
        if len(keys) <= 1:
            heads = [self._head(k) for k in keys]
        else:
            with ThreadPoolExecutor(min(self._head_threads, len(keys)), "shardclaim-s3-head") as pool:
                heads = [*pool.map(self._head, keys)]
        return (h for h in heads if h is not None)

    def _head(self, key: str) -> ObjectInfo | None:
        """One object's info and metadata; its own ETag and time, newer than the listing's if it moved.
        ``key`` comes from a listing, so it is not checked as a key of ours: a stray object under the
        prefix (``a//b``, a killed build's ``.shardclaim-build-*``) is listed, as on GCS, not an error."""
        try:
            with _translated("list", key):
                resp = self._client.head_object(Bucket=self._bucket, Key=self._prefix + key)
        except ObjectNotFoundError:
            return None
        etag = _etag(resp["ETag"])
        metadata = _bound(resp, etag, _md5_of(resp, etag))
        self._remember(key, etag, metadata)
        return ObjectInfo(key, etag, _utc(resp["LastModified"]), int(resp["ContentLength"]), metadata)

    def now(self) -> datetime:
        return clock_checked(self._now)

    def _now(self) -> datetime:
        with _translated("now", self._bucket):
            resp = self._client.head_bucket(Bucket=self._bucket)
        return store_now(self._url(), _date(resp))

    def _url(self) -> str:
        return f"s3://{self._bucket}"


class _Refused(Exception):
    """A conditional write's precondition did not hold (turned into GenerationMismatchError by write)."""


def _etag(value: str) -> str:
    if value.startswith("W/"):  # If-Match compares strong ETags: every conditional write would be refused
        msg = (
            f"the store answered a weak ETag ({value}): something between (a gateway, a proxy) changes the "
            "objects, and conditional writes cannot work through it"
        )
        raise StoreError(msg)
    return value.strip('"')


def _md5_of(resp: Mapping[str, Any], etag: str) -> str | None:
    """The object's MD5 where its ETag is that (a single-part upload, unencrypted or with S3's own keys);
    None where it is not (a multipart upload, KMS or a customer key)."""
    if resp.get("ServerSideEncryption") not in (None, "AES256") or resp.get("SSECustomerAlgorithm"):
        return None
    return etag if _MD5.fullmatch(etag) else None


def _bound(resp: Mapping[str, Any], etag: str, md5: str | None) -> dict[str, str]:
    """The answer's metadata, if bound to its bytes (see :func:`bound_metadata`); none for a multipart
    object, which this store never writes."""
    if "-" in etag:
        return {}
    return bound_metadata(_metadata(resp.get("Metadata")), md5)


def _metadata(value: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (value or {}).items()}


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _date(resp: Mapping[str, Any]) -> datetime | None:
    return http_date(resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date"))


@contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    """Turn boto3's exceptions into the store's error family."""
    try:
        yield
    except bexc.ClientError as e:
        _raise_client_error(operation, key, e)
    except _NETWORK_ERRORS as e:
        raise TransientStoreError(operation, f"{key!r}: {e}") from e
    except ResponseParserError as e:  # an answer cut short, or a gateway's page: as a lost answer
        raise TransientStoreError(operation, f"{key!r}: an answer that is not S3's ({e})") from e
    except _CREDENTIAL_ERRORS as e:
        msg = (
            f"{operation} failed: {key!r}: no AWS credentials ({e}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE for a profile of ~/.aws/credentials (on EC2, ECS and EKS "
            "the instance or pod role provides them); for another S3 endpoint also set AWS_ENDPOINT_URL"
        )
        raise StoreError(msg) from None
    except bexc.BotoCoreError as e:
        raise StoreError(f"{operation} failed: {key!r}: {e}") from e


def _raise_client_error(operation: str, key: str, e: bexc.ClientError) -> NoReturn:
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(e.response.get("Error", {}).get("Code", ""))
    # 409 ConditionalRequestConflict: a concurrent write to the key, and this one did nothing (as good as
    # lost: a holder refused so gives up its lease early, never safety). NoSuchKey: If-Match on no object.
    if operation == "write" and (status == 412 or code in ("ConditionalRequestConflict", "NoSuchKey")):
        raise _Refused from None
    if code == "NoSuchBucket" or (status == 404 and operation == "now"):
        raise StoreError(f"{operation} failed: {key!r}: bucket not found") from e
    if status == 404 or code == "NoSuchKey":
        raise ObjectNotFoundError(key) from None
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        raise TransientStoreError(operation, f"{key!r}: HTTP {status} {code}") from e
    raise StoreError(f"{operation} failed: {key!r}: HTTP {status} {code}: {e}") from e
