"""Where the lines of a block end, and which of them are blank, found out of the interpreter.

Two implementations of :func:`count_and_blanks` and :func:`plan_runs`, with the same results:

- C, ``shardclaim._scan`` (``shardclaim/_scan.c``): hops from newline to newline with ``memchr``, the
  GIL released. On 470-byte records, 0.05 s per GiB in cache and 0.19 s from memory (where one
  ``memchr`` over every byte, finding nothing, takes 0.11 s). An optional extension: ``pip install``
  builds it where a C compiler is found and goes on without it where none is.
- numpy, the fallback (:func:`numpy_count_and_blanks`, :func:`numpy_plan_runs`): compares every byte
  with a newline and lists the matches in one pass (0.63 s per GiB from memory, ``np.flatnonzero`` most
  of it; it too leaves the GIL while it scans). Blank lines are found from the line ends: only a line
  whose first byte is JSON whitespace can be blank, and the few that are are looked at one by one.

Either replaces two scans that went about a byte per cycle each (``bytes.count`` and a regular
expression), which on 470-byte records took as long as ``split -C 100M``'s whole run.

The C scan serves every call when it was built, unless the environment variable ``SHARDCLAIM_SCAN`` is
``python`` (or ``numpy``): then numpy does, e.g. to compare the two or to rule the extension out. It is
read at each call (a block's worth of work), so no choice is frozen at import. numpy is imported only
by the fallback: with the C scan, a build never loads it.

Both raise ValueError rather than read outside ``data``: unless ``0 <= a <= b <= len(data)`` (in bytes),
and in :func:`plan_runs` for a ``share`` that is not positive or a range that does not end at a newline
(on which the cutting would never finish).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from shardclaim.dataset.inputs import is_blank
from shardclaim.dataset.records import c_ruled_out

try:
    from shardclaim._scan import count_and_blanks as _c_count_and_blanks
    from shardclaim._scan import plan_runs as _c_plan_runs
except ImportError:  # installed without a C compiler: numpy's scan
    BUILT = False
else:
    BUILT = True

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "BUILT",
    "count_and_blanks",
    "implementation",
    "numpy_count_and_blanks",
    "numpy_plan_runs",
    "plan_runs",
]

Buffer = bytes | bytearray | memoryview


def implementation() -> Literal["c", "numpy"]:
    """The scan that serves a call made now: ``"c"`` when ``shardclaim._scan`` was built and
    ``SHARDCLAIM_SCAN`` is not ``python`` (or ``numpy``), else ``"numpy"``."""
    return "c" if BUILT and not c_ruled_out() else "numpy"


def count_and_blanks(data: Buffer, a: int, b: int) -> tuple[int, list[tuple[int, int]]]:
    """The newlines of ``data[a:b]`` (whole lines; a last line without one is not counted, nor ever
    blank) and its blank lines (JSON whitespace only) as ``(begin, end)`` ranges."""
    if implementation() == "c":
        return _c_count_and_blanks(data, a, b)
    return numpy_count_and_blanks(data, a, b)


def plan_runs(data: Buffer, start: int, end: int, share: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Cut ``data[start:end]`` (whole lines) into runs, each ending at the first line end at or after
    ``share`` bytes from its start (the last one at ``end``): the blank lines, as ``(begin, end)``
    ranges, and each run's newlines."""
    if implementation() == "c":
        return _c_plan_runs(data, start, end, share)
    return numpy_plan_runs(data, start, end, share)


def _check_range(data: Buffer, a: int, b: int, names: tuple[str, str]) -> None:
    with memoryview(data) as view:
        size = view.nbytes
    if not 0 <= a <= b <= size:
        na, nb = names
        msg = f"need 0 <= {na} <= {nb} <= len(data), got {na}={a!r}, {nb}={b!r}, len(data)={size}"
        raise ValueError(msg)


def numpy_count_and_blanks(data: Buffer, a: int, b: int) -> tuple[int, list[tuple[int, int]]]:
    """:func:`count_and_blanks` by numpy."""
    _check_range(data, a, b, ("a", "b"))
    ends = _line_ends(data, a, b)
    return len(ends), _blank_lines(data, a, ends)


def numpy_plan_runs(
    data: Buffer, start: int, end: int, share: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """:func:`plan_runs` by numpy."""
    if share <= 0:
        msg = f"share must be positive, got {share!r}"
        raise ValueError(msg)
    _check_range(data, start, end, ("start", "end"))
    ends = _line_ends(data, start, end)
    if start < end and (not len(ends) or int(ends[-1]) != end):
        msg = "data[start:end] must be whole lines: it does not end in a newline"
        raise ValueError(msg)
    last = len(ends) - 1
    counts: list[int] = []
    pos, first = start, 0  # where the run begins, and its first line
    while pos < end:
        j = last if pos + share >= end else int(ends.searchsorted(pos + share))
        counts.append(j - first + 1)
        pos, first = int(ends[j]), j + 1
    return _blank_lines(data, start, ends), counts


def _line_ends(data: Buffer, start: int, end: int) -> npt.NDArray[np.int64]:
    """The offsets just past each newline of ``data[start:end]``, ascending (offsets into ``data``)."""
    import numpy as np

    if end <= start:
        return np.empty(0, dtype=np.int64)
    window = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
    ends = np.flatnonzero(window == 0x0A)
    ends += start + 1
    return ends


def _blank_lines(data: Buffer, start: int, ends: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """The blank lines among those ending at ``ends`` (the first begins at ``start``), as
    ``(begin, end)`` ranges of ``data``."""
    import numpy as np

    if not len(ends):
        return []
    starts = np.empty_like(ends)
    starts[0] = start
    starts[1:] = ends[:-1]
    first = np.frombuffer(data, dtype=np.uint8, count=int(ends[-1]))[starts]
    whitespace = np.frombuffer(b" \t\r\n", dtype=np.uint8)
    found = []
    with memoryview(data) as view:
        for i in np.flatnonzero(np.isin(first, whitespace)).tolist():
            begin, stop = int(starts[i]), int(ends[i])
            if is_blank(view[begin:stop]):
                found.append((begin, stop))
    return found
