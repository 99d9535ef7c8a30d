"""Races real processes on a store to show its compare-and-swap holds (``shardclaim selftest``).

Two races, each with every process released at once by a barrier:

* create: each round, every process tries to create the same new object with
  ``if_generation_match=0``; exactly one may win.
* counter: every process increments one shared counter by read / conditional write until it has
  landed its share; the final value must equal the number of writes that reported success.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import uuid
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from shardclaim.errors import GenerationMismatchError, ShardclaimError

__all__ = ["CounterResult", "CreateResult", "race_counter", "race_create"]

_BARRIER_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class CreateResult:
    winners_per_round: list[int]  #: how many processes won each round (must all be 1)
    losses: int

    @property
    def ok(self) -> bool:
        return all(w == 1 for w in self.winners_per_round)


@dataclass(frozen=True, slots=True)
class CounterResult:
    reported_successes: int
    final_value: int
    conflicts: int

    @property
    def ok(self) -> bool:
        return self.final_value == self.reported_successes


def _create_worker(url: str, prefix: str, rounds: int, barrier: Barrier, out: Queue[Any]) -> None:
    from shardclaim.store import open_store

    wins: list[int] = []
    losses = 0
    try:
        store = open_store(url)
        for r in range(rounds):
            barrier.wait(_BARRIER_TIMEOUT)
            try:
                store.write(f"{prefix}/round_{r:04d}", str(os.getpid()).encode(), if_generation_match=0)
            except GenerationMismatchError:
                losses += 1
            else:
                wins.append(r)
        out.put(("ok", wins, losses))
    except BaseException as e:
        barrier.abort()
        out.put(("error", repr(e), 0))


def _counter_worker(url: str, key: str, increments: int, barrier: Barrier, out: Queue[Any]) -> None:
    from shardclaim.store import open_store

    successes = conflicts = 0
    try:
        store = open_store(url)
        barrier.wait(_BARRIER_TIMEOUT)
        while successes < increments:
            obj = store.read(key)
            value = int(obj.data)
            try:
                store.write(key, str(value + 1).encode(), if_generation_match=obj.generation)
            except GenerationMismatchError:
                conflicts += 1
            else:
                successes += 1
        out.put(("ok", successes, conflicts))
    except BaseException as e:
        barrier.abort()
        out.put(("error", repr(e), 0))


def _run(target: Any, processes: int, args: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    ctx = mp.get_context("spawn")  # no fork: HTTP clients and their threads do not survive it
    barrier = ctx.Barrier(processes)
    out: Queue[Any] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results: list[Any] = []
    while len(results) < processes:
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                barrier.abort()
                for p in procs:
                    p.kill()
                raise ShardclaimError(f"a racing process died with exit code {dead[0].exitcode}") from None
    for p in procs:
        p.join()
    # A process that fails breaks the barrier the others wait at: its error is the one to show.
    errors = sorted((r[1] for r in results if r[0] != "ok"), key=lambda e: "BrokenBarrierError" in str(e))
    if errors:
        raise ShardclaimError(f"{len(errors)} racing process(es) failed: {errors[0]}")
    return [(r[1], r[2]) for r in results]


def race_create(url: str, *, processes: int, rounds: int) -> CreateResult:
    """``processes`` processes race to create each of ``rounds`` new objects under ``url``."""
    from shardclaim.store import open_store

    open_store(url)  # a URL error is reported here, once, not by every process
    prefix = f"selftest-{uuid.uuid4().hex[:12]}/create"
    results = _run(_create_worker, processes, (url, prefix, rounds))
    winners = [0] * rounds
    for wins, _ in results:
        for r in wins:
            winners[r] += 1
    return CreateResult(winners, sum(losses for _, losses in results))


def race_counter(url: str, *, processes: int, increments: int) -> CounterResult:
    """``processes`` processes each land ``increments`` increments of one counter under ``url``."""
    from shardclaim.store import open_store

    key = f"selftest-{uuid.uuid4().hex[:12]}/counter"
    open_store(url).write(key, b"0", if_generation_match=0)
    results = _run(_counter_worker, processes, (url, key, increments))
    final = int(open_store(url).read(key).data)
    return CounterResult(sum(s for s, _ in results), final, sum(c for _, c in results))
