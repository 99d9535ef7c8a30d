"""Bytes handed out only once checked: a chunk file or a byte range read against its size and CRC32C.

Up to 64 MiB the bytes are read once, held, checked and handed out. A larger one is read twice: the first
read checks the whole against the metadata and keeps the CRC32C of each 8 MiB block; the second hands out
each block only if its CRC32C is the one the first read saw. So a file rewritten between the two reads
(in place with its times put back, through a shared mapping, replaced by a rename) stops the output at the
first block that changed, and no byte that was not checked ever goes out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shardclaim.crc import crc32c
from shardclaim.errors import ChunkCorruptError

__all__ = ["BLOCK", "IN_MEMORY", "blocks", "lines", "verified_blocks", "verify"]

BLOCK = 8 << 20
IN_MEMORY = 64 << 20  # read once and held up to this size; larger, read twice


def blocks(fs: Any, path: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """``path``'s bytes from ``offset`` (``length`` of them, or to the end) in blocks of exactly
    :data:`BLOCK` bytes but the last, however the filesystem cuts its reads (both reads of
    :func:`verified_blocks` must cut the same blocks)."""
    with fs.open(path, "rb") as f:
        if offset:
            f.seek(offset)
        left = length
        while left is None or left > 0:
            want = BLOCK if left is None else min(left, BLOCK)
            parts, got = [], 0
            while got < want and (piece := f.read(want - got)):
                parts.append(piece)
                got += len(piece)
            if not got:
                return
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            if left is not None:
                left -= got
            if got < want:
                return


def lines(blocks: Iterable[bytes]) -> Iterator[list[bytes]]:
    """The lines of a run of blocks, without their newlines (a last line without one as well), a list a
    block (a caller's ``yield from`` each list keeps one generator step a line, on the readers' hot path)."""
    carry = b""
    for block in blocks:
        parts = block.split(b"\n")
        if carry:
            parts[0] = carry + parts[0]
        carry = parts.pop()
        yield parts
    if carry:
        yield [carry]


def verify(read: Callable[[], Iterator[bytes]], where: str, *, size: int | None, crc: str | None) -> None:
    """Read once and check the whole against ``size`` and ``crc`` (either may be None: not recorded)."""
    total = whole = 0
    for block in read():
        whole = crc32c(block, value=whole)
        total += len(block)
    _check(where, total, whole, size=size, crc=crc)


def verified_blocks(
    read: Callable[[], Iterator[bytes]],
    where: str,
    *,
    size: int | None,
    crc: str | None,
    in_memory: int = IN_MEMORY,
    why: str = "",
) -> Iterator[bytes]:
    """The blocks ``read()`` gives, none before the whole has matched ``size`` and ``crc`` (either may be
    None: not recorded); read twice when larger than ``in_memory``, each block of the second read checked
    against the first's."""
    held: list[bytes] | None = []
    sums: list[int] = []  # each block's CRC32C, once the whole is too large to hold
    total = whole = 0
    for block in read():
        whole = crc32c(block, value=whole)
        total += len(block)
        if held is not None and total <= in_memory:
            held.append(block)
            continue
        if held:
            sums += [crc32c(b) for b in held]
        held = None
        sums.append(crc32c(block))
    _check(where, total, whole, size=size, crc=crc, why=why)
    if held is not None:
        yield from held
        return
    count = 0
    for i, block in enumerate(read()):
        if i >= len(sums) or crc32c(block) != sums[i]:
            raise ChunkCorruptError(where, "changed while it was read: it no longer matches its first read")
        count += 1
        yield block
    if count != len(sums):
        raise ChunkCorruptError(where, "changed while it was read: it no longer matches its first read")


def _check(where: str, total: int, whole: int, *, size: int | None, crc: str | None, why: str = "") -> None:
    if size is not None and total != size:
        raise ChunkCorruptError(where, f"{total} bytes, metadata records {size}")
    if crc is not None and f"{whole:08x}" != crc:
        raise ChunkCorruptError(where, f"CRC32C {whole:08x}, metadata records {crc}{why}")
