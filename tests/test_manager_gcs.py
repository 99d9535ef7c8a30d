"""The manager on the GCS test server behind a fault-injecting proxy: request counts, lost responses,
throttling."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shardclaim import ShardManager, create_sharded_dataset
from shardclaim.store.gcs import GCSStore
from shardclaim.store.retry import RetryingStore, RetryPolicy
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
