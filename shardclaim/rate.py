"""Progress over time, shared by ``run``'s progress line (:mod:`shardclaim.console`) and the live view
(:mod:`shardclaim.view`): the rate over a sliding window, the ETA it gives, and how a duration is written
(``45s``, ``3m07s``, ``2h28m``, ``1d04h``)."""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RateWindow", "format_duration"]


class RateWindow:
    """Records and shards done per second over the last ``seconds`` (store clock)."""

    def __init__(self, seconds: float = 60.0) -> None:
        if not seconds > 0:
            msg = f"seconds must be positive, got {seconds!r}"
            raise ValueError(msg)
        self.seconds = seconds
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, t: float, records: int, shards: int) -> None:
        if self._samples and (records < self._samples[-1][1] or shards < self._samples[-1][2]):
            self._samples.clear()  # an operator reset shards: what was done before says nothing now
        self._samples.append((t, records, shards))
        # Keep the newest sample at least `seconds` old, so the window spans all of it.
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.seconds:
            self._samples.popleft()

    @property
    def span(self) -> float:
        return self._samples[-1][0] - self._samples[0][0] if self._samples else 0.0

    def rates(self) -> tuple[float, float] | None:
        """(records per second, shards per second), or None before two looks apart in time."""
        if self.span <= 0:
            return None
        (t0, r0, s0), (t1, r1, s1) = self._samples[0], self._samples[-1]
        return (r1 - r0) / (t1 - t0), (s1 - s0) / (t1 - t0)

    def eta(self, records_left: int, shards_left: int) -> float | None:
        """Seconds until done at the window's rate (records where records move, else shards)."""
        rates = self.rates()
        if rates is None:
            return None
        if records_left == 0 and shards_left == 0:
            return 0.0
        per_record, per_shard = rates
        if per_record > 0 and records_left > 0:
            return records_left / per_record
        if per_shard > 0:
            return shards_left / per_shard
        return None


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
