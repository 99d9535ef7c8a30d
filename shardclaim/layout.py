"""The dataset layout (seed-compatible) and the checks every metadata file passes before it is used.

::

    DATASET/
      master_metadata.json      written last by the builder; its presence means the build is whole
      shard_000/metadata.json   one per shard; the live state workers compare-and-swap on
      shard_000/chunk_0000.jsonl

A metadata file is data from the store, so it is *checked*, never trusted: unknown status values, chunk
names that leave the shard directory (``../x``, ``/etc/passwd``), wrong types and impossible counts are
refused with :class:`MetadataError` naming the object.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson

from shardclaim.errors import MetadataError

__all__ = [
    "FORMAT_VERSION",
    "MASTER_KEY",
    "MAX_LEASE_SECONDS",
    "STATUSES",
    "MetadataError",
    "ShardStatus",
    "check_master",
    "check_shard",
    "chunk_name",
    "parse_json",
    "shard_dir",
]

FORMAT_VERSION = 1
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
    if status not in STATUSES:
        raise MetadataError(key, f"unknown status {status!r}; expected one of {sorted(STATUSES)}")
    total = _int(key, doc, "total_tasks")
    chunks = doc.get("chunks")
    if not isinstance(chunks, list):
        raise MetadataError(key, f"'chunks' must be a list, got {type(chunks).__name__}")
    if _int(key, doc, "num_chunks") != len(chunks):
        raise MetadataError(key, f"num_chunks is {doc['num_chunks']} but {len(chunks)} chunks are listed")
    counted = 0
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            raise MetadataError(key, f"chunk {i} is not an object")
        name = chunk.get("file")
        if not isinstance(name, str) or not _CHUNK_FILE.fullmatch(name):
            raise MetadataError(key, f"chunk {i} has file name {name!r}; expected chunk_NNNN.jsonl")
        if _int(key, chunk, "chunk_id") != i:
            raise MetadataError(key, f"chunk {i} has chunk_id {chunk['chunk_id']}")
        counted += _int(key, chunk, "num_tasks")
        _number(key, chunk, "size_mb")
        if "size_bytes" in chunk:
            _int(key, chunk, "size_bytes")
        crc = chunk.get("crc32c")
        if crc is not None and (not isinstance(crc, str) or not re.fullmatch(r"[0-9a-f]{8}", crc)):
            raise MetadataError(key, f"chunk {i} has crc32c {crc!r}; expected 8 hex digits")
    if counted != total:
        raise MetadataError(key, f"total_tasks is {total} but the chunks hold {counted}")
    for field in ("assigned_to", "started_at", "completed_at", "last_error", "write_token"):
        _opt_str(key, doc, field)
    _check_state(key, doc)
    return doc


def _check_state(key: str, doc: dict[str, Any]) -> None:
    """The fields the lease protocol writes: counters, the lease, the holder."""
    for field in (
        "attempt", "failures", "heartbeats", "resume_chunk", "expired_leases", "expiries_without_progress",
        "progress_at_expiry",
    ):  # fmt: skip
        if doc.get(field) is not None:
            _int(key, doc, field)
    resume = doc.get("resume_chunk") or 0
    if resume > doc["num_chunks"]:  # a checkpoint past the end would complete a shard nobody processed
        raise MetadataError(key, f"resume_chunk is {resume} but the shard has {doc['num_chunks']} chunks")
    lease = doc.get("lease")
    if lease is not None:
        if not isinstance(lease, dict):
            raise MetadataError(key, f"'lease' must be an object or null, got {lease!r}")
        for field in ("token", "worker"):
            value = lease.get(field)
            if not isinstance(value, str) or not value:
                raise MetadataError(key, f"lease {field!r} must be a non-empty string, got {value!r}")
        check_lease_seconds(key, lease.get("lease_seconds"))
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
    if doc["status"] == "in_use" and lease is None and not isinstance(doc.get("assigned_to"), str):
        raise MetadataError(key, "status is in_use but the shard names no holder")


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
    if version != FORMAT_VERSION:
        raise MetadataError(key, f"format_version {version!r} is not one this shardclaim reads")
    shards = doc.get("shards")
    if not isinstance(shards, list) or len(shards) != num:
        raise MetadataError(key, f"'shards' must list {num} shards")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or entry.get("shard_id") != i:
            raise MetadataError(key, f"shards[{i}] must be an object with shard_id {i}")
        directory = entry.get("directory")
        if not isinstance(directory, str) or not _SHARD_DIR.fullmatch(directory):
            raise MetadataError(key, f"shards[{i}] has directory {directory!r}; expected shard_NNN")
    return doc
