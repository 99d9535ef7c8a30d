"""The simulated world: each worker's faulty link to the store, and the schedule that drives workers,
the operator and the clock one seeded step at a time, then drains fairly."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

import orjson

from shardclaim.errors import LeaseLostError, ShardclaimError, TransientStoreError
from shardclaim.fanin import FINALIZE_KEY, finalize_once
from shardclaim.lease.select import Candidates
from shardclaim.manager import ShardManager
from shardclaim.status import SETTLED_STATES, summarize
from shardclaim.store.base import Generation, ObjectInfo, StoredObject
from shardclaim.store.retry import RetryingStore, RetryPolicy
from shardclaim.testing import FakeClock, memory_dataset

__all__ = ["Link", "Sim"]

from shardclaim.testing.sim.oracle import (
    HEARTBEAT,
    LEASE,
    MAX_ATTEMPTS,
    MAX_EXPIRIES,
    Context,
    Oracle,
    Violation,
    Worker,
    current,
)


class Link:
    """One worker's faulty link to the store: errors before a request, lost answers, slowness."""

    def __init__(self, oracle: Oracle, worker: Worker | None, rng: random.Random, sim: Sim) -> None:
        self.oracle = oracle
        self.worker = worker
        self.rng = rng
        self.sim = sim

    @property
    def url(self) -> str:
        return self.oracle.url

    def _before(self, what: str) -> None:
        if not self.sim.faults:
            return
        r = self.rng.random()
        if r < 0.04:
            raise TransientStoreError(what, "503 (simulated)")
        if r < 0.05 and self.worker is not None:
            self.oracle.clock.advance(self.rng.uniform(1, LEASE / 2))  # slow for this worker

    def read(self, key: str) -> StoredObject:
        self._before("read")
        return self.oracle.read(key)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        self._before("list")
        return self.oracle.list(prefix, suffix=suffix)

    def now(self) -> datetime:
        self._before("now")
        return self.oracle.now()

    def write(
        self, key: str, data: bytes, *, if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:  # fmt: skip
        self._before("write")
        info = self.oracle.write(key, data, if_generation_match=if_generation_match, metadata=metadata)
        if self.sim.faults and self.rng.random() < 0.03:
            raise TransientStoreError("write", "answer lost (simulated)")
        return info


class Sim:
    def __init__(self, seed: int, *, shards: int, workers: int, steps: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.trace: list[str] = []
        self.faults = True
        self.shards = shards
        self.steps = steps
        # Odd seeds version objects as S3 does (content hashes, unordered, equal bytes → equal version).
        self.versions: Literal["ordered", "etag"] = "etag" if seed % 2 else "ordered"
        inner = memory_dataset(
            shards, chunks_per_shard=6, clock=self.clock, name=f"sim-{seed}", versions=self.versions
        )
        self.oracle = Oracle(inner, self.clock, self._violation)
        self.workers: list[Worker] = []
        self.finalized: Counter[tuple[str, int]] = Counter()
        for i in range(workers):
            self._spawn(f"w{i}", "twin" if i < 2 and self.rng.random() < 0.3 else f"w{i}")
        self.operator = self._manager("operator", None)

    def _violation(self, message: str) -> None:
        raise Violation(self.seed, message, self.trace)

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.clock.now - 1_800_000_000.0:8.1f} {text}")

    def _manager(self, worker_id: str, worker: Worker | None) -> ShardManager:
        link = Link(self.oracle, worker, random.Random(self.rng.random()), self)
        policy = RetryPolicy(
            max_attempts=3, initial_wait=0.5, max_wait=4.0, sleep=self.clock.sleep, clock=self.clock
        )
        faults, self.faults = self.faults, False  # a worker's start-up read is not what is tested
        m = ShardManager(
            f"memory://sim-{self.seed}", worker_id, store=RetryingStore(link, policy=policy),
            lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT, max_attempts=MAX_ATTEMPTS,
            max_expiries=MAX_EXPIRIES, max_outage_seconds=None,
        )  # fmt: skip
        self.faults = faults
        m._holdings.background = False  # the simulator is the heartbeat's driver
        m._candidates = Candidates(random.Random(self.rng.random()), max_age=HEARTBEAT, clock=self.clock)
        return m

    def _spawn(self, name: str, worker_id: str) -> None:
        skew = self.rng.choice([-LEASE, 0.0, LEASE])
        worker = Worker(name, worker_id, None, skew, stealer=self.rng.random() < 0.5)  # type: ignore[arg-type]
        worker.manager = self._manager(worker_id, worker)
        self.workers.append(worker)

    # -- one step -------------------------------------------------------------------------------

    def _call(self, worker: Worker | None, op: str, fn: Callable[[], Any]) -> Any:
        self.oracle.context = Context(worker, op)
        current.actor = worker
        try:
            return fn()
        finally:
            self.oracle.context = Context()
            current.actor = None

    def step(self) -> None:
        r = self.rng.random()
        if r < 0.12:
            seconds = self.rng.uniform(0, LEASE * 0.6)
            self.clock.advance(seconds)
            self.log(f"time passes {seconds:.1f} s")
            return
        if r < 0.17:
            self._operator()
            return
        live = [w for w in self.workers if not w.dead and w.paused_until <= self.clock.now]
        if not live:
            self.clock.advance(HEARTBEAT)
            return
        worker = self.rng.choice(live)
        r = self.rng.random()
        if r < 0.03:
            worker.dead = True
            self.log(f"{worker.name} crashes holding {sorted(worker.holding)}")
            self._spawn(f"{worker.name}'", worker.worker_id)
        elif r < 0.06:
            worker.paused_until = self.clock.now + self.rng.uniform(LEASE, 2.5 * LEASE)
            self.log(f"{worker.name} pauses until t={worker.paused_until - 1_800_000_000.0:.1f}")
        elif r < 0.25:
            self._act(worker, "renew", worker.manager.renew_leases)
        elif worker.holding:
            self._settle(worker)
        elif self.rng.random() < 0.15:
            self._finalize(worker, nested=True)
        else:
            self._claim(worker)

    def _claim(self, worker: Worker) -> None:
        m = worker.manager
        shard = self._act(worker, "claim", lambda: m.claim_shard(parts=worker.stealer))
        if shard is None and worker.stealer:
            shard = self._act(worker, "steal", m.steal)
        if shard is not None:
            worker.holding[shard["shard_id"]] = shard["lease"]["token"]
            worker.cursor[shard["shard_id"]] = int(shard.get("resume_chunk") or 0)

    def _act(self, worker: Worker, op: str, fn: Callable[[], Any]) -> Any:
        try:
            result = self._call(worker, op, fn)
        except LeaseLostError as e:
            self._lost(worker, e.shard_id, op)
            return None
        except TransientStoreError as e:
            self.log(f"{worker.name} {op}: {e.detail}")
            return None
        else:
            self.log(
                f"{worker.name} {op}"
                + (f" -> shard {result['shard_id']}" if isinstance(result, dict) else "")
            )
            return result
        finally:
            for shard_id in list(worker.holding):  # what the heartbeat found lost
                if shard_id in worker.manager.lost:
                    self._lost(worker, shard_id, "renew")

    def _lost(self, worker: Worker, shard_id: int | None, op: str) -> None:
        if shard_id is None or shard_id not in worker.holding:
            return
        worker.told_lost.add(worker.holding.pop(shard_id))
        self.log(f"{worker.name} {op}: lost shard {shard_id}")

    def _settle(self, worker: Worker) -> None:
        shard_id = self.rng.choice(sorted(worker.holding))
        m = worker.manager
        r = self.rng.random()
        if r < 0.3 and worker.stealer:  # a reservation: it will work on the chunks it reserved

            def reserve() -> None:
                cursor, count, done = worker.cursor[shard_id], self.rng.randint(1, 2), self.rng.random() < 0.5
                reserved, _ = m.reserve(shard_id, cursor, count, done=done)
                worker.cursor[shard_id] = reserved

            self._act(worker, "reserve", reserve)
            return
        if r < 0.3:
            cursor = worker.cursor[shard_id] = min(worker.cursor[shard_id] + 1, 6)
            self._act(worker, "checkpoint", lambda: m.checkpoint(shard_id, cursor))
            return
        op, fn = (
            ("complete", lambda: m.mark_completed(shard_id)) if r < 0.75
            else ("fail", lambda: m.mark_failed(shard_id, "boom")) if r < 0.9
            else ("release", lambda: m.release_shard(shard_id))
        )  # fmt: skip
        try:
            self._call(worker, op, fn)
        except LeaseLostError:
            self._lost(worker, shard_id, op)
            return
        except TransientStoreError as e:
            self.log(f"{worker.name} {op} shard {shard_id}: {e.detail}; will retry")
            return
        worker.holding.pop(shard_id, None)
        self.log(f"{worker.name} {op} shard {shard_id}")

    def _operator(self) -> None:
        m = self.operator
        r = self.rng.random()
        try:
            if r < 0.3:
                shard_id = self.rng.randrange(self.shards)
                done = self._call(None, "reset", lambda: m.reset_shard(shard_id))
                self.log(f"operator resets shard {shard_id}: {done}")
            elif r < 0.6:
                self.log(f"operator resets stale: {self._call(None, 'reset-stale', m.reset_stale)}")
            elif r < 0.85:
                self.log(f"operator resets failed: {self._call(None, 'reset-failed', m.reset_failed)}")
            else:
                self.log(
                    f"operator resets the finalizer: {self._call(None, 'reset-finalizer', m.reset_finalizer)}"
                )
        except (TransientStoreError, ShardclaimError) as e:
            self.log(f"operator: {e}")

    def _finalize(self, worker: Worker, *, nested: bool) -> str | None:
        digest: list[str] = []

        def finalizer(agg: dict[str, Any]) -> None:
            doc = orjson.loads(self.oracle.read(FINALIZE_KEY).data)
            digest.append(doc["settled"])
            if nested and self.rng.random() < 0.3:  # it stalls past its lease; a peer takes over
                self.clock.advance(LEASE * 1.5)
                peers = [w for w in self.workers if w is not worker and not w.dead]
                if peers:
                    self._finalize(self.rng.choice(peers), nested=False)

        try:
            outcome = self._call(worker, "finalize", lambda: finalize_once(worker.manager, finalizer))
        except LeaseLostError:
            self.log(f"{worker.name} finalize: lost the marker")
            return None
        except TransientStoreError as e:
            self.log(f"{worker.name} finalize: {e.detail}")
            return None
        self.log(f"{worker.name} finalize: {outcome}")
        if outcome == "ran":
            key = (digest[0], self.oracle.finalizer_epoch)
            self.finalized[key] += 1
            if self.finalized[key] > 1:
                self._violation(f"finalizer: completed twice for one settled state ({digest[0][:8]})")
        return str(outcome)

    # -- the end --------------------------------------------------------------------------------

    def drain(self) -> None:
        """Fair scheduling, no faults: every shard must settle within the bound, then finalize."""
        self.faults = False
        self.log("-- drain: no faults, every worker scheduled --")
        for w in [w for w in self.workers if w.dead]:
            self._spawn(f"{w.name}+", w.worker_id)
        live = [w for w in self.workers if not w.dead]
        for w in live:
            w.paused_until = 0.0
            w.stealer = True  # parts of split shards are claimed only by workers that handle parts
        start = self.clock.now
        bound = 4 * LEASE + self.shards * 2 * HEARTBEAT
        while True:
            statuses = self.operator.get_shard_status()
            if summarize(statuses)["state"] in SETTLED_STATES:
                break
            if self.clock.now - start > bound:
                stuck = [(s["shard_id"], s["status"], s.get("assigned_to")) for s in statuses
                         if s["status"] not in ("completed", "failed")]  # fmt: skip
                self._violation(
                    f"liveness: after {bound:.0f} s of fair scheduling, shards {stuck} are unsettled"
                )
            self._drain_round(live)
            self.clock.advance(HEARTBEAT)
        for _ in range(4):
            outcome = self._finalize(live[0], nested=False)
            if outcome in ("ran", "done"):
                break
            self.clock.advance(LEASE * 1.5)
        else:
            self._violation(f"finalizer: not done after the drain (last outcome {outcome})")

    def _drain_round(self, live: list[Worker]) -> None:
        """Every live worker renews, then completes one shard it holds or claims one."""
        for w in live:
            self._act(w, "renew", w.manager.renew_leases)
            if w.holding:
                shard_id = min(w.holding)
                try:
                    self._call(w, "complete", lambda: w.manager.mark_completed(shard_id))  # noqa: B023
                    self.log(f"{w.name} complete shard {shard_id}")
                except LeaseLostError:
                    self._lost(w, shard_id, "complete")
                w.holding.pop(shard_id, None)
            else:
                self._claim(w)
