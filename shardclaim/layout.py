"""The dataset layout (seed-compatible) and the checks every metadata file passes before it is used.

::

    DATASET/
      master_metadata.json      written last by the builder; its presence means the build is whole
      shard_000/metadata.json   one per shard; the live state workers compare-and-swap on
      shard_000/chunk_0000.jsonl

A metadata file is data from the store, so it is *checked*, never trusted: unknown status values, chunk
names that leave the shard directory (``../x``, ``/etc/passwd``), wrong types and impossible counts are
refused with :class:`MetadataError` naming the object.

Format version 1 is a dataset of copied records (``chunk_NNNN.jsonl`` files in the shard directories).
Format version 2 adds datasets whose chunks live elsewhere, named by the master's and every shard's
``kind`` and ``sources`` (a list of ``{"url": ...}`` objects, the same list in both); each chunk entry
names its source by index, never by a URL of its own, so no entry can point outside the recorded sources:

* ``"kind": "files"`` (``create --files``): each chunk is one task, a file: ``file`` is its path relative
  to its source (a directory or URL prefix), without ``..``, ``.`` or empty segments;
* ``"kind": "by_reference"`` (``create --by-reference``): each chunk is a byte range of a source file:
  ``offset`` and ``size_bytes`` inside the source's recorded ``size``, ``crc32c`` of the range required;
  the source is pinned (``size`` and ``mtime_ns`` locally, ``generation`` on GCS, ``etag`` on S3).

Claims and readers check a shard against the master (:func:`check_against_master`).
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from typing import Any, Literal

import orjson

from shardclaim.crc import crc32c
from shardclaim.errors import MetadataError

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSION_REFERENCES",
    "KINDS",
    "MASTER_KEY",
    "MAX_LEASE_SECONDS",
    "STATUSES",
    "MetadataError",
    "ShardStatus",
    "check_against_master",
    "check_master",
    "check_shard",
    "chunk_name",
    "chunks_digest",
    "parse_json",
    "shard_dir",
]

FORMAT_VERSION = 1
#: Datasets whose chunks are files or byte ranges elsewhere (``kind`` "files" or "by_reference").
FORMAT_VERSION_REFERENCES = 2
KINDS: frozenset[str] = frozenset({"files", "by_reference"})
MASTER_KEY = "master_metadata.json"
SHARD_METADATA = "metadata.json"
ShardStatus = Literal["available", "in_use", "completed", "failed"]
STATUSES: frozenset[str] = frozenset({"available", "in_use", "completed", "failed"})

#: The longest lease anyone may take (a week). Longer leases are refused when given and, found in a
#: shard's metadata, make that shard invalid: a lease that never ends is a shard nobody can reclaim.
MAX_LEASE_SECONDS = 7 * 24 * 3600.0

_CHUNK_FILE = re.compile(r"chunk_[0-9]{4,}\.jsonl")
_SHARD_DIR = re.compile(r"shard_[0-9]{3,}")


def shard_dir(shard_id: int, num_shards: int) -> str:
    """``shard_007``: three digits at least, more when there are over 1,000 shards, so names sort."""
    width = max(3, len(str(max(num_shards - 1, 0))))
    return f"shard_{shard_id:0{width}d}"


def chunk_name(chunk_id: int) -> str:
    return f"chunk_{chunk_id:04d}.jsonl"


def parse_json(key: str, data: bytes) -> dict[str, Any]:
    """Parse a metadata object, refusing anything but a JSON object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MetadataError(key, f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise MetadataError(key, f"expected a JSON object, got {type(value).__name__}")
    return value


#: The largest integer a metadata file may hold: exact as a JSON double, and far from the 64-bit limit
#: past which the writer's JSON encoder fails (a counter of 2**64 - 1 would crash the next increment).
MAX_INT = 2**53


def one_of(value: Any, names: frozenset[str]) -> bool:
    """Whether a document's value is one of ``names``: a list or an object (unhashable) is not, and is
    no TypeError either."""
    return isinstance(value, str) and value in names


def _int(key: str, doc: dict[str, Any], field: str, *, minimum: int = 0) -> int:
    value = doc.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_INT:
        raise MetadataError(key, f"{field!r} must be an integer in [{minimum}, 2**53], got {value!r}")
    return value


def _number(key: str, doc: dict[str, Any], field: str) -> float:
    value = doc.get(field)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise MetadataError(key, f"{field!r} must be a non-negative number, got {value!r}")
    return float(value)


def _opt_str(key: str, doc: dict[str, Any], field: str) -> None:
    value = doc.get(field)
    if value is not None and not isinstance(value, str):
        raise MetadataError(key, f"{field!r} must be a string or null, got {value!r}")


def check_shard(key: str, doc: dict[str, Any], *, expect_id: int | None = None) -> dict[str, Any]:
    """Validate a shard's ``metadata.json``; return it unchanged if sound."""
    shard_id = _int(key, doc, "shard_id")
    if expect_id is not None and shard_id != expect_id:
        raise MetadataError(key, f"shard_id is {shard_id}, but the object belongs to shard {expect_id}")
    _int(key, doc, "total_shards", minimum=1)
    status = doc.get("status")
    if not one_of(status, STATUSES):
        raise MetadataError(key, f"unknown status {status!r}; expected one of {sorted(STATUSES)}")
    total = _int(key, doc, "total_tasks")
    chunks = doc.get("chunks")
    if not isinstance(chunks, list):
        raise MetadataError(key, f"'chunks' must be a list, got {type(chunks).__name__}")
    if _int(key, doc, "num_chunks") != len(chunks):
        raise MetadataError(key, f"num_chunks is {doc['num_chunks']} but {len(chunks)} chunks are listed")
    kind = doc.get("kind")
    sources = _check_kind(key, doc) if kind is not None else []
    counted = 0
    for i, chunk in enumerate(chunks):
        counted += _check_chunk(key, i, chunk, kind, sources)
    if kind == "by_reference":  # no byte of a source in two ranges: its records would be served twice
        spans = sorted(
            (c["source"], c["offset"], c["offset"] + c["size_bytes"], i) for i, c in enumerate(chunks)
        )
        for (src, _, end, i), (nxt, start, _, j) in itertools.pairwise(spans):
            if src == nxt and start < end:
                raise MetadataError(key, f"chunks {i} and {j} are overlapping byte ranges of one source")
    if counted != total:
        raise MetadataError(key, f"total_tasks is {total} but the chunks hold {counted}")
    for field in ("assigned_to", "started_at", "completed_at", "last_error", "write_token"):
        _opt_str(key, doc, field)
    _check_state(key, doc)
    return doc


def _check_chunk(key: str, i: int, chunk: object, kind: object, sources: list[dict[str, Any]]) -> int:
    """One entry of a shard's ``chunks``; its ``num_tasks``."""
    if not isinstance(chunk, dict):
        raise MetadataError(key, f"chunk {i} is not an object")
    name = chunk.get("file")
    if kind == "files":
        _check_task_file(key, i, chunk, sources)
    elif not isinstance(name, str) or not _CHUNK_FILE.fullmatch(name):
        raise MetadataError(key, f"chunk {i} has file name {name!r}; expected chunk_NNNN.jsonl")
    elif kind == "by_reference":
        _check_range(key, i, chunk, sources)
    elif "source" in chunk or "offset" in chunk:
        raise MetadataError(key, f"chunk {i} names a source, but the shard has no 'kind'")
    if _int(key, chunk, "chunk_id") != i:
        raise MetadataError(key, f"chunk {i} has chunk_id {chunk['chunk_id']}")
    tasks = _int(key, chunk, "num_tasks")
    _number(key, chunk, "size_mb")
    if "size_bytes" in chunk:
        _int(key, chunk, "size_bytes")
    crc = chunk.get("crc32c")
    if crc is not None and (not isinstance(crc, str) or not re.fullmatch(r"[0-9a-f]{8}", crc)):
        raise MetadataError(key, f"chunk {i} has crc32c {crc!r}; expected 8 hex digits")
    return tasks


def _check_state(key: str, doc: dict[str, Any]) -> None:
    """The fields the lease protocol writes: counters, the lease, the holder."""
    for field in (
        "attempt", "failures", "heartbeats", "resume_chunk", "expired_leases", "expiries_without_progress",
        "progress_at_expiry", "cannot_start", "reserved_chunk",
    ):  # fmt: skip
        if doc.get(field) is not None:
            _int(key, doc, field)
    for field in ("resume_chunk", "reserved_chunk"):  # past the end would complete chunks nobody did
        if (doc.get(field) or 0) > doc["num_chunks"]:
            raise MetadataError(key, f"{field} is {doc[field]} but the shard has {doc['num_chunks']} chunks")
    lease = doc.get("lease")
    if lease is not None:
        _check_lease(key, lease)
    attempts = doc.get("attempts")
    if attempts is not None and (
        not isinstance(attempts, list)
        or len(attempts) > 100
        or not all(isinstance(a, dict) for a in attempts)
    ):
        raise MetadataError(key, "'attempts' must be a list of at most 100 objects")
    for attempt in attempts or []:
        duration = attempt.get("duration_s", 0)
        if not isinstance(duration, int | float) or isinstance(duration, bool) or not 0 <= duration < 1e12:
            raise MetadataError(key, f"an attempt's duration_s must be a number of seconds, got {duration!r}")
    if doc.get("ranges") is not None:
        _check_ranges(key, doc)
    elif doc["status"] == "in_use" and lease is None and not isinstance(doc.get("assigned_to"), str):
        raise MetadataError(key, "status is in_use but the shard names no holder")


def _check_time(key: str, doc: dict[str, Any], field: str) -> None:
    """An optional time written by the protocol: ISO 8601 with its UTC offset (a naive time compares
    with nothing)."""
    value = doc.get(field)
    if value is None:
        return
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise MetadataError(key, f"{field} must be an ISO 8601 time with its UTC offset, got {value!r}")


def _check_lease(key: str, lease: object) -> None:
    if not isinstance(lease, dict):
        raise MetadataError(key, f"'lease' must be an object or null, got {lease!r}")
    for field in ("token", "worker"):
        value = lease.get(field)
        if not isinstance(value, str) or not value:
            raise MetadataError(key, f"lease {field!r} must be a non-empty string, got {value!r}")
    check_lease_seconds(key, lease.get("lease_seconds"))


def _check_ranges(key: str, doc: dict[str, Any]) -> None:
    """A split shard's parts (lease.ranges): each a sound state of its own, in order, covering every
    chunk exactly once; a part's cursor and reservation inside it."""
    parts, num = doc["ranges"], doc["num_chunks"]
    if not isinstance(parts, list) or not 1 <= len(parts) <= max(1, num):
        raise MetadataError(key, f"'ranges' must be a list of 1 to {max(1, num)} parts")
    at = 0
    for i, part in enumerate(parts):
        where = f"{key} part {i}"
        if not isinstance(part, dict) or not one_of(part.get("status"), STATUSES) or "ranges" in part:
            raise MetadataError(key, f"part {i} must be an object with a known status")
        if part["status"] == "in_use" and not isinstance(part.get("lease"), dict):
            raise MetadataError(key, f"part {i} is in_use but names no lease")
        start, end = _int(where, part, "start"), _int(where, part, "end")
        if start != at or end <= start:
            raise MetadataError(
                key, f"part {i} covers [{start}, {end}); the parts must cover chunks in order"
            )
        for field in ("resume_chunk", "reserved_chunk"):
            if part.get(field) is not None and not start <= _int(where, part, field) <= end:
                raise MetadataError(key, f"part {i}'s {field} is outside its chunks [{start}, {end})")
        _check_time(where, part, "renewed_at")
        _check_state(where, {**part, "num_chunks": num})
        at = end
    if at != num:
        raise MetadataError(key, f"the parts cover {at} of {num} chunks")


def check_lease_seconds(key: str, value: object) -> float:
    """A lease length from the store: a finite number of seconds in (0, MAX_LEASE_SECONDS]."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 < value <= MAX_LEASE_SECONDS  # also refuses NaN
    ):
        raise MetadataError(
            key, f"lease_seconds must be a number in (0, {MAX_LEASE_SECONDS:.0f}], got {value!r}"
        )
    return float(value)


def check_master(key: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Validate ``master_metadata.json``; return it unchanged if sound."""
    num = _int(key, doc, "num_shards", minimum=1)
    _int(key, doc, "total_tasks")
    _number(key, doc, "chunk_size_mb")
    version = doc.get("format_version", FORMAT_VERSION)
    if version not in (FORMAT_VERSION, FORMAT_VERSION_REFERENCES) or isinstance(version, bool):
        raise MetadataError(key, f"format_version {version!r} is not one this shardclaim reads")
    if (version == FORMAT_VERSION_REFERENCES) != ("kind" in doc):
        raise MetadataError(key, f"format_version {version} with kind {doc.get('kind')!r}")
    if "kind" in doc:
        _check_kind(key, doc)
    shards = doc.get("shards")
    if not isinstance(shards, list) or len(shards) != num:
        raise MetadataError(key, f"'shards' must list {num} shards")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or entry.get("shard_id") != i:
            raise MetadataError(key, f"shards[{i}] must be an object with shard_id {i}")
        directory = entry.get("directory")
        if not isinstance(directory, str) or not _SHARD_DIR.fullmatch(directory):
            raise MetadataError(key, f"shards[{i}] has directory {directory!r}; expected shard_NNN")
        digest = entry.get("chunks_crc32c")
        if digest is not None and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{8}", digest)):
            raise MetadataError(key, f"shards[{i}] has chunks_crc32c {digest!r}; expected 8 hex digits")
    return doc


def chunks_digest(chunks: list[Any]) -> str:
    """The CRC32C of a shard's chunk list (keys sorted): the master keeps each shard's, as built."""
    return f"{crc32c(orjson.dumps(chunks, option=orjson.OPT_SORT_KEYS)):08x}"


def check_against_master(key: str, shard: dict[str, Any], master: dict[str, Any]) -> None:
    """A checked shard names the master's sources, and (where the master recorded them) exactly the chunks
    and counts the build wrote: a hand-edited shard cannot add another shard's ranges or files, nor drop
    its own (chunks never change after the build)."""
    if shard.get("kind") != master.get("kind") or shard.get("sources") != master.get("sources"):
        raise MetadataError(key, "its kind or sources differ from the master's")
    entry = master["shards"][shard["shard_id"]]
    for field in ("num_chunks", "total_tasks"):
        if field in entry and entry[field] != shard[field]:
            raise MetadataError(key, f"its {field} is {shard[field]}, the master's {entry[field]}")
    digest = entry.get("chunks_crc32c")
    if digest is not None and digest != chunks_digest(shard["chunks"]):
        raise MetadataError(key, "its chunks are not those the build recorded in the master")


# -- format version 2: chunks that are files or byte ranges of recorded sources ------------------------

_SCHEMES = re.compile(r"[a-z][a-z0-9+.-]*://[^?#\x00-\x1f]+")


def _check_kind(key: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``kind`` and ``sources`` of a version-2 master or shard; the sources."""
    kind = doc.get("kind")
    if not one_of(kind, KINDS):
        raise MetadataError(key, f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    sources = doc.get("sources")
    if not isinstance(sources, list) or not sources or len(sources) > 1_000_000:
        raise MetadataError(key, "'sources' must be a non-empty list")
    for i, source in enumerate(sources):
        if not isinstance(source, dict):
            raise MetadataError(key, f"sources[{i}] is not an object")
        url = source.get("url")
        # An absolute local path or a URL without credentials, query or fragment (the builder records
        # none: see inputs.shown), and no '..' segment anywhere.
        if (
            not isinstance(url, str)
            or not (url.startswith("/") or _SCHEMES.fullmatch(url))
            or any(ord(c) < 0x20 for c in url)  # (a newline would split SHARDCLAIM_CHUNKS's entries)
            or ".." in url.split("/")
        ):
            raise MetadataError(key, f"sources[{i}] has url {url!r}; expected an absolute path or URL")
        if kind == "by_reference":
            _int(key, source, "size")
            mtime = source.get("mtime_ns")  # nanoseconds since 1970: beyond 2**53, exact as JSON integers
            if mtime is not None and (not isinstance(mtime, int) or isinstance(mtime, bool) or mtime < 0):
                raise MetadataError(key, f"sources[{i}] has mtime_ns {mtime!r}")
            for field in ("generation", "etag"):
                value = source.get(field)
                if value is not None and not isinstance(value, str | int):
                    raise MetadataError(key, f"sources[{i}] has {field} {value!r}")
    return sources


def _source_of(key: str, i: int, chunk: dict[str, Any], sources: list[dict[str, Any]]) -> dict[str, Any]:
    index = chunk.get("source")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(sources):
        raise MetadataError(key, f"chunk {i} has source {index!r}; expected an index into 'sources'")
    return sources[index]


def _check_task_file(key: str, i: int, chunk: dict[str, Any], sources: list[dict[str, Any]]) -> None:
    _source_of(key, i, chunk, sources)
    name = chunk.get("file")
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 4096
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or any(ord(c) < 0x20 for c in name)
    ):
        raise MetadataError(key, f"chunk {i} has file {name!r}; expected a relative path inside its source")


def _check_range(key: str, i: int, chunk: dict[str, Any], sources: list[dict[str, Any]]) -> None:
    source = _source_of(key, i, chunk, sources)
    offset = _int(key, chunk, "offset")
    length = _int(key, chunk, "size_bytes", minimum=1)
    if not 1 <= _int(key, chunk, "num_tasks") <= length:  # a record takes a byte at least
        raise MetadataError(key, f"chunk {i} holds {chunk['num_tasks']} records in {length} bytes")
    if offset + length > source["size"]:
        end = offset + length
        raise MetadataError(key, f"chunk {i} ends at byte {end}, past its source's {source['size']}")
    if not isinstance(chunk.get("crc32c"), str):
        raise MetadataError(key, f"chunk {i} is a byte range without a crc32c")
