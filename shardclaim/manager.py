"""The one lease algorithm: claim, heartbeat, complete, fail, release, reset and status of shards.

Every state change is a conditional write of one shard's ``metadata.json`` on the generation the writer
last saw, so under any interleaving of workers exactly one of them moves a shard on. The generation a
holder last wrote is its *fencing token*: once anyone else has written the shard (a peer reclaiming an
expired lease, an operator's reset), every later write by the old holder is refused and surfaces as
:class:`LeaseLostError` — it can never complete a shard it no longer holds.

Expiry is judged on the store's clock only: a lease is expired when the object's last update, as the
store stamped it, is more than the *holder's* ``lease_seconds`` (recorded with the lease) before the
store's current time — so a long CLI claim is safe from workers that use short leases. Each state write
also sets ``status``, ``holder``, ``attempt``, ``failures`` as object metadata: status is one listing.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from shardclaim._identity import default_worker_id, launcher_index
from shardclaim.errors import (
    GenerationMismatchError,
    LeaseLostError,
    ObjectNotFoundError,
    ShardclaimError,
    StoreError,
)
from shardclaim.layout import MASTER_KEY, SHARD_METADATA, check_master, check_shard, parse_json
from shardclaim.status import lease_expired, lease_of, listing_by_shard, shard_statuses
from shardclaim.store import Store, StoredObject, open_store

if TYPE_CHECKING:
    from shardclaim.worker import Claim

__all__ = ["ShardManager"]

log = logging.getLogger("shardclaim.manager")


@dataclass(slots=True)
class _Held:
    generation: int
    doc: dict[str, Any]


class ShardManager:
    """Claims and settles the shards of the dataset at ``dataset_dir`` (path or URL) for one worker.

    Thread-safe: the background heartbeat and the caller share one lock per manager.
    """

    def __init__(
        self,
        dataset_dir: str,
        worker_id: str | None = None,
        *,
        lease_seconds: float = 60.0,
        heartbeat_seconds: float | None = None,
        max_attempts: int = 3,
        store: Store | None = None,
    ) -> None:
        if not lease_seconds > 0:
            msg = f"lease_seconds must be positive, got {lease_seconds!r}"
            raise ValueError(msg)
        if heartbeat_seconds is None:
            heartbeat_seconds = max(lease_seconds / 4, 10.0) if lease_seconds >= 40 else lease_seconds / 4
        if not 0 < heartbeat_seconds < lease_seconds:
            msg = f"heartbeat_seconds must be in (0, lease_seconds), got {heartbeat_seconds!r}"
            raise ValueError(msg)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            msg = f"max_attempts must be a positive integer, got {max_attempts!r}"
            raise ValueError(msg)
        self.dataset_dir = dataset_dir
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.max_attempts = max_attempts
        self._store: Store = store if store is not None else open_store(dataset_dir)
        try:
            master = self._store.read(MASTER_KEY)
        except ObjectNotFoundError:
            msg = f"{dataset_dir} is not a complete shardclaim dataset: it has no {MASTER_KEY}"
            raise ShardclaimError(msg) from None
        self.master = check_master(MASTER_KEY, parse_json(MASTER_KEY, master.data))
        self.num_shards: int = self.master["num_shards"]
        self._dirs: list[str] = [s["directory"] for s in self.master["shards"]]
        self._held: dict[int, _Held] = {}
        self._lock = threading.RLock()
        self._random = random.Random()
        self._candidates: list[int] = []  # available shards from the last listing, popped from the end
        self._busy: list[tuple[int, datetime, float]] = []  # in_use: (shard, last write, its lease)
        self._tried_launcher_index = False
        self._stop = threading.Event()
        self._heartbeats: threading.Thread | None = None
        self.lost: set[int] = set()  #: shards whose lease the background heartbeat found lost

    # -- helpers ----------------------------------------------------------------------------------

    def _key(self, shard_id: int) -> str:
        if not isinstance(shard_id, int) or isinstance(shard_id, bool) or not 0 <= shard_id < self.num_shards:
            msg = f"unknown shard id {shard_id!r}: this dataset has shards 0..{self.num_shards - 1}"
            raise ValueError(msg)
        return f"{self._dirs[shard_id]}/{SHARD_METADATA}"

    def _read(self, shard_id: int) -> tuple[StoredObject, dict[str, Any]]:
        key = self._key(shard_id)
        obj = self._store.read(key)
        return obj, check_shard(key, parse_json(key, obj.data), expect_id=shard_id)

    def _write(self, shard_id: int, doc: dict[str, Any], generation: int) -> int:
        lease = doc.get("lease") or {}
        meta = {
            "status": doc["status"],
            "attempt": str(doc.get("attempt", 0)),
            "failures": str(doc.get("failures", 0)),
        }
        if doc.get("assigned_to"):
            meta["holder"] = _ascii(doc["assigned_to"])
        if lease.get("token"):
            meta["token"] = lease["token"]
            meta["lease-seconds"] = repr(float(lease["lease_seconds"]))
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        return self._store.write(
            self._key(shard_id), data, if_generation_match=generation, metadata=meta
        ).generation

    # -- claiming ---------------------------------------------------------------------------------

    def claim_shard(self, preferred_shard_id: int | None = None) -> dict[str, Any] | None:
        """Claim one shard: ``preferred_shard_id`` (else the launcher's index) first, then the others
        in random order. Returns the shard (``shard_id``, ``chunks`` as URLs, ``status``,
        ``assigned_to``, ...) or None when no shard is claimable now.

        Uncontended: at most three store requests (listing, read, conditional write); the listing is
        reused until three candidates in a row turn out taken, so a worker mostly pays two.
        """
        if preferred_shard_id is not None:
            self._key(preferred_shard_id)
        elif not self._tried_launcher_index:  # the launcher's index is worth one try per worker
            self._tried_launcher_index = True
            preferred_shard_id = launcher_index(self.num_shards)
        if preferred_shard_id is not None:
            claimed = self._try_claim(preferred_shard_id, None)
            if claimed is not None:
                return claimed
        fresh = False
        misses = 0
        while True:
            if not self._candidates or misses >= 3:
                if fresh:
                    break
                self._refresh_candidates()
                fresh, misses = True, 0
                if not self._candidates:
                    break
            claimed = self._try_claim(self._candidates.pop(), None)
            if claimed is not None:
                return claimed
            misses += 1
        return self._claim_expired()

    def _refresh_candidates(self) -> None:
        """One listing: the available shards (in random order) and the held ones with their age."""
        listing = listing_by_shard(self._store, self._dirs)
        available = [i for i, o in listing.items() if o.metadata.get("status", "available") == "available"]
        self._random.shuffle(available)
        self._candidates = available
        self._busy = [
            (i, o.updated, lease_of(o.metadata, self.lease_seconds))
            for i, o in listing.items()
            if o.metadata.get("status") == "in_use"
        ]
        self._random.shuffle(self._busy)

    def _claim_expired(self) -> dict[str, Any] | None:
        """After a fresh listing found nothing available: take over a lease that expired, if any."""
        if not self._busy:
            return None
        now = self._store.now()
        for shard_id, updated, lease_seconds in self._busy:
            if lease_expired(updated, now, lease_seconds):
                claimed = self._try_claim(shard_id, now)
                if claimed is not None:
                    return claimed
        return None

    def _try_claim(self, shard_id: int, now: datetime | None) -> dict[str, Any] | None:
        obj, doc = self._read(shard_id)
        reclaimed_from = None
        if doc["status"] == "in_use":
            now = now or self._store.now()
            held_for = (doc.get("lease") or {}).get("lease_seconds", self.lease_seconds)
            if not isinstance(held_for, int | float) or not lease_expired(obj.updated, now, float(held_for)):
                return None
            reclaimed_from = doc.get("assigned_to")
        elif doc["status"] != "available":
            return None
        token = uuid.uuid4().hex
        doc = {
            **doc,
            "status": "in_use",
            "assigned_to": self.worker_id,
            "started_at": (now or obj.updated).isoformat(),
            "completed_at": None,
            "attempt": int(doc.get("attempt", 0)) + 1,
            "lease": {"token": token, "worker": self.worker_id, "lease_seconds": self.lease_seconds},
        }
        if reclaimed_from is not None:
            doc["expired_leases"] = int(doc.get("expired_leases", 0)) + 1
            doc["reclaimed_from"] = reclaimed_from
        try:
            generation = self._write(shard_id, doc, obj.generation)
        except GenerationMismatchError:
            return None  # a peer got there first: try another shard
        with self._lock:
            self._held[shard_id] = _Held(generation, doc)
            self.lost.discard(shard_id)
            if self._heartbeats is None:
                self._heartbeats = threading.Thread(
                    target=self._heartbeat_loop, name="shardclaim-heartbeat", daemon=True
                )
                self._heartbeats.start()
        return self._describe(shard_id, doc)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            for shard_id in self.held_shards():
                try:
                    with self._lock:  # a shard settled meanwhile is not ours to renew
                        if shard_id in self._held:
                            self.heartbeat(shard_id)
                except LeaseLostError as e:
                    log.warning("%s", e)
                    self.lost.add(shard_id)
                except StoreError as e:  # retried already; the lease may survive to the next beat
                    log.warning("heartbeat for shard %d failed: %s", shard_id, e)

    def close(self) -> None:
        """Stop the heartbeat. Held shards stay held until their leases expire."""
        self._stop.set()
        if self._heartbeats is not None:
            self._heartbeats.join()

    def claims(self, **options: Any) -> Iterator[Claim]:
        """The worker loop (:mod:`shardclaim.worker`): yields a Claim per shard until all are terminal."""
        from shardclaim.worker import claims

        return claims(self, **options)

    def wait(self, timeout: float | None = None, **options: Any) -> dict[str, Any]:
        """Block until every shard is terminal; the aggregate (:mod:`shardclaim.fanin`)."""
        from shardclaim.fanin import wait_for_shards

        return wait_for_shards(self, timeout=timeout, **options)

    def __enter__(self) -> ShardManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _describe(self, shard_id: int, doc: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k != "chunks"}
        base = f"{self._store.url.rstrip('/')}/{self._dirs[shard_id]}"
        out["chunks"] = [f"{base}/{c['file']}" for c in doc["chunks"]]
        out["chunk_info"] = list(doc["chunks"])
        out["dataset_dir"] = self.dataset_dir
        return out

    # -- holding and settling ---------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store behind the dataset (what :mod:`shardclaim.fanin` guards its marker with)."""
        return self._store

    def read_shard(self, shard_id: int) -> dict[str, Any]:
        """One shard's metadata as stored now (checked, never trusted blindly)."""
        return self._read(shard_id)[1]

    def held_shards(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def heartbeat(self, shard_id: int) -> None:
        """Renew the lease on a held shard (a conditional write). LeaseLostError if it was lost."""
        self._settle(
            shard_id, lambda doc: {**doc, "heartbeats": int(doc.get("heartbeats", 0)) + 1}, keep=True
        )

    def checkpoint(self, shard_id: int, chunks_done: int) -> None:
        """Record that the first ``chunks_done`` chunks of a held shard are done (a fenced write, which
        also renews the lease); a later holder of the shard resumes after them (``resume_chunk``)."""
        self._settle(shard_id, lambda doc: {**doc, "resume_chunk": int(chunks_done)}, keep=True)

    def mark_completed(self, shard_id: int) -> None:
        """Mark a held shard completed. Raises LeaseLostError if this worker no longer holds it."""
        self._settle(
            shard_id,
            lambda doc: {
                **doc,
                "status": "completed",
                "completed_at": self._store.now().isoformat(),
                "lease": None,
            },
        )

    def mark_failed(self, shard_id: int, error: str | None = None) -> str:
        """Give a held shard back after a failure, spending one attempt: ``available`` or ``failed``."""
        outcome: list[str] = []

        def failed(doc: dict[str, Any]) -> dict[str, Any]:
            failures = int(doc.get("failures", 0)) + 1
            status = "failed" if failures >= self.max_attempts else "available"
            outcome.append(status)
            return {
                **doc,
                "status": status,
                "failures": failures,
                "last_error": None if error is None else str(error)[-4000:],
                "assigned_to": None,
                "lease": None,
            }

        self._settle(shard_id, failed)
        return outcome[-1]

    def release_shard(self, shard_id: int) -> None:
        """Give a held shard back without spending an attempt (preemption, shutdown)."""
        self._settle(shard_id, lambda doc: {**doc, "status": "available", "assigned_to": None, "lease": None})

    def _settle(self, shard_id: int, change: Any, *, keep: bool = False) -> None:
        self._key(shard_id)
        with self._lock:
            held = self._held.get(shard_id) or self._adopt(shard_id)
            doc = change(dict(held.doc))
            try:
                generation = self._write(shard_id, doc, held.generation)
            except GenerationMismatchError:
                del self._held[shard_id]
                raise LeaseLostError(
                    shard_id, self.worker_id, "the shard was written by someone else"
                ) from None
            if keep:
                held.generation, held.doc = generation, doc
            else:
                del self._held[shard_id]

    def _adopt(self, shard_id: int) -> _Held:
        """A shard the store says this worker id holds (the seed's CLI claims and completes in two runs)."""
        obj, doc = self._read(shard_id)
        if doc["status"] != "in_use" or doc.get("assigned_to") != self.worker_id:
            holder = doc.get("assigned_to")
            raise LeaseLostError(
                shard_id,
                self.worker_id,
                f"the shard is {doc['status']}" + (f", held by {holder!r}" if holder else ""),
            )
        return self._held.setdefault(shard_id, _Held(obj.generation, doc))

    # -- operator actions and status --------------------------------------------------------------

    def reset_shard(self, shard_id: int) -> None:
        """Operator action: make a shard available with a fresh retry budget; fences off any holder."""
        for _ in range(10):
            obj, doc = self._read(shard_id)
            doc = {**doc, "status": "available", "assigned_to": None, "completed_at": None,
                   "lease": None, "failures": 0, "resume_chunk": 0}  # fmt: skip
            try:
                self._write(shard_id, doc, obj.generation)
            except GenerationMismatchError:
                continue
            with self._lock:
                self._held.pop(shard_id, None)
            return
        msg = f"shard {shard_id} kept changing under reset; try again"
        raise ShardclaimError(msg)

    def get_shard_status(self) -> list[dict[str, Any]]:
        """Every shard's state from one listing (holder, attempt, failures, heartbeat age, expiry)."""
        listing = listing_by_shard(self._store, self._dirs)
        return shard_statuses(self.master, listing, self._store.now(), self.lease_seconds)


def _ascii(text: str) -> str:
    cleaned = "".join(c if 0x21 <= ord(c) <= 0x7E else "_" for c in text)
    return cleaned[:200] or "_"
