"""The worker loop that :meth:`ShardManager.claims() <shardclaim.manager.ShardManager.claims>` runs::

    with ShardManager("gs://bucket/ds") as manager:
        for claim in manager.claims():
            with claim:
                for record in claim.records():
                    process(record)

Each ``with claim`` block holds one shard, renewed in the background by the manager's heartbeat. Leaving
the block normally completes the shard; an exception marks it failed (spending one attempt, with the
traceback's tail recorded in the shard) and the loop moves on to the next shard; a SIGTERM (spot
preemption) or Ctrl-C releases the shard without spending an attempt and ends the loop. The loop keeps
claiming until every shard is ``completed`` or ``failed``; while other workers still hold leases, it polls
(0.5 s, doubling up to one heartbeat interval, never past the earliest possible expiry) and tries again.

At run time this module sits *below* the manager (the manager imports it; it names ``ShardManager`` in
annotations only), so the seed's ``manager.claims()`` composes it without an import pointing upward.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from shardclaim.dataset.read import iter_shard_records
from shardclaim.errors import JobHaltedError, LeaseLostError, Preempted, ShardclaimError
from shardclaim.lease import halt
from shardclaim.status import SETTLED_STATES, summarize

if TYPE_CHECKING:
    from shardclaim.lease.views import ClaimedShard
    from shardclaim.manager import ShardManager

__all__ = ["Claim", "Preempted", "claims", "sigterm_raises"]

log = logging.getLogger("shardclaim.worker")

_WRITE_EVERY = 1.0  #: seconds of work per progress write that records() aims for (GCS: ~1 update/s)
_MAX_BATCH = 64  #: chunks reserved at once at most


class Claim:
    """One claimed shard; a context manager that settles it on exit."""

    def __init__(self, manager: ShardManager, shard: ClaimedShard, *, steal: bool = False) -> None:
        self.manager = manager
        self.shard = shard
        self.shard_id: int = shard["shard_id"]
        #: The chunks this claim holds, [start, end): the whole shard, or a part of it. With stealing on,
        #: ``end`` moves down when an idle worker takes the tail (``records()`` stops there).
        self.range: tuple[int, int] = tuple(shard.get("range") or (0, shard["num_chunks"]))  # type: ignore[assignment]
        self._steal = steal
        self.outcome: str | None = None  #: completed, available (to retry), failed, released or lost
        self.error_line = ""  #: the exception that failed the shard, in one line

    @property
    def resume_chunk(self) -> int:
        """Chunks before this one were checkpointed as done by an earlier holder."""
        return int(self.shard.get("resume_chunk") or 0)

    @property
    def name(self) -> str:
        """A name for this claim's output that no other part of the shard shares: ``shard_007``, or
        ``shard_007-c0012`` for a part that starts at chunk 12 (name results by it when stealing)."""
        start = self.range[0]
        return f"shard_{self.shard_id:03d}" + (f"-c{start:04d}" if start else "")

    def records(self, *, parse: bool = True) -> Iterator[Any]:
        """The claim's records from ``resume_chunk`` on, chunk by chunk, each chunk verified first. With
        stealing on (``claims(steal=True)``), it reserves the next chunks before it starts them, about
        one write a second however short the chunks, and stops where its range ends, which an idle
        worker's split may have moved. A reservation is not a checkpoint (results are usually written
        when the claim completes; a successor of a preempted holder starts over from the last
        :meth:`checkpoint`), so call :meth:`checkpoint` where the results of the chunks so far are
        durable."""
        if not self._steal:
            return iter_shard_records(
                self.manager.dataset_dir, self.shard_id, parse=parse, start_chunk=self.resume_chunk
            )
        return self._reserving(parse)

    def _reserving(self, parse: bool) -> Iterator[Any]:
        cursor, batch = self.resume_chunk, 1
        while True:
            reserved, end = self.manager.reserve(self.shard_id, cursor, batch)
            self.range = (self.range[0], end)
            if reserved <= cursor:
                return
            started = time.monotonic()
            yield from iter_shard_records(
                self.manager.dataset_dir, self.shard_id, parse=parse, start_chunk=cursor, stop_chunk=reserved
            )
            per_chunk = (time.monotonic() - started) / (reserved - cursor)
            batch = max(1, min(_MAX_BATCH, math.ceil(_WRITE_EVERY / max(per_chunk, 1e-3))))
            cursor = reserved

    def checkpoint(self, chunks_done: int) -> None:
        """The first ``chunks_done`` chunks are done: a holder after a crash resumes after them."""
        self.manager.checkpoint(self.shard_id, chunks_done)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            if exc is None:
                self.manager.mark_completed(self.shard_id)
                self.outcome = "completed"
                return False
            if isinstance(exc, Preempted | KeyboardInterrupt | SystemExit):
                self.manager.release_shard(self.shard_id)
                self.outcome = "released"
                return False
            if not isinstance(exc, Exception):
                return False
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            self.error_line = f"{type(exc).__name__}: {exc}"
            self.outcome = self.manager.mark_failed(self.shard_id, text[-4000:])
            log.warning("shard %d failed (%s): %s", self.shard_id, self.outcome, exc)
            return True  # the loop goes on with the next shard
        except LeaseLostError as lost:
            self.outcome = "lost"
            log.warning("%s; its result is not committed", lost)
            return exc is not None and isinstance(exc, Exception)


def claims(
    manager: ShardManager,
    *,
    sleep: Callable[[float], None] = time.sleep,
    handle_sigterm: bool = True,
    max_consecutive_failures: int = 3,
    steal: bool = False,
) -> Iterator[Claim]:
    """Claim shards until every shard is terminal; see the module docstring. After
    ``max_consecutive_failures`` shards failed in a row with no success in between, the loop stops with
    :class:`ShardclaimError`: a bug or a broken environment must not fail every shard of the job.
    ``steal``: claims may be parts of shards, and a worker with nothing to claim takes the untouched tail
    of a running shard (:mod:`shardclaim.stealing`); name outputs by :attr:`Claim.name`."""
    with sigterm_raises(handle_sigterm), _release_on_interrupt(manager):
        idle = 0
        in_a_row: set[int] = set()  # distinct shards: one bad shard's retries count once
        while True:
            shard = manager.claim_shard(parts=steal) or (manager.steal() if steal else None)
            if shard is not None:
                idle = 0
                claim = Claim(manager, shard, steal=steal)
                yield claim
                _check_settled(manager, shard["shard_id"])
                in_a_row = in_a_row | {claim.shard_id} if claim.outcome in ("available", "failed") else set()
                if len(in_a_row) >= max_consecutive_failures:
                    msg = (
                        f"this worker failed {len(in_a_row)} shards in a row and stops claiming: the code or "
                        f"its environment is the likely culprit; last error: {claim.error_line}"
                    )
                    raise ShardclaimError(msg)
                continue
            statuses = manager.get_shard_status()
            missing = [s["shard_id"] for s in statuses if s["status"] == "missing"]
            if missing:
                msg = (
                    f"shards {missing} of {manager.dataset_dir} have no metadata.json: nothing can claim them"
                )
                raise ShardclaimError(msg)
            if summarize(statuses, halted=manager.halt is not None)["state"] in SETTLED_STATES:
                if manager.halt is not None:  # settled, but not finished: a worker loop ends in error
                    raise JobHaltedError(halt.describe(manager.halt, manager.dataset_dir), manager.halt)
                return
            live = [s for s in statuses if s["status"] == "in_use"]
            idle += 1
            sleep(_wait(manager, live, idle))


def _check_settled(manager: ShardManager, shard_id: int) -> None:
    """The loop went on while the last claim's shard is still held: its ``with claim:`` is missing.
    Releasing it silently would spin for ever (claim, release, claim ...), so: release, and say so."""
    if shard_id not in manager.held_shards():
        return  # settled by ``with claim`` or by a mark_* call of the caller's own
    with contextlib.suppress(LeaseLostError):
        manager.release_shard(shard_id)
    msg = (
        f"shard {shard_id} was claimed but never settled: write `with claim:` around the work in "
        "`for claim in manager.claims():` (or call mark_completed / mark_failed); the shard was released"
    )
    raise ShardclaimError(msg)


def _wait(manager: ShardManager, live: Sequence[Mapping[str, Any]], idle: int) -> float:
    """Poll again soon — the holders may finish any moment (0.5 s, doubling, at most one heartbeat
    interval) — but never past the moment the earliest live lease could expire; 20% jitter."""
    poll = min(0.5 * 2.0 ** min(idle, 16), manager.heartbeat_seconds)
    if live:
        soonest: float = min(manager.lease_seconds - float(s["heartbeat_age_s"] or 0.0) for s in live)
        poll = min(poll, max(soonest, 0.1))
    return poll * (1 + 0.2 * random.random())


@contextlib.contextmanager
def _release_on_interrupt(manager: ShardManager) -> Iterator[None]:
    """A signal that lands while claiming or waiting (not inside a ``with claim``) gives back what
    this worker holds, without spending attempts."""
    try:
        yield
    except (Preempted, KeyboardInterrupt):
        for shard_id in manager.held_shards():
            with contextlib.suppress(LeaseLostError):
                manager.release_shard(shard_id)
        raise


@contextlib.contextmanager
def sigterm_raises(enabled: bool) -> Iterator[None]:
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Preempted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
