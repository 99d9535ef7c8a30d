"""Stores: where shardclaim keeps objects, and the one function that opens them from a URL."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shardclaim.errors import InvalidURLError
from shardclaim.store.base import ABSENT, Generation, ObjectInfo, Store, StoredObject
from shardclaim.store.retry import RetryingStore, RetryPolicy

__all__ = [
    "ABSENT",
    "Generation",
    "ObjectInfo",
    "RetryPolicy",
    "RetryingStore",
    "Store",
    "StoredObject",
    "open_store",
]

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
SUPPORTED = "a local path, file:///path, gs://bucket/prefix, s3://bucket/prefix or memory://name"


def open_store(url: str | Path, *, policy: RetryPolicy | None = None) -> RetryingStore:
    """Open the store behind ``url``, wrapped in the retry policy.

    ``url`` is a local path (the embedded default), ``file:///abs/path``, ``gs://bucket[/prefix]``,
    ``s3://bucket[/prefix]`` (endpoint and credentials from the standard AWS settings) or ``memory://name``.
    Anything else raises :class:`~shardclaim.errors.InvalidURLError`.
    """
    return RetryingStore(_open_backend(url), policy=policy)


def _open_backend(url: str | Path) -> Store:
    from shardclaim.store.local import LocalStore

    if isinstance(url, Path):
        return LocalStore(url)
    if not isinstance(url, str):
        raise InvalidURLError(repr(url), f"expected a str URL, got {type(url).__name__}")
    text = url.strip()
    if not text:
        raise InvalidURLError(url, f"empty URL; give {SUPPORTED}")
    if "://" not in text:
        return LocalStore(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise InvalidURLError(url, "query strings and fragments are not allowed in a store URL")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidURLError(url, f"file URLs name no host, got {parts.netloc!r}")
        if not parts.path:
            raise InvalidURLError(url, "file URL without a path")
        return LocalStore(unquote(parts.path))
    if scheme in ("gs", "gcs"):
        return _open_gcs(url, parts.netloc, parts.path.strip("/"))
    if scheme == "memory":
        from shardclaim.store.memory import named_memory_store

        return named_memory_store((parts.netloc + parts.path).strip("/"))
    if scheme == "s3":
        return _open_s3(url, parts.netloc, parts.path.strip("/"))
    raise InvalidURLError(url, f"unknown scheme {parts.scheme!r}; give {SUPPORTED}")


def _open_gcs(url: str, bucket: str, prefix: str) -> Store:
    if not bucket:
        raise InvalidURLError(url, "no bucket: write gs://BUCKET/prefix")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidURLError(url, f"{bucket!r} is not a valid bucket name")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise InvalidURLError(url, "empty, '.' or '..' parts in the object prefix")
    from shardclaim.store.gcs import GCSStore

    return GCSStore(bucket, prefix)


_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _open_s3(url: str, bucket: str, prefix: str) -> Store:
    if not bucket:
        raise InvalidURLError(url, "no bucket: write s3://BUCKET/prefix")
    if not _S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidURLError(url, f"{bucket!r} is not a valid bucket name")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise InvalidURLError(url, "empty, '.' or '..' parts in the object prefix")
    try:
        from shardclaim.store.s3 import S3Store
    except ImportError as e:  # boto3 is the optional extra [s3]
        raise InvalidURLError(url, f"S3 needs boto3 ({e}): pip install 'shardclaim[s3]'") from None
    return S3Store(bucket, prefix)
