"""Fan-in: wait for every shard, then run a finalizer exactly once per settled state, fleet-wide.

The finalizer is guarded by one marker object, ``_finalize.json`` (:mod:`shardclaim.lease.finalizer`),
leased like a shard: the first worker to find every shard settled takes the marker with a
compare-and-swap and runs the finalizer while its manager's heartbeat renews the lease; the others see
the marker and wait. If that worker dies, its lease expires on the store's clock and the next worker to
look takes the marker over and runs the finalizer again — so a finalizer must be safe to re-run (write
its output under a fixed name, replace, don't append). A finalizer that stalls past its lease and is
taken over is *told*: its next write is refused and :func:`finalize_once` raises LeaseLostError, leaving
the marker as its successor wrote it. A finalizer that fails is recorded (``failed``, with the error) and
not run again for the same settled state until ``shardclaim reset DATASET --finalizer``; a change of
the shards (a reset and re-run) re-arms it.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from shardclaim.errors import LeaseLostError, ObjectNotFoundError
from shardclaim.layout import MetadataError, check_lease_seconds
from shardclaim.lease import finalizer as marker
from shardclaim.lease.fenced import FencedLease
from shardclaim.lease.operator import loads_marker
from shardclaim.lease.shard import lease_expired
from shardclaim.status import SETTLED_STATES, shard_statuses, summarize

if TYPE_CHECKING:
    from shardclaim.manager import ShardManager

__all__ = ["FINALIZE_KEY", "Outcome", "finalize_once", "wait_for_shards"]

FINALIZE_KEY = marker.FINALIZE_KEY
Outcome = Literal["ran", "done", "failed", "running", "unsettled", "halted"]


def wait_for_shards(
    manager: ShardManager,
    *,
    timeout: float | None = None,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Block until every shard is ``completed`` or ``failed``; return the aggregate. ``TimeoutError``
    after ``timeout`` seconds."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        agg = summarize(manager.get_shard_status(), halted=manager.halt is not None)
        if agg["state"] in SETTLED_STATES:
            return agg
        if deadline is not None and clock() >= deadline:
            msg = f"shards still unsettled after {timeout} s: {agg['counts']}"
            raise TimeoutError(msg)
        sleep(poll_seconds)


def finalize_once(
    manager: ShardManager,
    finalizer: Callable[[dict[str, Any]], None],
    *,
    on_lost: Callable[[], None] | None = None,
) -> Outcome:
    """If every shard is settled and the finalizer has not run for this settled state, run
    ``finalizer(aggregate)`` under the marker's lease.

    Returns ``ran``; ``done`` (it ran for this state already); ``failed`` (it failed for this state:
    ``shardclaim reset DATASET --finalizer`` to run it again); ``running`` (another worker holds the
    marker now) or ``unsettled`` (shards remain). Raises LeaseLostError if the marker was taken over
    while the finalizer ran (``on_lost``, if given, is called as soon as the heartbeat finds out), and
    re-raises what the finalizer raised after recording it.
    """
    store = manager.store
    # The marker first, the shards second: a listing made after reading the marker is at least as new
    # as the one its writer made, so a different digest means the shards really changed since.
    try:
        obj = store.read(FINALIZE_KEY)
        generation = obj.generation
        current = loads_marker(obj.data)
    except ObjectNotFoundError:
        obj, generation, current = None, 0, {}
    views = manager.shard_views()
    now = store.now()
    if manager.halt is not None:
        return "halted"  # a halted job is settled, but not finished: no fan-in
    agg = summarize(shard_statuses(manager.master, views, now))
    if agg["state"] not in SETTLED_STATES:
        return "unsettled"
    digest = marker.settled_digest(views)
    status = current.get("status")
    if current.get("settled") == digest and status in ("done", "failed"):
        return "done" if status == "done" else "failed"
    if status == "running" and obj is not None:
        lease = current.get("lease")
        try:  # a hostile lease length (endless, NaN, a string) counts as lapsed, never as for ever
            held_for = check_lease_seconds(
                FINALIZE_KEY, lease.get("lease_seconds") if isinstance(lease, dict) else None
            )
        except MetadataError:
            held_for = 0.0
        # A live finalizer is left alone even when it ran for an older state: it will finish (or its
        # lease lapse), and the next look sees the new state and runs the finalizer again.
        if not lease_expired(obj.updated, now, held_for):
            return "running"
    doc = marker.running(
        worker=manager.worker_id, token=uuid.uuid4().hex, lease_seconds=manager.lease_seconds,
        digest=digest, summary=agg, now=now,
    )  # fmt: skip
    lease = FencedLease(store, FINALIZE_KEY, generation, doc, holder=manager.worker_id, encode=marker.encode)
    try:
        lease.write(lambda d: d, kind="take")
    except LeaseLostError:
        return "running"  # another worker took it first
    if on_lost is not None:
        lease.on_lost(on_lost)
    manager.hold_lease(lease)
    try:
        try:
            finalizer(agg)
        except Exception as e:
            tail = "".join(traceback.format_exception(e))[-4000:]
            code = getattr(e, "returncode", None)
            lease.write(
                lambda d: {**d, "status": "failed", "exit_code": code, "error": tail,
                           "ended_at": store.now().isoformat(), "lease": None},
                final=True, kind="failed",
            )  # fmt: skip
            raise
        lease.write(
            lambda d: {**d, "status": "done", "ended_at": store.now().isoformat(), "lease": None},
            final=True,
            kind="done",
        )
    finally:
        manager.drop_lease(lease)
    return "ran"
