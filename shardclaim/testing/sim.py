"""Deterministic simulation of the lease protocol: the real manager code, virtual workers, injected faults.

One *schedule* is a seeded run: a few virtual workers — real :class:`~shardclaim.manager.ShardManager`
objects, with no heartbeat thread (the simulator calls the heartbeat's step) — share one memory store on
a virtual clock. One step at a time a seeded random choice makes a worker claim, renew, checkpoint,
complete, fail or release, crash without releasing, pause past its lease, or finalize; an operator reset
a shard, the stale or failed ones, or the finalizer; or time pass. Each worker's requests go through the
real retry layer over a faulty link: 429/503 before a request, a write applied whose answer is lost, a
store that is slow for that worker. Two workers may share one worker id.

After every accepted write an oracle checks:

* ``claim``: a shard is claimed only when available, or when its lease expired on the store's clock;
* ``fencing``: any other write by a worker lands only on a document that carries a lease token of that
  worker's own claims (a fenced holder commits nothing), and never on one it was told it lost;
* ``exactly-once``: between two operator resets of a shard it is completed at most once;
* ``attempts``: a failure count grows by one on a failure and never otherwise, and never past the budget;
* ``finalizer``: it completes at most once per settled state of the shards (and operator reset).

At the end, a fair drain (no faults, every worker scheduled, crashed ones replaced) must settle every
shard within a bound of virtual time — no shard stuck ``in_use`` after its holder died — and the
finalizer must then be done for the final state.

``python -m shardclaim.testing.sim --schedules N --seed S`` runs schedules S, S+1, ...; a failing one
prints its seed and its trace, which the same seed replays exactly (``--schedules 1 --seed S --trace``).
Planted bugs (``--mutation NAME``, see :data:`MUTATIONS`) show that the checks catch what they claim to.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from shardclaim.errors import LeaseLostError, ShardclaimError, TransientStoreError
from shardclaim.fanin import FINALIZE_KEY, finalize_once
from shardclaim.lease import shard as transitions
from shardclaim.lease.fenced import FencedLease
from shardclaim.lease.select import Candidates
from shardclaim.manager import ShardManager
from shardclaim.status import SETTLED_STATES, summarize
from shardclaim.store.base import ObjectInfo, Store, StoredObject
from shardclaim.store.retry import RetryingStore, RetryPolicy
from shardclaim.testing import FakeClock, memory_dataset

__all__ = ["MUTATIONS", "Violation", "run_schedule", "run_schedules"]

LEASE = 60.0
HEARTBEAT = 15.0
MAX_ATTEMPTS = 3
MAX_EXPIRIES = 3


class Violation(AssertionError):
    """An invariant broke; ``seed`` replays the schedule, ``trace`` tells it step by step."""

    def __init__(self, seed: int, message: str, trace: list[str]) -> None:
        self.seed = seed
        self.message = message
        self.trace = trace
        super().__init__(f"seed {seed}: {message}")

    def report(self) -> str:
        return f"VIOLATION (seed {self.seed}): {self.message}\n" + "\n".join(self.trace[-60:])


@dataclass
class _Worker:
    name: str
    worker_id: str
    manager: ShardManager
    skew: float  # what this worker's own clock is off by (only a mutation would read it)
    holding: dict[int, str] = field(default_factory=dict)  # shard -> the lease token it holds it by
    tokens: set[str] = field(default_factory=set)  # lease tokens of its accepted claims
    told_lost: set[str] = field(default_factory=set)
    paused_until: float = 0.0
    dead: bool = False


@dataclass
class _Context:
    actor: _Worker | None = None  # None: the operator
    op: str = ""


class _Oracle:
    """The shared store; checks every accepted write against the invariants."""

    def __init__(self, inner: Store, clock: FakeClock, fail: Callable[[str], None]) -> None:
        self.inner = inner
        self.clock = clock
        self.fail = fail
        self.context = _Context()
        self.epoch: Counter[int] = Counter()  # operator resets per shard
        self.completions: Counter[tuple[int, int]] = Counter()
        self.finalizer_epoch = 0  # operator resets of the finalizer

    @property
    def url(self) -> str:
        return self.inner.url

    def read(self, key: str) -> StoredObject:
        return self.inner.read(key)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        return self.inner.list(prefix, suffix=suffix)

    def now(self) -> datetime:
        return self.inner.now()

    def write(
        self, key: str, data: bytes, *, if_generation_match: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:  # fmt: skip
        try:
            before = self.inner.read(key)
        except ShardclaimError:
            before = None
        info = self.inner.write(key, data, if_generation_match=if_generation_match, metadata=metadata)
        if key == FINALIZE_KEY and orjson.loads(data).get("status") == "reset":
            self.finalizer_epoch += 1  # counted on the write: a reset whose answer was lost counts too
        if key.startswith("shard_") and before is not None:
            self._check_shard(int(key[6:].partition("/")[0]), before, orjson.loads(data))
        return info

    def _check_shard(self, shard_id: int, before: StoredObject, new: dict[str, Any]) -> None:
        prev = orjson.loads(before.data)
        actor, op = self.context.actor, self.context.op
        if actor is None:
            if new["status"] == "available" and op.startswith("reset"):
                self.epoch[shard_id] += 1
            return
        if op == "claim":
            self._check_claim(actor, shard_id, before, prev, new)
        else:
            self._check_holder_write(actor, op, shard_id, prev)
        self._check_counts(actor, op, shard_id, prev, new)

    def _check_claim(
        self, actor: _Worker, shard_id: int, before: StoredObject, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
        lease = prev.get("lease") or {}
        age = (self.now() - before.updated).total_seconds()
        if prev["status"] == "in_use" and age <= float(lease.get("lease_seconds", LEASE)):
            self.fail(f"claim: {actor.name} took shard {shard_id} over a lease live for {age:.1f} s")
        elif prev["status"] not in ("available", "in_use"):
            self.fail(f"claim: {actor.name} claimed shard {shard_id}, which was {prev['status']}")
        if new["status"] == "failed":  # a poison shard: its holders kept dying without progress
            if int(new.get("expiries_without_progress") or 0) < MAX_EXPIRIES:
                self.fail(f"poison: {actor.name} failed shard {shard_id} before the expiry budget")
        else:
            actor.tokens.add(new["lease"]["token"])

    def _check_holder_write(self, actor: _Worker, op: str, shard_id: int, prev: dict[str, Any]) -> None:
        token = (prev.get("lease") or {}).get("token")
        if prev["status"] != "in_use" or token not in actor.tokens:
            self.fail(
                f"fencing: {actor.name} ({op}) wrote shard {shard_id}, which was {prev['status']} "
                f"under lease {str(token)[:6]} not its own"
            )
        if token in actor.told_lost:
            self.fail(f"fencing: {actor.name} ({op}) wrote shard {shard_id} after being told it lost it")

    def _check_counts(
        self, actor: _Worker, op: str, shard_id: int, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
        grew = int(new.get("failures") or 0) - int(prev.get("failures") or 0)
        if grew != (1 if op == "fail" else 0):
            self.fail(f"attempts: {actor.name} ({op}) changed shard {shard_id}'s failures by {grew}")
        if int(new.get("failures") or 0) > MAX_ATTEMPTS:
            self.fail(f"attempts: shard {shard_id} has {new['failures']} failures, budget {MAX_ATTEMPTS}")
        if new["status"] == "completed" and prev["status"] != "completed":
            key = (shard_id, self.epoch[shard_id])
            self.completions[key] += 1
            if self.completions[key] > 1:
                self.fail(f"exactly-once: shard {shard_id} completed twice (by {actor.name} the 2nd time)")


class _Link:
    """One worker's faulty link to the store: errors before a request, lost answers, slowness."""

    def __init__(self, oracle: _Oracle, worker: _Worker | None, rng: random.Random, sim: _Sim) -> None:
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
        self, key: str, data: bytes, *, if_generation_match: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:  # fmt: skip
        self._before("write")
        info = self.oracle.write(key, data, if_generation_match=if_generation_match, metadata=metadata)
        if self.sim.faults and self.rng.random() < 0.03:
            raise TransientStoreError("write", "answer lost (simulated)")
        return info


class _Sim:
    def __init__(self, seed: int, *, shards: int, workers: int, steps: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.trace: list[str] = []
        self.faults = True
        self.shards = shards
        self.steps = steps
        inner = memory_dataset(shards, clock=self.clock, name=f"sim-{seed}")
        self.oracle = _Oracle(inner, self.clock, self._violation)
        self.workers: list[_Worker] = []
        self.finalized: Counter[tuple[str, int]] = Counter()
        for i in range(workers):
            self._spawn(f"w{i}", "twin" if i < 2 and self.rng.random() < 0.3 else f"w{i}")
        self.operator = self._manager("operator", None)

    def _violation(self, message: str) -> None:
        raise Violation(self.seed, message, self.trace)

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.clock.now - 1_800_000_000.0:8.1f} {text}")

    def _manager(self, worker_id: str, worker: _Worker | None) -> ShardManager:
        link = _Link(self.oracle, worker, random.Random(self.rng.random()), self)
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
        m._candidates = Candidates(random.Random(self.rng.random()))
        return m

    def _spawn(self, name: str, worker_id: str) -> None:
        skew = self.rng.choice([-LEASE, 0.0, LEASE])
        worker = _Worker(name, worker_id, None, skew)  # type: ignore[arg-type]
        worker.manager = self._manager(worker_id, worker)
        self.workers.append(worker)

    # -- one step -------------------------------------------------------------------------------

    def _call(self, worker: _Worker | None, op: str, fn: Callable[[], Any]) -> Any:
        self.oracle.context = _Context(worker, op)
        current.actor = worker
        try:
            return fn()
        finally:
            self.oracle.context = _Context()
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
            shard = self._act(worker, "claim", worker.manager.claim_shard)
            if shard is not None:
                worker.holding[shard["shard_id"]] = shard["lease"]["token"]

    def _act(self, worker: _Worker, op: str, fn: Callable[[], Any]) -> Any:
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

    def _lost(self, worker: _Worker, shard_id: int | None, op: str) -> None:
        if shard_id is None or shard_id not in worker.holding:
            return
        worker.told_lost.add(worker.holding.pop(shard_id))
        self.log(f"{worker.name} {op}: lost shard {shard_id}")

    def _settle(self, worker: _Worker) -> None:
        shard_id = self.rng.choice(sorted(worker.holding))
        m = worker.manager
        r = self.rng.random()
        if r < 0.25:
            self._act(worker, "checkpoint", lambda: m.checkpoint(shard_id, 1))
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

    def _finalize(self, worker: _Worker, *, nested: bool) -> str | None:
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

    def _drain_round(self, live: list[_Worker]) -> None:
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
                shard = self._act(w, "claim", w.manager.claim_shard)
                if shard is not None:
                    w.holding[shard["shard_id"]] = shard["lease"]["token"]


current = _Context()


MUTATIONS: dict[str, str] = {
    "claim-without-precondition": "a claim is written without the generation precondition",
    "expiry-on-worker-clock": "a lease's expiry is judged on the worker's own (skewed) clock",
    "complete-without-fence": "a completion is written without the generation precondition",
    "release-spends-attempt": "a release (preemption) spends an attempt",
}


@contextlib.contextmanager
def _mutation(name: str | None, sim_clock: FakeClock) -> Iterator[None]:
    if name is None:
        yield
        return
    if name not in MUTATIONS:
        msg = f"unknown mutation {name!r}; known: {sorted(MUTATIONS)}"
        raise ValueError(msg)
    saved_write, saved_expired, saved_released = (
        FencedLease.write,
        transitions.lease_expired,
        transitions.released,
    )
    unfenced = {"claim-without-precondition": "claim", "complete-without-fence": "complete"}.get(name)

    def write(self: FencedLease, change: Any, *, final: bool = False, kind: str = "write") -> dict[str, Any]:
        if kind == unfenced:
            self._generation = None  # type: ignore[assignment]
        return saved_write(self, change, final=final, kind=kind)

    def expired(updated: datetime, now: datetime, lease_seconds: float) -> bool:
        skew = current.actor.skew if isinstance(current.actor, _Worker) else 0.0
        return bool((now - updated).total_seconds() + skew > lease_seconds)

    def released(doc: dict[str, Any]) -> dict[str, Any]:
        return {**saved_released(doc), "failures": int(doc.get("failures") or 0) + 1}

    FencedLease.write = write  # type: ignore[method-assign]
    if name == "expiry-on-worker-clock":
        transitions.lease_expired = expired
    if name == "release-spends-attempt":
        transitions.released = released
    try:
        yield
    finally:
        FencedLease.write = saved_write  # type: ignore[method-assign]
        transitions.lease_expired, transitions.released = saved_expired, saved_released


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded uuid4 (lease and write tokens) and global random (retry jitter), restored after."""
    rng = random.Random(seed ^ 0x5EED)
    saved_uuid4, saved_state = uuid.uuid4, random.getstate()
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    random.seed(seed)
    try:
        yield
    finally:
        uuid.uuid4 = saved_uuid4
        random.setstate(saved_state)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The warnings real workers log (lost leases, store errors) are the simulation's daily bread."""
    logger = logging.getLogger("shardclaim")
    saved = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(saved)


def run_schedule(
    seed: int, *, shards: int = 4, workers: int = 3, steps: int = 80, mutation: str | None = None
) -> list[str]:
    """Run one schedule; its trace. Raises :class:`Violation` when an invariant breaks."""
    with _deterministic(seed), _quiet():
        sim = _Sim(seed, shards=shards, workers=workers, steps=steps)
        with _mutation(mutation, sim.clock):
            for _ in range(steps):
                sim.step()
            sim.drain()
        return sim.trace


def run_schedules(
    count: int, *, seed: int = 0, mutation: str | None = None, **options: Any
) -> Violation | None:
    """Run schedules ``seed .. seed + count - 1``; the first violation, or None."""
    for s in range(seed, seed + count):
        try:
            run_schedule(s, mutation=mutation, **options)
        except Violation as v:
            return v
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shardclaim.testing.sim", description=(__doc__ or "").split("\n", maxsplit=1)[0]
    )
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mutation", choices=sorted(MUTATIONS))
    parser.add_argument("--trace", action="store_true", help="print every schedule's trace")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    for s in range(args.seed, args.seed + args.schedules):
        try:
            trace = run_schedule(s, mutation=args.mutation)
        except Violation as v:
            print(v.report())
            print(
                f"replay: python -m shardclaim.testing.sim --schedules 1 --seed {s} --trace", file=sys.stderr
            )
            return 1
        if args.trace:
            print("\n".join(trace))
    elapsed = time.perf_counter() - started
    print(f"{args.schedules} schedules, no violation, {args.schedules / elapsed:.0f} schedules/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
