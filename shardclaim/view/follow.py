"""What a watcher remembers from one look to the next: the rate of progress over a sliding window (and
the ETA it gives), since when each running attempt has been seen running, and the first line of each
failed shard's error (read once per failure, never again while the shard stays failed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardclaim.errors import ShardclaimError
from shardclaim.rate import RateWindow
from shardclaim.store.base import Generation
from shardclaim.view.snapshot import Snapshot, take

if TYPE_CHECKING:
    from shardclaim.manager import ShardManager

__all__ = ["Failure", "Follower", "Look", "RateWindow", "Running"]

#: How many running shards and failures a look names.
SHOWN = 5


@dataclass(frozen=True, slots=True)
class Running:
    shard_id: int
    holder: str | None
    attempt: int
    heartbeat_age_s: float
    seen_running_s: float  #: since this watcher first saw this attempt running (at least this long)
    expired: bool


@dataclass(frozen=True, slots=True)
class Failure:
    shard_id: int
    error: str  #: first line of the shard's last error (or why it is invalid)
    failures: int


@dataclass(frozen=True, slots=True)
class Look:
    """One refresh: the snapshot and what the watcher's memory adds to it."""

    snapshot: Snapshot
    rates: tuple[float, float] | None
    eta_s: float | None
    window_s: float
    slowest: list[Running]
    failures: list[Failure]


class Follower:
    """Looks at a job again and again: one listing and one clock read per look, plus one document read
    for each failed shard it names that it has not named before (at most :data:`SHOWN` a look)."""

    def __init__(
        self,
        manager: ShardManager,
        *,
        window_seconds: float = 60.0,
        look: Callable[[], Snapshot] | None = None,
    ) -> None:
        self.manager = manager
        self.window = RateWindow(window_seconds)
        self._look = look if look is not None else lambda: take(manager)
        self._first_seen: dict[tuple[int, int], float] = {}
        self._errors: dict[tuple[int, Generation], str] = {}

    def look(self) -> Look:
        snap = self._look()
        t = snap.at.timestamp()
        done = int(snap.summary["records_done"])
        self.window.add(t, done, snap.shards_done)
        rates = self.window.rates()
        left = snap.records_total - done
        eta = self.window.eta(max(left, 0), len(snap.statuses) - snap.shards_done)
        return Look(snap, rates, eta, self.window.span, self._slowest(snap, t), self._failures(snap))

    def _slowest(self, snap: Snapshot, t: float) -> list[Running]:
        running = []
        seen = {}
        for s in snap.statuses:
            if s["status"] != "in_use":
                continue
            key = (int(s["shard_id"]), int(s.get("attempt") or 0))
            seen[key] = self._first_seen.get(key, t)
            running.append(
                Running(
                    s["shard_id"],
                    s.get("assigned_to"),
                    key[1],
                    float(s.get("heartbeat_age_s") or 0.0),
                    t - seen[key],
                    bool(s.get("expired")),
                )
            )
        self._first_seen = seen  # attempts no longer running are forgotten
        running.sort(key=lambda r: (-r.seen_running_s, -r.heartbeat_age_s, r.shard_id))
        return running[:SHOWN]

    def _failures(self, snap: Snapshot) -> list[Failure]:
        bad = [v for v in snap.views if v.status in ("failed", "invalid")]
        bad.sort(key=lambda v: (v.updated.timestamp() if v.updated else 0.0, v.shard_id), reverse=True)
        out = []
        for v in bad[:SHOWN]:
            if v.status == "invalid":
                out.append(Failure(v.shard_id, first_line(v.error), v.failures))
                continue
            key = (v.shard_id, v.generation)
            if key not in self._errors:
                try:
                    self._errors[key] = first_line(_last_error(self.manager.read_shard(v.shard_id)))
                except ShardclaimError as e:  # it changed or broke since the listing: say so, read again
                    out.append(Failure(v.shard_id, f"(its document could not be read: {e})", v.failures))
                    continue
            out.append(Failure(v.shard_id, self._errors[key], v.failures))
        return out


def _last_error(doc: dict[str, object]) -> object:
    """A shard's last error; for a split shard (chunk ranges) without one, that of a failed range."""
    ranges = doc.get("ranges")
    parts = [p for p in ranges if isinstance(p, dict)] if isinstance(ranges, list) else []
    return doc.get("last_error") or next((p["last_error"] for p in parts if p.get("last_error")), None)


def first_line(text: object) -> str:
    """An error's first line; for a Python traceback, its last (the exception, where the first line is
    only ``Traceback (most recent call last):``)."""
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    if not lines:
        return "(no error recorded)"
    return lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]
