"""Fan-in: wait for every shard, then run a finalizer exactly once across the whole fleet.

The finalizer is guarded by one marker object, ``_finalize.json``, written with compare-and-swap like a
shard: the first worker to find every shard settled creates it (``if_generation_match=0``) and runs the
finalizer under a lease it heartbeats; the others see the marker and move on. If the finalizing worker
dies, its lease expires (on the store's clock) and the next worker to look takes the marker over and runs
the finalizer again; once it has succeeded the marker says ``done`` and nobody runs it again. A finalizer
must therefore be safe to re-run after a crash (write its output under a fixed name, replace, don't append).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError
from shardclaim.status import lease_expired, summarize

if TYPE_CHECKING:
    from shardclaim.manager import ShardManager

__all__ = ["FINALIZE_KEY", "finalize_once", "wait_for_shards"]

FINALIZE_KEY = "_finalize.json"


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
        agg = summarize(manager.get_shard_status())
        if agg["state"] in ("succeeded", "failed"):
            return agg
        if deadline is not None and clock() >= deadline:
            msg = f"shards still unsettled after {timeout} s: {agg['counts']}"
            raise TimeoutError(msg)
        sleep(poll_seconds)


def finalize_once(manager: ShardManager, finalizer: Callable[[dict[str, Any]], None]) -> str:
    """If every shard is settled and nobody has finalized (or a finalizer's lease expired), run
    ``finalizer(aggregate)`` under the marker's lease. Returns ``ran``, ``done`` (someone finished it),
    ``running`` (someone else holds it now) or ``unsettled`` (shards remain)."""
    agg = summarize(manager.get_shard_status())
    if agg["state"] not in ("succeeded", "failed"):
        return "unsettled"
    store = manager.store
    try:
        obj = store.read(FINALIZE_KEY)
        marker = orjson.loads(obj.data)
        if marker.get("status") == "done":
            return "done"
        lease = float(marker.get("lease_seconds", manager.lease_seconds))
        if not lease_expired(obj.updated, store.now(), lease):
            return "running"
        generation = obj.generation
    except ObjectNotFoundError:
        generation = 0
    token = uuid.uuid4().hex
    doc = {"status": "running", "worker": manager.worker_id, "token": token,
           "lease_seconds": manager.lease_seconds, "summary": agg}  # fmt: skip
    try:
        held = [store.write(FINALIZE_KEY, orjson.dumps(doc), if_generation_match=generation).generation]
    except GenerationMismatchError:
        return "running"
    stop = threading.Event()
    lock = threading.Lock()

    def beat() -> None:
        while not stop.wait(manager.heartbeat_seconds):
            with lock:
                try:
                    held[0] = store.write(
                        FINALIZE_KEY, orjson.dumps(doc), if_generation_match=held[0]
                    ).generation
                except GenerationMismatchError:
                    return

    beater = threading.Thread(target=beat, name="shardclaim-finalize-heartbeat", daemon=True)
    beater.start()
    try:
        finalizer(agg)
    finally:
        stop.set()
        beater.join()
    with lock:
        store.write(FINALIZE_KEY, orjson.dumps({**doc, "status": "done"}), if_generation_match=held[0])
    return "ran"
