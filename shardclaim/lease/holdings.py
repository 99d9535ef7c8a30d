"""The leases one worker holds, the ones it held and that ended, and the heartbeat that renews them.

A shard whose lease this worker held and that ended — lost to a peer or an operator, or settled by the
worker itself — is remembered as *ended*: the worker never acts on it again (unless it claims it anew),
even if the store says a holder with the same worker id holds it now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from shardclaim.errors import LeaseLostError
from shardclaim.lease import shard as transitions
from shardclaim.lease.fenced import FencedLease
from shardclaim.lease.heartbeat import Heartbeat

__all__ = ["Holdings"]

log = logging.getLogger("shardclaim.heartbeat")


def _beat(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "heartbeats": int(doc.get("heartbeats") or 0) + 1}


class Holdings:
    """Thread-safe bookkeeping of one worker's leases; :meth:`renew` is the heartbeat's step."""

    def __init__(self, heartbeat_seconds: float) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self._lock = threading.RLock()
        self._shards: dict[int, FencedLease] = {}  # held now
        self._ended: set[int] = set()  # held once; the lease ended
        self._others: list[FencedLease] = []  # other leases to renew (the finalizer's marker)
        self._heartbeat: Heartbeat | None = None
        #: False: no heartbeat thread; whoever drives the holdings calls :meth:`renew` (the simulator).
        self.background = True
        self.lost: set[int] = set()  #: shards whose lease a write found lost

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._shards)

    def add(self, shard_id: int, lease: FencedLease) -> None:
        """A fresh claim: held from now on, renewed by the heartbeat."""
        with self._lock:
            self._shards[shard_id] = lease
            self._ended.discard(shard_id)
            self.lost.discard(shard_id)
            self._start()

    def find(self, shard_id: int, worker_id: str) -> FencedLease | None:
        """The lease held on ``shard_id``; None if never held; LeaseLostError if held and ended."""
        with self._lock:
            lease = self._shards.get(shard_id)
            if lease is None and shard_id in self._ended:
                raise LeaseLostError(shard_id, worker_id, "this worker's lease on it has ended")
            return lease

    def adopt(self, shard_id: int, lease: FencedLease) -> FencedLease:
        with self._lock:
            return self._shards.setdefault(shard_id, lease)

    def forget(self, shard_id: int, lease: FencedLease, *, lost: bool) -> None:
        with self._lock:
            if self._shards.get(shard_id) is lease:
                del self._shards[shard_id]
            self._ended.add(shard_id)
            if lost:
                self.lost.add(shard_id)

    def current(self, shard_id: int) -> FencedLease | None:
        with self._lock:
            return self._shards.get(shard_id)

    def hold_other(self, lease: FencedLease) -> None:
        with self._lock:
            self._others.append(lease)
            self._start()

    def drop_other(self, lease: FencedLease) -> None:
        with self._lock:
            if lease in self._others:
                self._others.remove(lease)

    def renew(self) -> None:
        """One heartbeat: renew every lease held. Never raises: a lease found lost is dropped (its shard
        added to :attr:`lost`); any other error is logged and the lease kept for the next beat."""
        with self._lock:
            shards = list(self._shards.items())
            others = list(self._others)
        for shard_id, lease in shards:
            if self._renew_one(lease, transitions.renewed):
                self.forget(shard_id, lease, lost=True)
        for lease in others:
            if self._renew_one(lease, _beat):
                self.drop_other(lease)

    @staticmethod
    def _renew_one(lease: FencedLease, change: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
        """Renew one lease; whether it turned out lost."""
        try:
            lease.write(change, kind="renew")
        except LeaseLostError as e:
            if lease.lost.is_set():  # not merely settled by its holder meanwhile
                log.warning("%s", e)
                return True
        except BaseException as e:  # one beat's failure must not end the others
            log.warning(
                "heartbeat of %s failed (%s: %s); retrying at the next beat", lease.key, type(e).__name__, e
            )
        return False

    def _start(self) -> None:
        if not self.background:
            return
        if self._heartbeat is None or (self._heartbeat.started and not self._heartbeat.alive):
            self._heartbeat = Heartbeat(self.renew, self.heartbeat_seconds)
            self._heartbeat.start()

    def close(self) -> None:
        with self._lock:
            heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()
