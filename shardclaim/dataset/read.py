"""Reading a shard back, chunk by chunk, with every chunk's size and CRC32C checked, for every kind of
dataset (copied records, byte ranges of sources, file tasks)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from shardclaim.dataset.localfs import filesystem
from shardclaim.dataset.records import record_reader
from shardclaim.dataset.verified import IN_MEMORY, blocks, lines, verified_blocks, verify
from shardclaim.errors import ObjectNotFoundError, ShardclaimError
from shardclaim.layout import (
    MASTER_KEY,
    SHARD_METADATA,
    check_against_master,
    check_master,
    check_shard,
    parse_json,
)
from shardclaim.locations import chunk_locations
from shardclaim.store import open_store

__all__ = ["iter_shard_records", "open_shard", "verify_chunk"]

_IN_MEMORY = IN_MEMORY  # a chunk up to this size is read once, larger twice (see verified)


def iter_shard_records(
    dataset: str,
    shard_id: int,
    *,
    parse: bool = True,
    verify: bool = True,
    start_chunk: int = 0,
    stop_chunk: int | None = None,
) -> Iterator[Any]:
    """Yield the records of one shard's chunks ``start_chunk`` up to (not including) ``stop_chunk`` (all
    to the end by default), chunk by chunk, streaming.

    With ``verify`` (the default) each chunk's size and CRC32C are checked against the shard's metadata
    *before* any of its records is yielded (one extra streaming read of the chunk), so a corrupt chunk
    raises :class:`ChunkCorruptError` instead of feeding bad records to the caller.
    With ``parse`` records are parsed JSON values (integers beyond 64 bits as exact ints), else the raw
    line bytes (newline stripped).

    Every kind of dataset: copied records; byte ranges of the sources (``by_reference``: each range's
    CRC32C checked the same way, and the sources' pins first, so a source rewritten since the build is
    refused with :class:`~shardclaim.errors.ChunkCorruptError`); file tasks (``files``: each record is
    a file's path or URL, a ``str``, whatever ``parse``).
    """
    master, meta, fs, shard_url = open_shard(dataset, shard_id)
    kind = meta.get("kind")
    n = meta["num_chunks"]
    stop = n if stop_chunk is None else stop_chunk
    for name, value in (("start_chunk", start_chunk), ("stop_chunk", stop)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
            raise ValueError(f"{name} must be in 0..{n} (the shard has {n} chunks), got {value!r}")
    if start_chunk > stop:
        raise ValueError(f"start_chunk {start_chunk} is past stop_chunk {stop}")
    entries = meta["chunks"][start_chunk:stop]
    if kind == "files":  # each chunk is one task: the file's path or URL
        yield from chunk_locations({**meta, "chunks": entries}, shard_url)
        return
    loads = record_reader(master)
    if kind == "by_reference":
        from shardclaim.dataset.byref_read import range_lines

        for line in range_lines(meta, entries, verify=verify):
            yield loads(line) if parse else line
        return
    for chunk in entries:
        path = f"{shard_url}/{chunk['file']}"
        read = functools.partial(blocks, fs, path)
        checked = verified_blocks(
            read, path, size=chunk.get("size_bytes"), crc=chunk.get("crc32c"), in_memory=_IN_MEMORY
        )
        for records in lines(checked if verify else read()):
            yield from map(loads, records) if parse else records


def open_shard(dataset: str, shard_id: int) -> tuple[dict[str, Any], dict[str, Any], Any, str]:
    """``(master, shard metadata, filesystem, shard directory URL)``, both documents checked, the shard's
    sources against the master's."""
    store = open_store(dataset)
    try:
        master = check_master(MASTER_KEY, parse_json(MASTER_KEY, store.read(MASTER_KEY).data))
    except ObjectNotFoundError:
        msg = f"{dataset} is not a complete shardclaim dataset: it has no {MASTER_KEY}"
        raise ShardclaimError(msg) from None
    if not isinstance(shard_id, int) or not 0 <= shard_id < master["num_shards"]:
        raise ValueError(f"shard_id must be in 0..{master['num_shards'] - 1}, got {shard_id!r}")
    directory = master["shards"][shard_id]["directory"]
    key = f"{directory}/{SHARD_METADATA}"
    meta = check_shard(key, parse_json(key, store.read(key).data), expect_id=shard_id)
    check_against_master(key, meta, master)
    fs, base = filesystem(store.url)
    return master, meta, fs, f"{base.rstrip('/')}/{directory}"


def verify_chunk(fs: Any, path: str, chunk: dict[str, Any]) -> None:
    """Read a copied chunk once and check its size and CRC32C against its metadata entry."""
    verify(functools.partial(blocks, fs, path), path, size=chunk.get("size_bytes"), crc=chunk.get("crc32c"))
