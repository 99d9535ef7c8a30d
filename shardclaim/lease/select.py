"""Which shards a claim tries, in which order.

One listing gives the candidates: the available shards in random order (so that N workers do not all
stampede shard 0) and the held ones, whose leases a claim may take over once they expired on the
store's clock. The listing is reused while it serves: a worker refreshes it only after three candidates
in a row turned out taken, or once it is older than a heartbeat interval (so that a fleet-wide halt is
seen within one). A split shard with a free part counts as available (only a caller that handles parts
claims it). Straggler stealing picks its victims from the same listing (:mod:`shardclaim.stealing`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from shardclaim.lease.views import ShardView

__all__ = ["Candidates"]


class Candidates:
    """The candidates of the last listing, handed out one at a time."""

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        max_age: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._random = rng if rng is not None else random.Random()
        self._available: list[int] = []
        self._busy: list[ShardView] = []
        self._max_age = max(max_age, 0.5)  # older than this, a listing is not trusted (a halt may have come)
        self._clock = clock
        self._listed_at = -float("inf")

    def forget(self) -> None:
        """Drop the listing: the next claim lists again (after this worker failed a shard, say)."""
        self._available, self._busy = [], []

    def refresh(self, views: Sequence[ShardView]) -> None:
        self._listed_at = self._clock()
        available = [v.shard_id for v in views if v.status == "available" or v.open_part]
        self._random.shuffle(available)
        self._available = available
        self._busy = [v for v in views if v.status == "in_use"]
        self._random.shuffle(self._busy)

    def __bool__(self) -> bool:
        if self._clock() - self._listed_at > self._max_age:
            self.forget()
        return bool(self._available)

    def pop(self) -> int:
        return self._available.pop()

    @property
    def busy(self) -> bool:
        return bool(self._busy)

    def expired(self, now: datetime) -> list[int]:
        """Held shards of the listing whose lease had expired by ``now`` (store clock)."""
        return [v.shard_id for v in self._busy if v.expired(now)]
