"""``--by-reference`` on local files, in two steps so that the per-byte work runs on every core.

1. **Cuts** (the main process, a few reads per range): where each range ends is found by reading 64 KiB
   around its target (the shard's share of the bytes, or the chunk limit), never the whole file.
2. **Scans** (this thread and a second one, each half of the bytes): each range is read once from
   the page cache, its CRC32C taken and its records counted
   (:func:`~shardclaim.dataset.deal.lines_and_blanks`). Reading, CRC32C and the line walk all leave the
   GIL (:mod:`~shardclaim.dataset.lineends`), so two threads use two cores without a process to start.

The ranges are the ones the sequential scan of :mod:`.byref` would make on the same file, except that
they are not also cut every 64 MiB (the sequential scan's window): a range is at most ``chunk_size_mb``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from shardclaim.crc import crc32c
from shardclaim.dataset.deal import lines_and_blanks
from shardclaim.dataset.inputs import is_blank
from shardclaim.dataset.records import BOM

__all__ = ["PARALLEL_FROM", "Cut", "RangeScan", "cut_file", "scan_ranges"]

log = logging.getLogger("shardclaim.dataset")
_PROBE = 64 << 10
_PIECE = 8 << 20
# Below this much input one thread scans it all. Measured on 2026-11-30 (scan_ranges on 8 ranges of
# 470-byte records in the page cache, parallel against not, 5-9 alternating rounds): two threads were
# 0.58x one at 4 MiB, 0.85-0.93x at 16-96 MiB and 1.00x at 256 MiB and 1 GiB. The scan (CRC32C and the
# line walk, both off the GIL) is bound by this VM's memory bandwidth, which one thread fills (a 256 MiB
# copy: 5.5 GiB/s on one thread, 8 on two); the second thread is kept for machines with more bandwidth
# per core, from a size where it costs nothing here.
PARALLEL_FROM = 96 << 20

#: (shard, input index, first byte, end byte) of one range
Cut = tuple[int, int, int, int]
#: (records, blank lines, CRC32C) of one range
RangeScan = tuple[int, int, int]


def _find(fd: int, lo: int, hi: int) -> int:
    """The first newline in bytes [lo, hi) of the file, or -1."""
    pos = lo
    while pos < hi:
        block = os.pread(fd, min(_PROBE, hi - pos), pos)
        if not block:
            return -1
        at = block.find(b"\n")
        if at >= 0:
            return pos + at
        pos += len(block)
    return -1


def _rfind(fd: int, lo: int, hi: int) -> int:
    """The last newline in bytes [lo, hi) of the file, or -1."""
    end = hi
    while end > lo:
        start = max(lo, end - _PROBE)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at
        end = start
    return -1


def cut_file(
    fd: int, size: int, *, index: int, limit: int, shard: int, target: Callable[[int], int], last: int
) -> tuple[list[Cut], int]:
    """The ranges of one input (``target(shard)``: where shard ``shard`` ends, in this file's offsets;
    ``last``: the last shard). Returns them and the shard the next input starts in."""
    cuts: list[Cut] = []
    pos = 3 if os.pread(fd, 3, 0) == BOM else 0
    while pos < size:
        end = target(shard)
        if shard < last and end <= size:
            nl = _find(fd, max(end - 1, pos), size)
            cut, shard_ends = (nl + 1 if nl >= 0 else size), True
        else:
            cut, shard_ends = size, False
        if cut - pos > limit:
            shard_ends = False
            nl = _rfind(fd, pos, pos + limit)
            if nl < pos:  # one line longer than a chunk: it gets a range of its own
                nl = _find(fd, pos, size)
                log.warning(
                    "a line of input %d at byte %d is longer than a chunk: a range of its own", index, pos
                )
            cut = nl + 1 if nl >= 0 else size
        cuts.append((shard, index, pos, cut))
        pos = cut
        if shard_ends:
            shard += 1
    return cuts, shard


def scan_range(path: str, a: int, b: int, buf: bytearray | None = None) -> RangeScan:
    """Records, blank lines and CRC32C of bytes [a, b) of ``path`` (whole lines; the file's last line may
    lack its newline), read in 8 MiB pieces into one reused buffer (fresh memory for every piece would
    cost a page fault per 4 KiB on top of the copy)."""
    buf = bytearray(_PIECE) if buf is None else buf
    crc = records = blanks = 0
    keep = 0  # bytes of a line carried over to the front of the buffer
    with open(path, "rb", buffering=0) as f:
        pos = a
        while pos < b:
            if keep == len(buf):  # a line longer than the buffer: a larger buffer
                buf.extend(bytes(len(buf)))
            with memoryview(buf) as view:
                got = os.preadv(f.fileno(), [view[keep : keep + min(len(buf) - keep, b - pos)]], pos)
                if not got:
                    break
                crc = crc32c(view[keep : keep + got], value=crc)
            pos += got
            n = keep + got
            whole = buf.rfind(b"\n", 0, n) + 1
            if whole:
                lines, holes = lines_and_blanks(buf, 0, whole)
                records += lines - len(holes)
                blanks += len(holes)
                buf[: n - whole] = buf[whole:n]  # the unfinished line to the front (a copy: may overlap)
            keep = n - whole
    tail = bytes(buf[:keep])
    if tail:  # the file's last line, without its newline
        if is_blank(tail + b"\n"):
            blanks += 1
        else:
            records += 1
    return records, blanks, crc


def _scan_many(jobs: list[tuple[str, int, int]]) -> list[RangeScan]:
    buf = bytearray(_PIECE)
    return [scan_range(*job, buf=buf) for job in jobs]


def scan_ranges(jobs: list[tuple[str, int, int]], *, parallel: bool) -> list[RangeScan]:
    """Every range scanned, in order: the first half of the bytes here while a second thread scans the
    second half (``parallel``), or all here."""
    if not parallel or len(jobs) < 2:
        return _scan_many(jobs)
    total = sum(b - a for _, a, b in jobs)
    done = split = 0
    for split, (_, a, b) in enumerate(jobs):  # noqa: B007 - the loop finds where the second half starts
        if done * 2 >= total:
            break
        done += b - a
    split = max(1, min(split, len(jobs) - 1))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardclaim-scan") as pool:
        second = pool.submit(_scan_many, jobs[split:])
        first = _scan_many(jobs[:split])
        return first + second.result()
