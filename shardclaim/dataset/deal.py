"""The ``blocks`` strategy: the input dealt to the shards in runs of whole lines, not line by line.

Each block the builder reads (an 8 MiB window of an input, less the line it shares with the next
window) is cut into about ``4 N`` runs of equal bytes, each ending at the first line end at or after its
share; the runs go to the shards in rotation, the rotation carrying on from block to block. No Python
code runs per line: a block's line ends, found out of the interpreter (:mod:`~shardclaim.dataset.lineends`:
a C walk, else numpy, which leaves long lines to ``find``, see :func:`lines_and_blanks`), give the cuts,
each run's records and the lines that may be blank, so the build goes at the speed of copying bytes
(``round_robin`` spends about a microsecond of interpreter time per line, which on 470-byte records is
most of the build).

Balance: every shard receives runs of the same size, so shards differ in bytes by about one run (an
8 MiB block / 4 N: 256 KiB for 8 shards) and in records by the records such a run holds. A block too
small for runs of at least 4 KiB (any input under 128 KiB for 8 shards, and inputs of more than 512
shards) is dealt line by line, one line per turn: on small inputs ``blocks`` is exactly
``round_robin``. The cuts depend only on the input's bytes (blocks are always whole 8 MiB windows),
so a build is deterministic whatever the decompressor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shardclaim.dataset.chunks import ChunkWriter
from shardclaim.dataset.inputs import is_blank

__all__ = ["MIN_RUN", "deal_block", "planned", "runs_suit"]

MIN_RUN = 4096
RUNS_PER_SHARD = 4
_WHITESPACE = b" \t\r\n"
_LONG_LINE = 2048  # bytes: from this mean length on, walking line to line beats counting byte by byte


def runs_suit(length: int, num_shards: int) -> bool:
    """Whether a block of ``length`` bytes is dealt in runs (else line by line)."""
    return length // (RUNS_PER_SHARD * num_shards) >= MIN_RUN


def excluded_blanks(data: bytes | bytearray, start: int, end: int) -> list[tuple[int, int]]:
    """The blank lines (JSON whitespace only) of ``data[start:end]`` (whole lines) as ``(begin, end)``
    ranges."""
    from shardclaim.dataset.lineends import count_and_blanks

    return count_and_blanks(data, start, end)[1]


def _short_lines(data: bytes | bytearray, a: int, b: int) -> bool:
    """Whether :mod:`~shardclaim.dataset.lineends` walks the lines from ``a`` on: always with its C scan
    (``memchr`` from line to line serves any length); with numpy's, only short lines (by a 64 KiB
    sample; one without a line end: long), long ones being cheaper to walk with ``find``."""
    from shardclaim.dataset.lineends import implementation

    if implementation() == "c":
        return True
    probe = min(b, a + 65536)
    return probe - a < data.count(b"\n", a, probe) * _LONG_LINE


def lines_and_blanks(data: bytes | bytearray, a: int, b: int) -> tuple[int, list[tuple[int, int]]]:
    """The newlines in ``data[a:b]`` (whole lines) and its blank lines as ``(begin, end)`` ranges.

    Through :mod:`~shardclaim.dataset.lineends` (its C scan, else numpy's); without the C scan, lines of
    2 KB or more are walked line to line with ``find`` instead (``memchr``, many bytes per cycle, plus
    about 0.3 microseconds of interpreter per line: on 10 KB records a third of numpy's cost)."""
    if _short_lines(data, a, b):
        from shardclaim.dataset.lineends import count_and_blanks

        return count_and_blanks(data, a, b)
    holes = []
    count = 0
    pos = a
    find = data.find
    with memoryview(data) as view:
        while pos < b:
            nl = find(b"\n", pos, b) + 1
            if nl == 0:
                break
            if data[pos] in _WHITESPACE and is_blank(view[pos:nl]):
                holes.append((pos, nl))
            count += 1
            pos = nl
    return count, holes


def plan_block(
    data: bytes | bytearray, start: int, end: int, num_shards: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """The blank lines of ``data[start:end]`` and the newlines in each of its runs, cut as
    :func:`deal_block` cuts them."""
    share = (end - start) // (RUNS_PER_SHARD * num_shards)
    if _short_lines(data, start, end):  # the block's line ends at once (lineends)
        from shardclaim.dataset.lineends import plan_runs

        return plan_runs(data, start, end, share)
    counts: list[int] = []
    holes: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        cut = end if pos + share >= end else data.index(b"\n", pos + share - 1, end) + 1
        count, blank = lines_and_blanks(data, pos, cut)
        counts.append(count)
        holes += blank
        pos = cut
    return holes, counts


Block = tuple[int, str, bytes | bytearray, int, int]
Plan = tuple[list[tuple[int, int]], list[int]]


def planned(blocks: Iterator[Block], num_shards: int) -> Iterator[tuple[Block, Future[Plan] | None]]:
    """Each block of ``blocks`` (:func:`~shardclaim.dataset.inputs.blocks_of` with two buffers) with its
    plan (:func:`plan_block`; None for a block dealt line by line), the next block's plan being made
    in a thread while the caller deals this one: the line walk leaves the GIL, so it runs on a second
    core beside the copying. A block's plan is ready once its ``result()`` returns, which
    the caller asks before dealing it, so a buffer is never read into while its plan is being made."""
    with ThreadPoolExecutor(1, thread_name_prefix="shardclaim-plan") as pool:
        pending: tuple[Block, Future[Plan] | None] | None = None
        for block in blocks:
            _, _, data, start, end = block
            plan = (
                pool.submit(plan_block, data, start, end, num_shards)
                if runs_suit(end - start, num_shards)
                else None
            )
            if pending is not None:
                yield pending
            pending = (block, plan)
        if pending is not None:
            yield pending


def deal_block(
    writer: ChunkWriter,
    data: bytes | bytearray,
    start: int,
    end: int,
    *,
    turn: int,
    excluded: list[tuple[int, int]],
    counts: list[int] | None = None,
) -> tuple[int, int, int]:
    """Deal ``data[start:end]`` (whole lines) in runs from shard ``turn mod N`` on, leaving out the
    ``excluded`` line ranges (sorted). ``counts``, each run's newlines (:func:`plan_block`), spares
    counting them again. Returns ``(next turn, records, bytes)``."""
    n = writer.num_shards
    share = (end - start) // (RUNS_PER_SHARD * n)
    view = memoryview(data)
    records = nbytes = 0
    skip = iter(excluded)
    hole = next(skip, None)
    run = 0
    try:
        pos = start
        while pos < end:
            cut = end if pos + share >= end else data.index(b"\n", pos + share - 1, end) + 1
            shard = turn % n
            turn += 1
            known = counts[run] if counts is not None else None
            run += 1
            a = pos
            while hole is not None and hole[0] < cut:  # the run's pieces between excluded lines
                known = None
                if hole[0] > a:
                    r, b = _add_piece(writer, shard, data, view, (a, hole[0]), None)
                    records, nbytes = records + r, nbytes + b
                a = hole[1]
                hole = next(skip, None)
            if a < cut:
                r, b = _add_piece(writer, shard, data, view, (a, cut), known)
                records, nbytes = records + r, nbytes + b
            pos = cut
    finally:
        view.release()
    return turn, records, nbytes


def _add_piece(  # noqa: PLR0917 - the inner loop's arguments, positional for speed
    writer: ChunkWriter,
    shard: int,
    data: bytes | bytearray,
    view: memoryview,
    piece: tuple[int, int],
    known: int | None = None,
) -> tuple[int, int]:
    """Lines ``data[a:b]`` (``piece``; ``known`` of them, if known) to ``shard``, split where its
    current chunk would overflow."""
    a, b = piece
    limit = writer.limit
    state = writer.shards[shard]
    records = 0
    add: Callable[..., Any] = writer.add
    start = a
    while a < b:
        room = limit - state.bytes
        if b - a <= room:
            count = data.count(b"\n", a, b) if known is None else known
            add(shard, view[a:b], count)
            records += count
            break
        cut = data.rfind(b"\n", a, a + room) + 1 if room > 0 else 0
        if cut <= a:  # not one line fits in what is left: the first line alone, in a new chunk
            cut = data.index(b"\n", a, b) + 1
            count = 1
        else:
            count = data.count(b"\n", a, cut)
        add(shard, view[a:cut], count)
        records += count
        if known is not None:
            known -= count
        a = cut
        state = writer.shards[shard]
    return records, b - start
