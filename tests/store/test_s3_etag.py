"""ABA on S3: an ETag is the MD5 of the bytes, so identical bytes bring back an old version, and a holder
fenced on that version would win again. The protocol writes a unique token into every write's bytes;
on moto's server, a holder fenced off by a reset cannot complete after the shard went through the same
states again (claimed, released, reset), and no version of the shard ever came back."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shardclaim import LeaseLostError, ShardManager
from shardclaim.store.s3 import S3Store
from shardclaim.testing import build_dataset

pytestmark = pytest.mark.s3

KEY = "shard_000/metadata.json"


def test_a_stale_etag_of_identical_content_cannot_win(s3_bucket: str, tmp_path: Path) -> None:
    url = build_dataset(f"s3://{s3_bucket}/ds", tmp_path, shards=1, records=2)
    store = S3Store(s3_bucket, "ds")
    versions = [store.read(KEY).generation]

    def mgr(worker: str) -> ShardManager:
        return ShardManager(url, worker, lease_seconds=60, max_attempts=100)

    with mgr("holder") as holder, mgr("operator") as operator, mgr("other") as other:
        assert holder.claim_shard() is not None
        fenced = store.read(KEY)  # the version the holder's next write is conditioned on, and its bytes
        versions.append(fenced.generation)
        for step in (
            lambda: operator.reset_shard(0),
            other.claim_shard,
            lambda: other.heartbeat(0),
            lambda: other.release_shard(0),
            lambda: operator.reset_shard(0),
        ):
            step()
            versions.append(store.read(KEY).generation)
        # The store itself would bring the holder's version back for the same bytes (the hazard):
        assert store.write("probe/same-bytes", fenced.data).generation == fenced.generation
        assert len(set(versions)) == len(versions)  # ...but no write of the protocol repeated its bytes
        with pytest.raises(LeaseLostError):
            holder.mark_completed(0)
    doc = orjson.loads(store.read(KEY).data)
    assert (doc["status"], doc["assigned_to"]) == ("available", None)
