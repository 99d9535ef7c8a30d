"""The manager on the GCS test server behind a fault-injecting proxy: request counts, lost responses,
throttling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shardclaim import ShardManager, create_sharded_dataset
from shardclaim.errors import StoreError
from shardclaim.store.gcs import GCSStore
from shardclaim.store.retry import RetryingStore, RetryPolicy
from shardclaim.testing import wait_for
from tests._proxy import FaultProxy
from tests.conftest import proxied_client

pytestmark = pytest.mark.gcs


@pytest.fixture
def dataset(gcs_bucket: str, tmp_path: Path) -> str:
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(40)))
    url = f"gs://{gcs_bucket}/ds"
    create_sharded_dataset(str(src), url, num_shards=8, chunk_size_mb=1)
    return url


def manager(proxy: FaultProxy, bucket: str, worker: str, sleeps: list[float] | None = None) -> ShardManager:
    client = proxied_client(proxy)
    policy = RetryPolicy(sleep=(sleeps if sleeps is not None else []).append)
    store = RetryingStore(GCSStore(bucket, "ds", client=client), policy=policy)
    return ShardManager(f"gs://{bucket}/ds", worker, store=store)


def test_an_uncontended_claim_costs_three_requests_and_status_two(
    proxy: FaultProxy, dataset: str, gcs_bucket: str
) -> None:
    m = manager(proxy, gcs_bucket, "w")
    before = len(proxy.requests)
    assert m.claim_shard() is not None
    assert len(proxy.requests) - before == 3  # list, read, conditional write
    before = len(proxy.requests)
    m.get_shard_status()
    assert len(proxy.requests) - before == 2  # one listing page, the clock
    m.close()


def test_a_claim_whose_response_was_lost_is_still_known_as_ours(
    proxy: FaultProxy, dataset: str, gcs_bucket: str
) -> None:
    m = manager(proxy, gcs_bucket, "w")
    proxy.inject("lose_response", method="POST", path_contains="/upload/")
    shard = m.claim_shard(preferred_shard_id=2)
    assert shard is not None
    assert shard["shard_id"] == 2
    assert m.held_shards() == [2]
    assert m.read_shard(2)["assigned_to"] == "w"
    m.mark_completed(2)  # the fencing generation is the one that landed
    assert m.read_shard(2)["status"] == "completed"


def test_throttling_is_retried_without_duplicate_claims(
    proxy: FaultProxy, dataset: str, gcs_bucket: str
) -> None:
    sleeps: list[float] = []
    a = manager(proxy, gcs_bucket, "a", sleeps)
    b = manager(proxy, gcs_bucket, "b", sleeps)
    for status in (429, 503, 429, 503):
        proxy.inject("status", status=status)
    claims = []
    while (shard := (a if len(claims) % 2 else b).claim_shard()) is not None:
        claims.append(shard["shard_id"])
    assert sorted(claims) == list(range(8))
    assert len(sleeps) >= 4


def claim_or_refusal(worker: Callable[[], ShardManager]) -> int | str | None:
    """The shard a new worker's claim took, None, or "refused" for a StoreError that names the store's
    clock (from the claim, or from the worker's start, which reads the dataset)."""
    try:
        shard = worker().claim_shard()
    except StoreError as e:
        if "store's clock" not in str(e):
            raise
        return "refused"
    return None if shard is None else shard["shard_id"]


def test_a_gateway_date_far_in_the_future_does_not_take_a_live_lease(
    proxy: FaultProxy, dataset: str, gcs_bucket: str
) -> None:
    """Every shard held by a live holder; a worker whose answers say it is 2100 (a gateway's clock) must
    not judge those leases expired: two holders of one shard would both process it."""
    holder = ShardManager(dataset, "holder", lease_seconds=600)
    held = [s["shard_id"] for s in iter(holder.claim_shard, None)]
    assert sorted(held) == list(range(8))
    proxy.inject("date", value="Fri, 01 Jan 2100 00:00:00 GMT", count=10_000)
    thief = claim_or_refusal(lambda: manager(proxy, gcs_bucket, "thief"))
    assert thief in (None, "refused"), "a live lease was taken: two holders of one shard"
    for shard_id in held:
        holder.mark_completed(shard_id)  # the holder still holds every one
    assert {s["status"] for s in holder.get_shard_status()} == {"completed"}


def test_a_gateway_date_in_the_past_does_not_leave_a_dead_holders_shards_stuck_in_silence(
    proxy: FaultProxy, dataset: str, gcs_bucket: str
) -> None:
    """A dead holder's leases have expired on the store's clock; a worker whose answers say it is 1970
    would see them live for ever and end with nothing claimed, the job never done. It is refused, saying
    which clock is wrong, or it claims."""
    dead = ShardManager(dataset, "dead", lease_seconds=1)
    assert len(list(iter(dead.claim_shard, None))) == 8
    dead.close()  # no heartbeat, no release: a crash
    observer = ShardManager(dataset, "observer")
    # The server's own clock cannot be injected: wait (about 2 s) until its Date says the leases expired.
    wait_for(lambda: all(s["expired"] for s in observer.get_shard_status()), "the dead holder's leases")
    proxy.inject("date", value="Thu, 01 Jan 1970 00:00:00 GMT", count=10_000)
    worker = claim_or_refusal(lambda: manager(proxy, gcs_bucket, "worker"))
    assert worker is not None, "a dead holder's shard is stuck, and nothing says why"
