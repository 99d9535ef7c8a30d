"""Where a shard's chunks are, for every kind of dataset (see :mod:`shardclaim.layout`): chunk files in
the shard's directory, task files of a ``files`` dataset, byte ranges of a ``by_reference`` one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shardclaim.layout import KINDS, one_of

__all__ = ["chunk_locations", "readable_chunks"]


def chunk_locations(shard: dict[str, Any], shard_url: str) -> list[str]:
    """Where each chunk of a checked shard document is: ``shard_url/chunk_NNNN.jsonl`` for copied
    records, the task file's path or URL for ``files``, and ``SOURCE#bytes=FIRST-LAST`` (inclusive, as
    an HTTP Range) for ``by_reference``. ``shard`` is a document or a claimed shard (whose entries are
    in ``chunk_info``)."""
    entries = shard.get("chunk_info", shard["chunks"])
    sources = shard.get("sources") or []
    kind = shard.get("kind")
    out = []
    for chunk in entries:
        if kind == "files":
            out.append(f"{sources[chunk['source']]['url'].rstrip('/')}/{chunk['file']}")
        elif kind == "by_reference":
            first = chunk["offset"]
            out.append(f"{sources[chunk['source']]['url']}#bytes={first}-{first + chunk['size_bytes'] - 1}")
        else:
            out.append(f"{shard_url.rstrip('/')}/{chunk['file']}")
    return out


def readable_chunks(shard: Mapping[str, Any]) -> list[str]:
    """A claimed shard's chunks as a command gets them (``SHARDCLAIM_CHUNKS``): the chunk files' paths or
    URLs, the task files of a ``files`` dataset, the ``SOURCE#bytes=FIRST-LAST`` ranges of a
    ``by_reference`` one (read those with ``shardclaim cat`` or ``iter_shard_records``)."""
    if not one_of(shard.get("kind"), KINDS):
        return list(shard["chunks"])
    return chunk_locations(dict(shard), "")
