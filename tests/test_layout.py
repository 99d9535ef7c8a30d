"""Metadata is data from the store: corrupt or hostile files are refused with the object named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shardclaim.layout import MetadataError, check_master, check_shard, parse_json

GOOD: dict[str, Any] = {
    "shard_id": 2,
    "total_shards": 4,
    "status": "available",
    "total_tasks": 3,
    "num_chunks": 1,
    "chunks": [
        {"chunk_id": 0, "file": "chunk_0000.jsonl", "num_tasks": 3, "size_mb": 0.1, "crc32c": "0a0b0c0d"}
    ],
    "assigned_to": None,
    "started_at": None,
    "completed_at": None,
}


def spoil(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    target: Any = doc
    *parents, last = path.split(".")
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    target[int(last) if last.isdigit() else last] = value
    return doc


def test_a_sound_shard_passes() -> None:
    assert check_shard("shard_002/metadata.json", copy.deepcopy(GOOD), expect_id=2) == GOOD


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("status", "done", "unknown status 'done'"),
        ("status", None, "unknown status None"),
        ("status", ["available"], r"unknown status \['available'\]"),  # unhashable: not a TypeError
        ("status", {"a": 1}, "unknown status {'a': 1}"),
        ("kind", [], "unknown kind"),
        ("chunks.0.file", "../../etc/passwd", "expected chunk_NNNN.jsonl"),
        ("chunks.0.file", "/etc/passwd", "expected chunk_NNNN.jsonl"),
        ("chunks.0.file", "chunk_0000.jsonl/../../x", "expected chunk_NNNN.jsonl"),
        ("chunks.0.num_tasks", "3", "'num_tasks' must be an integer"),
        ("chunks.0.num_tasks", -1, "'num_tasks' must be an integer"),
        ("total_tasks", 99, "total_tasks is 99 but the chunks hold 3"),
        ("num_chunks", 2, "num_chunks is 2 but 1 chunks are listed"),
        ("chunks", "chunk_0000.jsonl", "'chunks' must be a list"),
        ("shard_id", True, "'shard_id' must be an integer"),
        ("shard_id", 3, "belongs to shard 2"),
        ("assigned_to", 42, "'assigned_to' must be a string or null"),
        ("chunks.0.crc32c", "xyz", "expected 8 hex digits"),
        ("chunks.0.size_mb", -0.5, "'size_mb' must be a non-negative number"),
    ],
)
def test_hostile_shard_metadata_is_refused_naming_the_object(path: str, value: Any, message: str) -> None:
    with pytest.raises(MetadataError, match=message) as err:
        check_shard("shard_002/metadata.json", spoil(path, value), expect_id=2)
    assert err.value.key == "shard_002/metadata.json"
    assert str(err.value).startswith("shard_002/metadata.json: ")


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_unparseable_metadata_is_refused(data: bytes) -> None:
    with pytest.raises(MetadataError, match=r"master_metadata\.json: "):
        parse_json("master_metadata.json", data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_shards": 0}, "'num_shards' must be an integer in \\[1, 2\\*\\*53\\]"),
        ({"format_version": 99}, "format_version 99 is not one this shardclaim reads"),
        ({"shards": [{"shard_id": 0, "directory": "../elsewhere"}]}, "expected shard_NNN"),
        ({"shards": []}, "'shards' must list 1 shards"),
    ],
)
def test_hostile_master_metadata_is_refused(change: dict[str, Any], message: str) -> None:
    master = {"num_shards": 1, "total_tasks": 1, "chunk_size_mb": 1.0, "format_version": 1,
              "shards": [{"shard_id": 0, "directory": "shard_000"}]}  # fmt: skip
    master.update(change)
    with pytest.raises(MetadataError, match=message):
        check_master("master_metadata.json", master)
