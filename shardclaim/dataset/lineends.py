"""Where the lines of a block end, and which of them are blank, found out of the interpreter.

numpy compares every byte of a block with a newline and lists the matches in one pass (3-4 GB/s here,
with nothing run per line). The two scans it replaces went about a byte per cycle each: ``bytes.count``
for the records in a run (CPython counts a single byte in a plain loop, not with ``memchr``) and a
regular expression for the lines that may be blank. On 470-byte records those two took as long as
``split -C 100M``'s whole run; a block's line ends give both, and the cuts between runs, at once.

Blank lines (JSON whitespace only) are found from the line ends: only a line whose first byte is JSON
whitespace can be blank, and the few that are (a line with leading spaces before its record, a blank
line) are looked at one by one.

numpy is imported with this module, which the builder imports only for blocks worth it: workers,
readers and small builds never load it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardclaim.dataset.inputs import is_blank

__all__ = ["blank_lines", "count_and_blanks", "line_ends", "plan_runs"]

_NEWLINE = 0x0A
_WHITESPACE = np.array([0x20, 0x09, 0x0D, 0x0A], dtype=np.uint8)


def line_ends(data: bytes | bytearray | memoryview, start: int, end: int) -> npt.NDArray[np.int64]:
    """The offsets just past each newline of ``data[start:end]``, ascending (offsets into ``data``)."""
    if end <= start:
        return np.empty(0, dtype=np.int64)
    window = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
    ends = np.flatnonzero(window == _NEWLINE)
    ends += start + 1
    return ends


def blank_lines(
    data: bytes | bytearray | memoryview, start: int, ends: npt.NDArray[np.int64]
) -> list[tuple[int, int]]:
    """The blank lines among those ending at ``ends`` (the first begins at ``start``), as
    ``(begin, end)`` ranges of ``data``."""
    if not len(ends):
        return []
    starts = np.empty_like(ends)
    starts[0] = start
    starts[1:] = ends[:-1]
    first = np.frombuffer(data, dtype=np.uint8, count=int(ends[-1]))[starts]
    found = []
    with memoryview(data) as view:
        for i in np.flatnonzero(np.isin(first, _WHITESPACE)).tolist():
            begin, stop = int(starts[i]), int(ends[i])
            if is_blank(view[begin:stop]):
                found.append((begin, stop))
    return found


def count_and_blanks(data: bytes | bytearray, a: int, b: int) -> tuple[int, list[tuple[int, int]]]:
    """The newlines of ``data[a:b]`` (whole lines) and its blank lines as ``(begin, end)`` ranges."""
    ends = line_ends(data, a, b)
    return len(ends), blank_lines(data, a, ends)


def plan_runs(
    data: bytes | bytearray, start: int, end: int, share: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """Cut ``data[start:end]`` (whole lines) into runs, each ending at the first line end at or after
    ``share`` bytes from its start (the last one at ``end``): the blank lines, as ``(begin, end)``
    ranges, and each run's newlines."""
    ends = line_ends(data, start, end)
    last = len(ends) - 1
    counts: list[int] = []
    pos, first = start, 0  # where the run begins, and its first line
    while pos < end:
        j = last if pos + share >= end else int(ends.searchsorted(pos + share))
        counts.append(j - first + 1)
        pos, first = int(ends[j]), j + 1
    return blank_lines(data, start, ends), counts
