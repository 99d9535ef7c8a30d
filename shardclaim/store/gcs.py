"""Google Cloud Storage as a store, through the official ``google-cloud-storage`` client.

Compare-and-swap is GCS's own: every write carries ``ifGenerationMatch`` and GCS answers 412 when the
object moved on. gcsfs is not used here because it cannot send a generation other than 0 and turns every
412 into ``FileExistsError``; it stays the tool for bulk data (chunk files).

Small writes (under 8 MiB, which is every state write) go as single multipart uploads: one request,
and the only upload kind on which the test server (fake-gcs-server) enforces preconditions. A read is
one media request whose response headers carry generation, metadata and the server's ``Date``.
The client's built-in retries are switched off (``retry=None``): retrying is decided once, above every
backend, by :mod:`shardclaim.store.retry`.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from shardclaim.errors import (
    GenerationMismatchError,
    ObjectNotFoundError,
    StoreError,
    TransientStoreError,
)
from shardclaim.store.base import (
    Generation,
    ObjectInfo,
    StoredObject,
    bind_metadata,
    bound_metadata,
    clock_checked,
    content_md5,
    http_date,
    store_now,
    untimed_if_refused,
    validate_key,
    validate_metadata,
)

if TYPE_CHECKING:
    from google.cloud import storage

__all__ = ["GCSStore", "default_client"]

_TIMEOUT = (10.0, 60.0)  # connect, read (seconds)
_META_HEADER = "x-goog-meta-"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_API_ERRORS: tuple[type[Exception], ...] = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
)
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def default_client() -> storage.Client:
    """A storage client: the emulator's when ``STORAGE_EMULATOR_HOST`` is set, else the default one.

    Against an emulator the client gets anonymous credentials; without them it would look for real
    credentials and wait on the metadata server.
    """
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "shardclaim-test")
        return storage.Client(project=project, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    try:
        return storage.Client()
    except auth_exc.DefaultCredentialsError as e:
        msg = (
            f"no Google Cloud credentials ({e}); on a workstation run `gcloud auth application-default "
            "login`, elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (on GCE, GKE "
            "and TPU VMs the metadata server provides them); for an emulator set STORAGE_EMULATOR_HOST"
        )
        raise StoreError(msg) from None


class GCSStore:
    """Objects under ``gs://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str = "", *, client: storage.Client | None = None) -> None:
        self._client = client if client is not None else default_client()
        if getattr(self._client, "_bucket_metadata_cache", None) is not None:
            # google-cloud-storage >= 3.10 fetches bucket metadata in a background thread on first
            # use, for tracing attributes: an extra request we cannot retry or count. Off.
            self._client._bucket_metadata_cache = None
        self._bucket_name = bucket
        self._bucket = self._client.bucket(bucket)
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @property
    def url(self) -> str:
        return f"gs://{self._bucket_name}/{self._prefix}".rstrip("/")

    @property
    def client(self) -> storage.Client:
        return self._client

    def _name(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def _api_url(self, path: str, **query: str) -> str:
        url: str = self._client._connection.build_api_url(path, query_params=query)
        return url

    def read(self, key: str) -> StoredObject:
        name = self._name(key)
        url = self._api_url(f"/b/{self._bucket_name}/o/{quote(name, safe='')}", alt="media")
        # The media endpoint lives under /download for the JSON API's upload/download host.
        url = url.replace("/storage/v1/", "/download/storage/v1/", 1)
        with _translated("read", key):
            resp = self._client._http.request("GET", url, timeout=_TIMEOUT)
        if resp.status_code == 404:
            raise ObjectNotFoundError(key)
        if resp.status_code != 200:
            _raise_status("read", key, resp.status_code, resp.text)
        headers = resp.headers
        try:
            generation = int(headers["x-goog-generation"])
        except (KeyError, ValueError) as e:
            raise StoreError(f"{key!r}: response has no usable x-goog-generation header") from e
        metadata = {
            k[len(_META_HEADER) :].lower(): v
            for k, v in headers.items()
            if k.lower().startswith(_META_HEADER)
        }
        md5 = content_md5(resp.content)
        sent = _sent_md5(headers.get("x-goog-hash", ""))
        if sent is not None and sent != md5:  # bytes changed on the way (a proxy's doing): read again
            raise TransientStoreError("read", f"{key!r}: the body does not match its x-goog-hash")
        metadata = bound_metadata(metadata, md5)
        read_at = untimed_if_refused(f"gs://{self._bucket_name}", http_date(headers.get("Date")))
        updated = http_date(headers.get("Last-Modified")) or read_at
        return StoredObject(key, resp.content, generation, updated or self.now(), metadata, read_at)

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        name = self._name(key)
        meta = validate_metadata(metadata)
        blob = self._bucket.blob(name)
        blob.metadata = bind_metadata(meta, content_md5(data)) or None
        try:
            with _translated("write", key):
                blob.upload_from_string(
                    data,
                    content_type="application/octet-stream",
                    if_generation_match=if_generation_match,
                    retry=None,
                    timeout=_TIMEOUT,
                )
        except gexc.PreconditionFailed:
            raise GenerationMismatchError(key, if_generation_match or 0) from None
        updated = blob.updated or datetime.now(UTC)
        return ObjectInfo(key, int(blob.generation or 0), updated, len(data), meta)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        full = self._prefix + prefix
        kwargs: dict[str, Any] = {"prefix": full, "page_size": 1000, "retry": None, "timeout": _TIMEOUT}
        if suffix and not any(c in full + suffix for c in "*?[]{}\\,"):
            # Let GCS filter (fewer pages); the check below keeps the answer right where it does not.
            kwargs["match_glob"] = f"{full}**{suffix}"
        found: list[ObjectInfo] = []
        with _translated("list", prefix):
            for blob in self._client.list_blobs(self._bucket_name, **kwargs):
                key = blob.name[len(self._prefix) :]
                if not key.endswith(suffix) or not key:
                    continue
                found.append(
                    ObjectInfo(
                        key,
                        int(blob.generation),
                        blob.updated,
                        int(blob.size or 0),
                        bound_metadata({k.lower(): v for k, v in (blob.metadata or {}).items()}, _md5(blob)),
                    )
                )
        found.sort(key=lambda o: o.key)
        return found

    def now(self) -> datetime:
        return clock_checked(self._now)

    def _now(self) -> datetime:
        url = self._api_url(f"/b/{self._bucket_name}", fields="name")
        with _translated("now", self._bucket_name):
            resp = self._client._http.request("GET", url, timeout=_TIMEOUT)
        if resp.status_code != 200:
            _raise_status("now", self._bucket_name, resp.status_code, resp.text)
        return store_now(f"gs://{self._bucket_name}", http_date(resp.headers.get("Date")))


def _raise_status(operation: str, key: str, status: int, body: str) -> NoReturn:
    detail = f"{key!r}: HTTP {status}: {body[:200]}"
    if status in _TRANSIENT_STATUS:
        raise TransientStoreError(operation, detail)
    raise StoreError(f"{operation} failed: {detail}")


@contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    """Turn client, auth and network exceptions into the store's error family.

    A 412 passes through untouched: the caller knows which generation it named.
    """
    try:
        yield
    except gexc.PreconditionFailed:
        raise
    except gexc.GoogleAPICallError as e:
        _raise_api_error(operation, key, e)
    except (*_NETWORK_ERRORS, auth_exc.TransportError) as e:
        raise TransientStoreError(operation, f"{key!r}: {e}") from e
    except auth_exc.GoogleAuthError as e:
        raise StoreError(f"{operation} failed: {key!r}: credentials refused: {e}") from e


def _raise_api_error(operation: str, key: str, e: gexc.GoogleAPICallError) -> NoReturn:
    if isinstance(e, gexc.NotFound):
        # Writes and listings name no object that could be missing: it is the bucket.
        raise StoreError(f"{operation} failed: {key!r}: bucket not found ({e.message})") from e
    if isinstance(e, _TRANSIENT_API_ERRORS) or e.code in _TRANSIENT_STATUS:
        raise TransientStoreError(operation, f"{key!r}: {e}") from e
    raise StoreError(f"{operation} failed: {key!r}: {e}") from e


def _md5(blob: Any) -> str | None:
    """A listed object's MD5 (hex), from its base64 ``md5Hash``; None where the listing has none."""
    return _hex(blob.md5_hash or "")


def _sent_md5(header: str) -> str | None:
    """The MD5 (hex) in an ``x-goog-hash`` header (``crc32c=...,md5=...``, base64), if it has one."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "md5":
            return _hex(value)
    return None


def _hex(b64: str) -> str | None:
    """A base64 digest as hex; None for none, or for one that is not base64."""
    try:
        return base64.b64decode(b64, validate=True).hex() or None
    except (binascii.Error, ValueError):
        return None
