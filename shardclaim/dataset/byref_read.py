"""Reading a zero-copy dataset's byte ranges (see :mod:`shardclaim.dataset.byref`), each checked.

A source is checked against its pins before any of its ranges is served, and each range against its
size and CRC32C before any of its bytes (:mod:`shardclaim.dataset.verified`: held up to 64 MiB, else read
twice, block by block against the first read), and found to start and end at line ends. A range whose
records are not as many as its metadata counts is an error once they are out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from shardclaim.dataset.inputs import is_blank
from shardclaim.dataset.localfs import is_local
from shardclaim.dataset.records import BOM
from shardclaim.dataset.verified import IN_MEMORY, blocks, lines, verified_blocks
from shardclaim.errors import ChunkCorruptError

__all__ = ["check_count", "check_pins", "pins", "range_bytes", "range_lines"]

_IN_MEMORY = IN_MEMORY  # a range up to this size is read once and checked in memory; larger, twice


def pins(fs: Any, path: str) -> dict[str, Any]:
    """What pins a source's content: its size, and its modification time (ns) locally, its generation
    (GCS) or ETag (S3) remotely. The build records them; readers compare them."""
    if is_local(fs):
        st = os.stat(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    info = fs.info(path)
    pin: dict[str, Any] = {"size": int(info["size"])}
    for field, key in (("generation", "generation"), ("etag", "ETag"), ("etag", "etag")):
        if info.get(key) not in (None, ""):
            pin[field] = str(info[key])
    return pin


def check_pins(sources: list[dict[str, Any]], used: set[int]) -> None:
    """Each source the ranges use is still what the build read; else :class:`ChunkCorruptError`."""
    from shardclaim.dataset.localfs import filesystem

    for index in sorted(used):
        source = sources[index]
        url = source["url"]
        fs, path = filesystem(url)
        try:
            now = pins(fs, path)
        except FileNotFoundError:
            raise ChunkCorruptError(url, "the source read by reference is gone") from None
        for field in ("size", "mtime_ns", "generation", "etag"):
            if field in source and now.get(field) != source[field]:
                raise ChunkCorruptError(
                    url, f"the source changed after the build ({field} {now.get(field)!r}, built from "
                    f"{source[field]!r}); rebuild the dataset",
                )  # fmt: skip


def range_bytes(sources: list[dict[str, Any]], chunk: dict[str, Any], *, verify: bool) -> Iterator[bytes]:
    """The bytes of one range, in blocks; with ``verify`` none before the whole range's size and CRC32C
    are checked, and its ends found at line ends (:func:`~shardclaim.dataset.verified.verified_blocks`)."""
    from shardclaim.dataset.localfs import filesystem

    url = sources[chunk["source"]]["url"]
    fs, path = filesystem(url)
    offset, length = chunk["offset"], chunk["size_bytes"]
    if not verify:
        yield from _blocks(fs, path, offset, length)
        return
    where = _where(url, chunk)
    if (
        offset > 0
        and _read(fs, path, offset - 1, 1) != b"\n"
        and not (offset == 3 and _read(fs, path, 0, 3) == BOM)
    ):
        raise ChunkCorruptError(where, "the range does not start at a line's start")
    if (
        _read(fs, path, offset + length - 1, 1) != b"\n"
        and offset + length != sources[chunk["source"]]["size"]
    ):
        raise ChunkCorruptError(where, "the range does not end at a line's end")
    yield from verified_blocks(
        lambda: _blocks(fs, path, offset, length), where, size=length, crc=chunk["crc32c"],
        in_memory=_IN_MEMORY, why=": the source changed",
    )  # fmt: skip


def _where(url: str, chunk: dict[str, Any]) -> str:
    return f"{url}#bytes={chunk['offset']}-{chunk['offset'] + chunk['size_bytes'] - 1}"


def _read(fs: Any, path: str, offset: int, length: int) -> bytes:
    return b"".join(_blocks(fs, path, offset, length))


def _blocks(fs: Any, path: str, offset: int, length: int) -> Iterator[bytes]:
    return blocks(fs, path, offset, length)


def range_lines(meta: dict[str, Any], entries: list[dict[str, Any]], *, verify: bool) -> Iterator[bytes]:
    """The records (lines without their newline, blank lines skipped) of the ranges ``entries``; a range
    whose records are not as many as its ``num_tasks`` says is an error once they are out."""
    sources = meta["sources"]
    check_pins(sources, {c["source"] for c in entries})
    for chunk in entries:
        count = 0
        for records in lines(range_bytes(sources, chunk, verify=verify)):
            for line in records:
                if line and not (line[0] in b" \t\r" and is_blank(line + b"\n")):
                    count += 1
                    yield line
        check_count(sources[chunk["source"]]["url"], chunk, count)


def check_count(url: str, chunk: dict[str, Any], count: int) -> None:
    if count != chunk["num_tasks"]:
        raise ChunkCorruptError(_where(url, chunk), f"{count} records, metadata records {chunk['num_tasks']}")
