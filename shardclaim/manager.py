"""The seed's API: one worker's view of a dataset — claim, heartbeat, checkpoint, complete, fail, release,
reset and status of shards — composed from the lease protocol in :mod:`shardclaim.lease`.

A holder writes a shard only through its :class:`~shardclaim.lease.fenced.FencedLease`, conditioned on
the generation it last wrote; once anyone else wrote it, the holder's next write is refused
(:class:`~shardclaim.errors.LeaseLostError`) and the manager never acts on that shard again. Only a CLI
claim may be settled by another process naming its worker id (the seed's two-process CLI).

Operator actions are compare-and-swaps on the state they judged: ``reset --stale`` resets a shard only
if, at the generation it writes on, the shard is still in use with an expired lease.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from shardclaim._identity import default_worker_id, launcher_index
from shardclaim.errors import (
    LeaseLostError,
    ObjectNotFoundError,
    ShardclaimError,
    StoreClockError,
    UnknownShardError,
)
from shardclaim.fanin import wait_for_shards
from shardclaim.layout import (
    MASTER_KEY,
    SHARD_METADATA,
    MetadataError,
    check_against_master,
    check_master,
    check_shard,
    parse_json,
)
from shardclaim.lease import halt, ranges
from shardclaim.lease import shard as transitions
from shardclaim.lease.fenced import FencedLease, write_judged
from shardclaim.lease.holdings import Holdings
from shardclaim.lease.select import Candidates
from shardclaim.lease.views import ClaimedShard, InvalidShards, ShardView, read_listing
from shardclaim.operations import Operations
from shardclaim.stealing import Stealing
from shardclaim.store import Generation, RetryPolicy, Store, StoredObject, open_store
from shardclaim.worker import Claim
from shardclaim.worker import claims as worker_loop

__all__ = ["DEFAULT_MAX_OUTAGE_SECONDS", "ShardManager"]

log = logging.getLogger("shardclaim.manager")

DEFAULT_MAX_OUTAGE_SECONDS = 600.0  #: how long a worker waits out an unreachable store (10 minutes)


class ShardManager(Operations, Stealing):
    """Claims and settles the shards of the dataset at ``dataset_dir`` (path or URL) for one worker.

    ``max_outage_seconds``: how long a store request is retried through an outage (timeouts, 429, 5xx);
    None: the store's short default (~25 s). Thread-safe (the heartbeat thread and the caller).
    """

    def __init__(
        self,
        dataset_dir: str,
        worker_id: str | None = None,
        *,
        lease_seconds: float = 60.0,
        heartbeat_seconds: float | None = None,
        max_attempts: int = 3,
        max_expiries: int = 3,
        max_failed_shards: int | None = None,
        store: Store | None = None,
        max_outage_seconds: float | None = DEFAULT_MAX_OUTAGE_SECONDS,
    ) -> None:
        lease_seconds, heartbeat_seconds = transitions.check_lease_options(lease_seconds, heartbeat_seconds)
        for name, value in (("max_attempts", max_attempts), ("max_expiries", max_expiries)):
            if type(value) is not int or not 1 <= value <= 10_000:
                msg = f"{name} must be an integer in [1, 10000], got {value!r}"
                raise ValueError(msg)
        if max_outage_seconds is not None and not (0 <= max_outage_seconds < math.inf):
            msg = f"max_outage_seconds must be a non-negative number or None, got {max_outage_seconds!r}"
            raise ValueError(msg)
        self.dataset_dir = dataset_dir
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds, self.heartbeat_seconds = lease_seconds, heartbeat_seconds
        if max_failed_shards is not None and (type(max_failed_shards) is not int or max_failed_shards < 1):
            msg = f"max_failed_shards must be a positive integer or None, got {max_failed_shards!r}"
            raise ValueError(msg)
        self.max_attempts, self.max_expiries = max_attempts, max_expiries
        self.max_failed_shards = max_failed_shards
        self.halt: dict[str, Any] | None = None  #: the fleet-wide halt, as the last listing showed it
        if store is None:
            policy = None if max_outage_seconds is None else RetryPolicy(max_seconds=max_outage_seconds)
            store = open_store(dataset_dir, policy=policy)
        self._store: Store = store
        try:
            master = self._store.read(MASTER_KEY)
        except ObjectNotFoundError:
            msg = f"{dataset_dir} is not a complete shardclaim dataset: it has no {MASTER_KEY}"
            raise ShardclaimError(msg) from None
        self.master = check_master(MASTER_KEY, parse_json(MASTER_KEY, master.data))
        self.num_shards: int = self.master["num_shards"]
        self._dirs: list[str] = [s["directory"] for s in self.master["shards"]]
        self._lock = threading.RLock()
        self._holdings = Holdings(self.heartbeat_seconds)
        self._invalid = InvalidShards()
        self._candidates = Candidates(max_age=self.heartbeat_seconds)
        self._tried_launcher_index = False
        self._adoptable = self._parts = False

    @property
    def store(self) -> Store:
        """The store behind the dataset."""
        return self._store

    def _key(self, shard_id: int) -> str:
        if not isinstance(shard_id, int) or isinstance(shard_id, bool) or not 0 <= shard_id < self.num_shards:
            raise UnknownShardError(shard_id, self.num_shards)
        return f"{self._dirs[shard_id]}/{SHARD_METADATA}"

    def _read(self, shard_id: int) -> tuple[StoredObject, dict[str, Any]]:
        key = self._key(shard_id)
        obj = self._store.read(key)
        return obj, self._checked(key, obj.data, shard_id)

    def _checked(self, key: str, data: bytes, shard_id: int) -> dict[str, Any]:
        """A shard's document, checked, naming only the sources the master recorded: a hand-edited shard
        of a files or by-reference dataset must not hand a worker other files."""
        doc = check_shard(key, parse_json(key, data), expect_id=shard_id)
        check_against_master(key, doc, self.master)
        return doc

    def read_shard(self, shard_id: int) -> dict[str, Any]:
        """One shard's metadata as stored now (checked: MetadataError names a corrupt object)."""
        return self._read(shard_id)[1]

    def _new_lease(
        self, shard_id: int, generation: Generation, doc: Mapping[str, Any], token: str | None = None
    ) -> FencedLease:
        token = token or (doc.get("lease") or {}).get("token")
        return FencedLease(
            self._store, self._key(shard_id), generation, doc,
            holder=self.worker_id, encode=transitions.encode, shard_id=shard_id, token=token,
        )  # fmt: skip

    # -- claiming ---------------------------------------------------------------------------------

    def claim_shard(
        self, preferred_shard_id: int | None = None, *, adoptable: bool = False, parts: bool = False
    ) -> ClaimedShard | None:
        """Claim one shard: ``preferred_shard_id`` (else the launcher's index) first, then the others
        in random order. Returns the shard (``shard_id``, ``chunks`` as URLs, ``status``,
        ``assigned_to``, ...) or None when no shard is claimable now.

        Uncontended: at most three store requests (listing, read, conditional write); the listing is
        reused until three candidates in a row turn out taken, so a worker mostly pays two. A shard
        whose metadata is corrupt or hostile is skipped (and reported by status), never raised.
        ``adoptable``: another process may complete or fail the shard for this worker id (the seed's
        CLI); without it only this manager can. ``parts``: a free part of a split shard may be claimed
        too (the claim then names its chunks as ``range``; see :mod:`shardclaim.stealing`).
        """
        self._adoptable, self._parts = adoptable, parts
        if preferred_shard_id is not None:
            self._key(preferred_shard_id)
        elif not self._tried_launcher_index:  # the launcher's index is worth one try per worker
            self._tried_launcher_index = True
            preferred_shard_id = launcher_index(self.num_shards)
        if preferred_shard_id is not None:
            if not self._candidates:  # no fresh listing yet (a restarted pod): look first, for a halt
                self._candidates.refresh(self.shard_views())
            if self.halt is not None:
                return None
            claimed = self._try_claim(preferred_shard_id, None)
            if claimed is not None:
                return claimed
        fresh = False
        misses = 0
        while True:
            if not self._candidates or misses >= 3:
                if fresh:
                    break
                self._candidates.refresh(self.shard_views())
                fresh, misses = True, 0
                if not self._candidates:
                    break
            if self.halt is not None:
                return None  # the job is halted fleet-wide: nothing new starts
            claimed = self._try_claim(self._candidates.pop(), None)
            if claimed is not None:
                return claimed
            misses += 1
        return self._claim_expired()

    def shard_views(self) -> list[ShardView]:
        """Every shard as one listing shows it, with the shards this manager found invalid marked so. The
        same listing updates :attr:`halt`, and trips the halt once ``max_failed_shards`` are failed."""
        views, self.halt = read_listing(self._store, self._dirs, self.lease_seconds)
        failed = [v.shard_id for v in views if v.status == "failed"]
        if self.halt is None and self.max_failed_shards is not None and len(failed) >= self.max_failed_shards:
            halt.trip(self._store, failed, self.max_failed_shards, self.worker_id)
            self.halt = {"status": "halted", "failed": len(failed), "limit": self.max_failed_shards}
        return self._invalid.overlay(views)

    def _claim_expired(self) -> ClaimedShard | None:
        """After a fresh listing found nothing available: take over a lease that expired, if any."""
        if not self._candidates.busy:
            return None
        now = self._store.now()
        for shard_id in self._candidates.expired(now):
            claimed = self._try_claim(shard_id, now)
            if claimed is not None:
                return claimed
        return None

    def _try_claim(self, shard_id: int, now: datetime | None) -> ClaimedShard | None:
        try:
            obj = self._store.read(self._key(shard_id))
            doc = self._checked(obj.key, obj.data, shard_id)
        except ObjectNotFoundError:
            return None
        except MetadataError as e:
            if self._invalid.note(shard_id, obj.generation, str(e)):
                log.warning("skipping shard %d: %s", shard_id, e)
            return None
        if ranges.is_split(doc):
            return self._claim_part(shard_id, obj, doc, now) if self._parts else None
        if doc["status"] == "in_use":
            now = now or self._store.now()
            if not self._expired_and_not_poison(shard_id, obj, doc, now):
                return None
        elif doc["status"] != "available":
            return None
        reclaimed_from = doc.get("assigned_to") if doc["status"] == "in_use" else None
        doc = transitions.claimed(
            doc, worker=self.worker_id, token=uuid.uuid4().hex, lease_seconds=self.lease_seconds,
            started_at=now or obj.read_at or obj.updated, reclaimed_from=reclaimed_from,
            adoptable=self._adoptable,
        )  # fmt: skip
        return self._take(shard_id, obj.generation, doc, doc["lease"]["token"])

    def _expired_and_not_poison(
        self, shard_id: int, obj: StoredObject, doc: dict[str, Any], now: datetime
    ) -> bool:
        """Whether a held shard's lease expired (store clock) and it may be taken over. A shard whose
        holders died ``max_expiries`` times without progress is failed instead, on the generation judged."""
        held_for = float((doc.get("lease") or {}).get("lease_seconds", self.lease_seconds))
        if not transitions.lease_expired(obj.updated, now, held_for):
            return False
        poisoned = transitions.poisoned(doc, self.max_expiries, now)
        if poisoned is None:
            return True
        if write_judged(self._store, obj.key, obj.generation, poisoned):
            log.warning("shard %d failed: %s", shard_id, poisoned["last_error"])
        return False

    # -- the heartbeat ----------------------------------------------------------------------------

    @property
    def lost(self) -> set[int]:
        """Shards whose lease a write (the background heartbeat's, mostly) found lost."""
        return self._holdings.lost

    def renew_leases(self) -> None:
        """One heartbeat: renew every lease this manager holds (shards, and the finalizer's marker).
        Never raises; the background heartbeat thread calls it every ``heartbeat_seconds``."""
        self._holdings.renew()

    def hold_lease(self, lease: FencedLease) -> None:
        """Have the heartbeat renew ``lease`` too (the fan-in finalizer's marker) until dropped."""
        self._holdings.hold_other(lease)

    def drop_lease(self, lease: FencedLease) -> None:
        self._holdings.drop_other(lease)

    def close(self) -> None:
        """Stop the heartbeat. Held shards stay held until their leases expire."""
        self._holdings.close()

    def claims(self, *, sleep: Callable[[float], None] = time.sleep, handle_sigterm: bool = True,
               max_consecutive_failures: int = 3, steal: bool = False) -> Iterator[Claim]:  # fmt: skip
        """The worker loop (:mod:`shardclaim.worker`): a Claim per shard until all are settled (its options:
        :func:`shardclaim.worker.claims`)."""
        return worker_loop(
            self,
            sleep=sleep,
            handle_sigterm=handle_sigterm,
            max_consecutive_failures=max_consecutive_failures,
            steal=steal,
        )

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> dict[str, Any]:
        """Block until every shard is settled; the aggregate (:mod:`shardclaim.fanin`)."""
        return wait_for_shards(self, timeout=timeout, poll_seconds=poll_seconds, sleep=sleep, clock=clock)

    def __enter__(self) -> ShardManager:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:  # left through an exception: give back what is held, spending nothing
            for shard_id in self.held_shards():
                with contextlib.suppress(ShardclaimError):
                    self.release_shard(shard_id)
        self.close()

    # -- holding and settling ---------------------------------------------------------------------

    def held_shards(self) -> list[int]:
        return self._holdings.held()

    def _lease_for(self, shard_id: int) -> FencedLease:
        """This manager's lease on the shard; or, for a shard it never held, the lease of the holder it
        is named as (adoption, for the seed's two-process CLI), on the generation read now."""
        self._key(shard_id)
        lease = self._holdings.find(shard_id, self.worker_id)
        if lease is not None:
            return lease
        obj, doc = self._read(shard_id)
        held = ranges.held_by(doc, self.worker_id)  # the shard, or the part of it this worker id holds
        lease = held.get("lease") if held is not None else None
        if lease is not None and not lease.get("adoptable"):  # a live worker's lease is its own
            raise LeaseLostError(shard_id, self.worker_id, "it is held by a worker's lease, not a CLI claim")
        if held is None or held["status"] != "in_use" or held.get("assigned_to") != self.worker_id:
            holder = doc.get("assigned_to")
            raise LeaseLostError(
                shard_id,
                self.worker_id,
                f"the shard is {doc['status']}" + (f", held by {holder!r}" if holder else ""),
            )
        return self._holdings.adopt(shard_id, self._new_lease(shard_id, obj.generation, doc))

    def _settle(
        self, shard_id: int, change: Callable[[dict[str, Any]], dict[str, Any]], *, final: bool, kind: str
    ) -> dict[str, Any]:
        lease = self._lease_for(shard_id)
        try:
            doc = lease.write(change, final=final, kind=kind)
        except LeaseLostError:
            if lease.lost.is_set() or lease.ended:
                self._holdings.forget(shard_id, lease, lost=lease.lost.is_set())
            raise
        if final:
            self._holdings.forget(shard_id, lease, lost=False)
        return doc

    def heartbeat(self, shard_id: int) -> None:
        """Renew the lease on a held shard (a conditional write). LeaseLostError if it was lost."""
        self._settle(shard_id, transitions.renewed, final=False, kind="renew")

    def checkpoint(self, shard_id: int, chunks_done: int) -> None:
        """Record that the first ``chunks_done`` chunks of a held shard are done (a fenced write, which
        also renews the lease); a later holder of the shard resumes after them (``resume_chunk``)."""
        self._settle(
            shard_id, lambda d: transitions.checkpointed(d, chunks_done), final=False, kind="checkpoint"
        )

    def mark_completed(self, shard_id: int) -> None:
        """Mark a held shard completed. Raises LeaseLostError if this worker no longer holds it."""
        when = self._store.now()
        self._settle(shard_id, lambda d: transitions.completed(d, when), final=True, kind="complete")

    def mark_failed(self, shard_id: int, error: str | None = None) -> str:
        """Give a held shard back after a failure, spending one attempt: ``available`` or ``failed``."""
        when = self._store.now()
        doc = self._settle(
            shard_id, lambda d: transitions.failed(d, error, self.max_attempts, when), final=True, kind="fail"
        )
        self._candidates.forget()  # the next claim lists again: this failure may have tripped a halt
        return str(doc["status"])

    def release_shard(self, shard_id: int, *, cannot_start: bool = False) -> None:
        """Give a held shard back without spending an attempt (preemption, shutdown; ``cannot_start``:
        the command could not start here, which the shard counts)."""
        when: datetime | None = None  # a clock it cannot trust: given back all the same, the time untold
        with contextlib.suppress(StoreClockError):
            when = self._store.now()
        change = lambda d: transitions.released(d, when, cannot_start=cannot_start)  # noqa: E731
        self._settle(shard_id, change, final=True, kind="release")
