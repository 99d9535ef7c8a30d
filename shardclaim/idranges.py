"""Compact id ranges: a set of shard ids printed as ``0-12,14,16-99`` (as Kubernetes prints a Job's
``completedIndexes``), and read back. Every place that prints a set of shards prints it this way."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["compact", "parse"]


def compact(ids: Iterable[int], *, limit: int | None = None) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8``; duplicates and order do not matter; empty -> ``""``.

    ``limit``: at most that many characters of ranges, then ``,... (+N more)`` counting the ids left out.
    """
    sorted_ids = sorted(set(ids))
    runs: list[tuple[int, int]] = []
    for i in sorted_ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    text = ",".join(parts)
    if limit is None or len(text) <= limit:
        return text
    shown: list[str] = []
    used = 0
    count = 0
    for part, (a, b) in zip(parts, runs, strict=True):
        if used + len(part) + 1 > limit:
            break
        shown.append(part)
        used += len(part) + 1
        count += b - a + 1
    return ",".join(shown) + f",... (+{len(sorted_ids) - count} more)"


def parse(text: str) -> list[int]:
    """``0-2,5`` -> ``[0, 1, 2, 5]`` (sorted, no duplicates). ValueError names a malformed part."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("-")
        try:
            a = int(first)
            b = int(last) if sep else a
        except ValueError:
            msg = f"not an id or a range of ids: {part!r}"
            raise ValueError(msg) from None
        if a < 0 or b < a:
            msg = f"not an id or a range of ids: {part!r}"
            raise ValueError(msg)
        out.update(range(a, b + 1))
    return sorted(out)
