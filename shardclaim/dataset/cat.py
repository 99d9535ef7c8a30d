"""A shard's records as JSONL bytes, verified, for every kind of dataset (``shardclaim cat``).

Copied chunks and byte ranges are passed on as stored, in large blocks (no per-record work); a chunk's
bytes are handed out only once its size and CRC32C have been checked (in memory up to 64 MiB, else by a
first streaming read, then a second that stops at the first block read after the file was written). A
range's blank lines are left out and a last line without its newline gets one, so the output is exactly
the records, one per line. File tasks come out as JSON strings, one per line.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import orjson

from shardclaim.dataset.deal import excluded_blanks
from shardclaim.dataset.inputs import is_blank
from shardclaim.dataset.read import open_shard
from shardclaim.dataset.verified import IN_MEMORY, blocks, verified_blocks
from shardclaim.locations import chunk_locations

__all__ = ["shard_jsonl"]

_IN_MEMORY = IN_MEMORY


def shard_jsonl(dataset: str, shard_id: int, *, start_chunk: int = 0) -> Iterator[bytes]:
    """The records of chunks ``start_chunk``... of shard ``shard_id`` as JSONL, in blocks."""
    _, meta, fs, shard_url = open_shard(dataset, shard_id)
    if not isinstance(start_chunk, int) or not 0 <= start_chunk <= meta["num_chunks"]:
        msg = f"the shard has {meta['num_chunks']} chunks; --from-chunk {start_chunk} is past them"
        raise ValueError(msg)
    entries = meta["chunks"][start_chunk:]
    kind = meta.get("kind")
    if kind == "files":
        urls = chunk_locations({**meta, "chunks": entries}, shard_url)
        yield b"".join(orjson.dumps(u) + b"\n" for u in urls)
        return
    if kind == "by_reference":
        yield from _ranges(meta, entries)
        return
    for chunk in entries:
        path = f"{shard_url}/{chunk['file']}"
        read = functools.partial(blocks, fs, path)
        yield from verified_blocks(
            read, path, size=chunk.get("size_bytes"), crc=chunk.get("crc32c"), in_memory=_IN_MEMORY
        )


def _ranges(meta: dict[str, Any], entries: list[dict[str, Any]]) -> Iterator[bytes]:
    from shardclaim.dataset.byref_read import check_count, check_pins, range_bytes

    sources = meta["sources"]
    check_pins(sources, {c["source"] for c in entries})
    for chunk in entries:
        carry, count = b"", 0
        for block in range_bytes(sources, chunk, verify=True):
            data = carry + block if carry else block
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if end:
                records = _without_blanks(data, end)
                count += records.count(b"\n")
                yield records
        if carry:
            line = carry + b"\n"
            if not is_blank(line):
                count += 1
                yield line
        check_count(sources[chunk["source"]]["url"], chunk, count)


def _without_blanks(data: bytes, end: int) -> bytes:
    holes = excluded_blanks(data, 0, end)
    if not holes:
        return data[:end] if end < len(data) else data
    parts, pos = [], 0
    for a, b in holes:
        parts.append(data[pos:a])
        pos = b
    parts.append(data[pos:end])
    return b"".join(parts)
