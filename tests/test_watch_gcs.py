"""On the GCS test server, counted at the HTTP level: a refresh of ``status --watch`` (and a look of
``wait``, the same snapshot) is one list request and one clock request, whatever the shards' states: their
state rides in the listing's object metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardclaim import ShardManager
from shardclaim.store.gcs import GCSStore
from shardclaim.testing import build_dataset
from shardclaim.view.follow import Follower
from tests.conftest import proxied_client

pytestmark = pytest.mark.gcs


def test_a_refresh_is_one_list_request_and_one_clock_request(
    proxy: Any, gcs_bucket: str, tmp_path: Path
) -> None:
    url = build_dataset(f"gs://{gcs_bucket}/ds", tmp_path, shards=30, records=60)
    worker = ShardManager(url, "w1", max_attempts=1)
    for _ in range(5):
        shard = worker.claim_shard()
        assert shard is not None
        worker.mark_completed(shard["shard_id"])
    held = worker.claim_shard()
    assert held is not None
    counted = GCSStore(gcs_bucket, "ds", client=proxied_client(proxy))
    follower = Follower(ShardManager(url, "watcher", store=counted))
    proxy.requests.clear()
    look = follower.look()
    assert len(proxy.requests) == 2, proxy.requests
    assert proxy.count("GET", "/o?") == 1  # the listing
    assert look.snapshot.summary["counts"] == {"completed": 5, "in_use": 1, "available": 24}
    assert [r.shard_id for r in look.slowest] == [held["shard_id"]]
    worker.close()
