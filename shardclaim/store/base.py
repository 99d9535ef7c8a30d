"""The store contract: the only thing a backend implements.

Everything shardclaim guarantees rests on one primitive, *write this object only if its generation is
still G*, where G = 0 means *only if the object is absent*. A backend must make that primitive atomic
across every process and machine that shares the store. Retry loops and claim logic never live in a
backend: they sit above it (:mod:`shardclaim.store.retry`, :mod:`shardclaim.manager`).

Keys are ``/``-separated relative names such as ``shard_007/metadata.json``. Custom metadata is a small
``str -> str`` mapping stored atomically with the bytes; lower-case keys of ``[a-z0-9-]`` and printable
ASCII values, at most :data:`MAX_METADATA_BYTES` in all, so that it survives every backend unchanged
(GCS carries it in HTTP headers, which fold case and trim spaces).

On a bucket anyone with write access can set an object's metadata apart from its bytes (``aws s3 cp
--metadata``), and a listing's decisions rest on the metadata alone. So the GCS and S3 stores bind the
metadata they write to the bytes and to its own values (:func:`bind_metadata`: the MD5 of the bytes'
MD5 and every key and value joins it) and hand back only metadata still bound to the very bytes listed
or read (:func:`bound_metadata`); any other reads as none, and its readers read the object instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final, Protocol, TypeAlias, TypeVar, runtime_checkable

from shardclaim.errors import InvalidKeyError, StoreClockError

__all__ = [
    "ABSENT",
    "CLOCK_READS",
    "MAX_CLOCK_SKEW",
    "MAX_METADATA_BYTES",
    "RESERVED_PREFIX",
    "Generation",
    "ObjectInfo",
    "Store",
    "StoredObject",
    "bind_metadata",
    "bound_metadata",
    "clock_checked",
    "content_md5",
    "http_date",
    "refuse_identical_rewrite",
    "store_clock",
    "store_now",
    "untimed_if_refused",
    "validate_key",
    "validate_metadata",
]

#: Names whose last part starts with this are the local backend's own files (locks, temporaries).
RESERVED_PREFIX = ".shardclaim"
#: Upper bound on the encoded size of one object's custom metadata (keys + values).
MAX_METADATA_BYTES = 2048 - 64  # S3 keeps 2 KiB of user metadata; the stores add a digest

#: One version of one object, as the store names it: a token compared only for *equality*. GCS and local
#: generations are increasing integers; a version that is a string (an S3 ETag, say) has no order, and
#: nothing above the store may compare two versions for anything but equality.
Generation: TypeAlias = int | str
#: The version that names "no object": ``write(..., if_generation_match=ABSENT)`` creates only.
ABSENT: Final = 0

_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_METADATA_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing or a successful write tells about one object."""

    key: str
    generation: Generation
    updated: datetime  #: last write, on the store's clock (timezone-aware UTC)
    size: int
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes together with the generation they belong to (one consistent snapshot)."""

    key: str
    data: bytes
    generation: Generation
    updated: datetime
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: When it was read, on the store's clock where the answer carries it (the ``Date`` of GCS's and S3's
    #: answers; None where :func:`store_clock` refuses it); a record of time (a claim's ``started_at``),
    #: never used to judge a lease.
    read_at: datetime | None = None


@runtime_checkable
class Store(Protocol):
    """A flat namespace of objects with compare-and-swap writes.

    What the algorithm above relies on:

    * ``write(key, data, if_generation_match=0)`` succeeds for exactly one of N concurrent callers;
      the others get :class:`~shardclaim.errors.GenerationMismatchError`.
    * ``write(key, data, if_generation_match=g)`` succeeds only if the object is at generation ``g``
      at the moment of the write, for exactly one of N concurrent callers naming ``g``.
    * A key's generation changes with every write, also across a delete and re-create, never comes back
      to a value it had while a holder could still name it, and is never :data:`ABSENT`. It is an opaque
      token (:data:`Generation`): nothing above the store orders two generations.
    * ``read`` returns bytes, generation and metadata of one and the same write.
    * ``updated`` and ``now()`` come from one clock, the store's, so expiry is judged without
      comparing two workers' clocks.

    Faults worth retrying raise :class:`~shardclaim.errors.TransientStoreError`; a missing object
    raises :class:`~shardclaim.errors.ObjectNotFoundError`.
    """

    @property
    def url(self) -> str:
        """The URL this store was opened from; fsspec can open ``url + "/" + key``."""
        ...

    def read(self, key: str) -> StoredObject:
        """Return the object's bytes, generation and metadata (one request)."""
        ...

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Replace the object; with ``if_generation_match`` only if it is at that generation."""
        ...

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` and ends with ``suffix``, sorted by key.

        One request per page of results. Metadata in a listing is as consistent as the backend
        makes it; decisions are confirmed by a conditional write, never taken on a listing alone.
        """
        ...

    def now(self) -> datetime:
        """The store's current time (timezone-aware UTC)."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a clean relative object name, else raise InvalidKeyError."""
    if not isinstance(key, str):
        raise InvalidKeyError(repr(key), f"keys are str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError(key, "empty key")
    if "\x00" in key:
        raise InvalidKeyError(key, "NUL character")
    if key.startswith("/"):
        raise InvalidKeyError(key, "absolute keys are not allowed")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(key, f"{part!r} is not allowed as a path part")
        if part.startswith(RESERVED_PREFIX):
            raise InvalidKeyError(key, f"names starting with {RESERVED_PREFIX!r} are reserved")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidKeyError(key, "longer than 1024 bytes")
    return key


def content_md5(data: bytes) -> str:
    """The bytes' MD5 (hex): an S3 object's ETag, and what :func:`bind_metadata` binds metadata to."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def refuse_identical_rewrite(key: str, md5_hex: str, if_generation_match: Generation | None) -> None:
    """On a store whose versions are the content's MD5 (S3 ETags), a conditional rewrite of the very bytes
    it replaces (``md5_hex``: theirs) would leave the version unchanged: a writer still holding that
    version could then win after it (ABA). Every writer puts a write token in its bytes; this refuses one
    that forgot."""
    if isinstance(if_generation_match, str) and md5_hex == if_generation_match:
        msg = (
            f"{key}: a conditional write of the same bytes as the version it replaces: on this store that "
            "version would not change (ABA); the writer must put a fresh write token in its bytes"
        )
        raise ValueError(msg)


#: The metadata key under which the GCS and S3 stores keep the digest binding metadata to the bytes.
DIGEST_KEY = "bound-md5"


def _binding(metadata: Mapping[str, str], md5_hex: str) -> str:
    """The MD5 of the bytes' MD5 and of every other metadata key and value: a change to either shows."""
    text = "\n".join([md5_hex, *(f"{k}={metadata[k]}" for k in sorted(metadata) if k != DIGEST_KEY)])
    return content_md5(text.encode())


def bind_metadata(metadata: Mapping[str, str], md5_hex: str) -> dict[str, str]:
    """``metadata`` as stored with the bytes whose MD5 is ``md5_hex``: bound to them (none for an object
    without metadata)."""
    if not metadata:
        return {}
    return {**metadata, DIGEST_KEY: _binding(metadata, md5_hex)}


def bound_metadata(stored: Mapping[str, str], md5_hex: str | None) -> dict[str, str]:
    """The metadata as written, if it was written with the bytes whose MD5 is ``md5_hex``, none of it
    edited since; else none. Where the bytes' MD5 is not known (``None``: an S3 object encrypted with
    KMS or a customer key, whose ETag is not its MD5), metadata the store wrote (it carries a binding) is
    taken as it is: such a bucket is guarded against metadata set by hand, not against an edited copy."""
    if DIGEST_KEY not in stored or (md5_hex is not None and stored[DIGEST_KEY] != _binding(stored, md5_hex)):
        return {}
    return {k: v for k, v in stored.items() if k != DIGEST_KEY}


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return a plain copy of ``metadata`` after checking it is portable across backends."""
    if metadata is None:
        return {}
    out: dict[str, str] = {}
    total = 0
    for k, v in metadata.items():
        if not isinstance(k, str) or not _METADATA_KEY.fullmatch(k):
            msg = f"metadata key must match [a-z0-9][a-z0-9-]*, got {k!r}"
            raise ValueError(msg)
        if not isinstance(v, str) or not _METADATA_VALUE.fullmatch(v):
            msg = f"metadata value for {k!r} must be printable ASCII without edge spaces, got {v!r}"
            raise ValueError(msg)
        total += len(k) + len(v)
        out[k] = v
    if total > MAX_METADATA_BYTES:
        msg = f"metadata is {total} bytes, more than the {MAX_METADATA_BYTES} allowed"
        raise ValueError(msg)
    return out


#: How far a store's clock (the ``Date`` of its answers) may be from this machine's. S3 refuses requests
#: signed further off; cloud machines keep NTP time. Further apart, one clock (or a gateway) is wrong.
MAX_CLOCK_SKEW = timedelta(minutes=15)


def http_date(value: str | None) -> datetime | None:
    """An HTTP date header as an aware UTC datetime; None for none, or one that does not parse or lies
    outside the years 1-9999. A date without a zone (the asctime form, ``-0000``, two headers joined by
    ``", "``) is GMT, as every HTTP date is: never this machine's local time."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def store_clock(store: str, when: datetime | None) -> datetime | None:
    """``when``, the store's time from an answer (None stays None), if it is within
    :data:`MAX_CLOCK_SKEW` of this machine's clock; else a :class:`StoreClockError` naming both clocks.

    Leases are timed by the store's clock alone, so that workers' clocks do not matter; but a Date of 2100
    (a gateway's, a misconfigured server's) would make every live lease look expired, and one of 1970
    would strand a dead holder's shard for ever. The stores ask again at once (:func:`clock_checked`), so
    one wrong answer (a glitch) costs a request, not a finished shard or a worker; a clock still wrong is
    refused at once, not waited out for minutes as an outage is: somebody has to fix a clock."""
    here = datetime.now(UTC)
    if when is not None and abs(when - here) > MAX_CLOCK_SKEW:
        off = abs(when - here).total_seconds()
        msg = (
            f"{store}: the store's clock (Date: {when:%Y-%m-%d %H:%M:%S} UTC) is {off:.0f} s from this "
            f"machine's ({here:%Y-%m-%d %H:%M:%S} UTC); more than 15 minutes apart, one of the two clocks "
            "(or a gateway between them) is wrong, and leases cannot be timed: fix the clock"
        )
        raise StoreClockError(msg)
    return when


def store_now(store: str, when: datetime | None) -> datetime:
    """A store's ``now()`` from its answer's Date: :func:`store_clock`'s, and an answer without a usable
    Date is refused as well (:class:`StoreClockError`: the store's clock is unknown)."""
    checked = store_clock(store, when)
    if checked is None:
        raise StoreClockError(f"{store}: no usable Date header in its answer")
    return checked


def untimed_if_refused(store: str, when: datetime | None) -> datetime | None:
    """A read's time (``read_at``, a record, never a lease's judge): ``when`` if :func:`store_clock`
    believes it, else None. A wrong Date does not keep anybody from reading a document (to give a shard
    back, say); only ``now()``, which times leases, refuses it."""
    try:
        return store_clock(store, when)
    except StoreClockError:
        return None


#: How many answers running must carry a clock :func:`store_clock` refuses before it is believed wrong.
CLOCK_READS = 3
_T = TypeVar("_T")


def clock_checked(request: Callable[[], _T]) -> _T:
    """``request()``, asked again at once (up to :data:`CLOCK_READS` answers in all) while the answer's
    clock is refused: a glitch of one answer passes, a wrong clock raises :class:`StoreClockError`."""
    for _ in range(CLOCK_READS - 1):
        try:
            return request()
        except StoreClockError:
            continue
    return request()
