"""Operator actions of the seed API — resets, the fan-in marker, the fleet-wide halt — and status: the
part of :class:`~shardclaim.manager.ShardManager` that judges and writes shards it does not hold.

Every reset is a compare-and-swap on the state it judged (:mod:`shardclaim.lease.operator`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardclaim.lease import halt, operator
from shardclaim.lease.holdings import Holdings
from shardclaim.lease.views import ShardView
from shardclaim.status import ShardStatusEntry, shard_statuses
from shardclaim.store import Store, StoredObject

__all__ = ["Operations"]


class Operations:
    """Mixed into ShardManager, which provides the attributes declared here."""

    _store: Store
    _holdings: Holdings
    lease_seconds: float
    master: dict[str, Any]
    halt: dict[str, Any] | None
    _key: Callable[[int], str]
    _read: Callable[[int], tuple[StoredObject, dict[str, Any]]]
    shard_views: Callable[[], list[ShardView]]

    def reset_shard(self, shard_id: int, *, only: operator.Only = None) -> bool:
        """Operator action: make a shard available with a fresh retry budget; fences off any holder.

        ``only="stale"`` resets it only if it is in use with an expired lease, ``only="failed"`` only if
        it is failed — judged on the very generation the reset writes on, so a shard that moved on since
        (its slow holder completed it) is left alone. Returns whether the shard was reset.
        """
        key = self._key(shard_id)
        done = operator.reset_shard(
            self._store, key, lambda: self._read(shard_id), only=only, default_lease=self.lease_seconds
        )
        lease = self._holdings.current(shard_id)
        if done and lease is not None:
            lease.end("an operator reset it")
            self._holdings.forget(shard_id, lease, lost=True)
        return done

    def reset_stale(self) -> list[int]:
        """Reset every shard whose lease expired (each judged again at its reset). The ids reset."""
        now = self._store.now()
        targets = [v.shard_id for v in self.shard_views() if v.expired(now)]
        return [i for i in targets if self.reset_shard(i, only="stale")]

    def reset_failed(self) -> list[int]:
        """Reset every failed shard (each judged again at its reset), and lift a fleet-wide halt. The ids
        reset."""
        targets = [v.shard_id for v in self.shard_views() if v.status == "failed"]
        done = [i for i in targets if self.reset_shard(i, only="failed")]
        halt.lift(self._store)
        self.halt = None
        return done

    def get_shard_status(self) -> list[ShardStatusEntry]:
        """Every shard's state from one listing (holder, attempt, failures, heartbeat age, expiry)."""
        views = self.shard_views()
        return shard_statuses(self.master, views, self._store.now())

    # -- the fan-in marker ------------------------------------------------------------------------

    def finalizer_status(self) -> dict[str, Any] | None:
        """The fan-in marker as stored (None when no finalizer ever ran)."""
        return operator.read_marker(self._store)

    def reset_finalizer(self) -> bool:
        """Operator action: clear the finalizer's marker (a failed or running finalizer runs again; a
        running one is fenced). Returns whether there was a marker to clear."""
        return operator.reset_marker(self._store)
