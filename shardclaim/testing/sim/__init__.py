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
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from shardclaim.lease import ranges
from shardclaim.lease import shard as transitions
from shardclaim.lease.fenced import FencedLease
from shardclaim.testing import FakeClock
from shardclaim.testing.sim.oracle import Violation, Worker, current
from shardclaim.testing.sim.world import Sim

__all__ = ["MUTATIONS", "Violation", "run_schedule", "run_schedules"]


MUTATIONS: dict[str, str] = {
    "claim-without-precondition": "a claim is written without the generation precondition",
    "expiry-on-worker-clock": "a lease's expiry is judged on the worker's own (skewed) clock",
    "complete-without-fence": "a completion is written without the generation precondition",
    "release-spends-attempt": "a release (preemption) spends an attempt",
    "split-takes-reserved": "a split takes chunks the holder reserved (in work)",
    "rebase-ignores-token": "a holder whose write was refused carries on without its lease token",
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
    saved_untouched, saved_owns = ranges.untouched, ranges.owns
    unfenced = {"claim-without-precondition": "claim", "complete-without-fence": "complete"}.get(name)

    def write(self: FencedLease, change: Any, *, final: bool = False, kind: str = "write") -> dict[str, Any]:
        if kind == unfenced:
            self._generation = None  # type: ignore[assignment]
        return saved_write(self, change, final=final, kind=kind)

    def expired(updated: datetime, now: datetime, lease_seconds: float) -> bool:
        skew = current.actor.skew if isinstance(current.actor, Worker) else 0.0
        return bool((now - updated).total_seconds() + skew > lease_seconds)

    def released(
        doc: dict[str, Any], when: datetime | None = None, *, cannot_start: bool = False
    ) -> dict[str, Any]:
        spent = {"failures": int(doc.get("failures") or 0) + 1}
        return {**saved_released(doc, when, cannot_start=cannot_start), **spent}

    def untouched(part: Any, num_chunks: int) -> tuple[int, int]:
        lo, hi = saved_untouched(part, num_chunks)
        return (int(part.get("resume_chunk") or 0), hi) if hi else (lo, hi)

    def owns(doc: Any, token: str) -> bool:
        return True

    FencedLease.write = write  # type: ignore[method-assign]
    if name == "split-takes-reserved":
        ranges.untouched = untouched
    if name == "rebase-ignores-token":
        ranges.owns = owns
    if name == "expiry-on-worker-clock":
        transitions.lease_expired = expired
    if name == "release-spends-attempt":
        transitions.released = released
    try:
        yield
    finally:
        FencedLease.write = saved_write  # type: ignore[method-assign]
        transitions.lease_expired, transitions.released = saved_expired, saved_released
        ranges.untouched, ranges.owns = saved_untouched, saved_owns


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
        sim = Sim(seed, shards=shards, workers=workers, steps=steps)
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
