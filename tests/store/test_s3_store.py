"""What the S3 store adds to the contract: listings that fill in metadata S3 does not list (at a counted
cost), its endpoint and credentials, and chunk data through s3fs — on moto's server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shardclaim import iter_shard_records, open_store
from shardclaim.errors import GenerationMismatchError, StoreError, TransientStoreError
from shardclaim.store.s3 import S3Store, default_client
from shardclaim.testing import build_dataset

pytestmark = pytest.mark.s3


class Requests:
    """Every S3 operation a client sends (by name), and the most HEADs it had in flight at once."""

    def __init__(self, client: Any) -> None:
        self.sent: Counter[str] = Counter()
        self.max_heads = 0
        self._heads = 0
        self._lock = threading.Lock()
        client.meta.events.register("before-call.s3", self._before)
        client.meta.events.register("after-call.s3", self._after)
        client.meta.events.register("after-call-error.s3", self._after)

    def _before(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.sent[model.name] += 1
            if model.name == "HeadObject":
                self._heads += 1
                self.max_heads = max(self.max_heads, self._heads)

    def _after(self, model: Any = None, **_: Any) -> None:
        if model is not None and model.name == "HeadObject":
            with self._lock:
                self._heads -= 1

    def take(self) -> dict[str, int]:
        with self._lock:
            sent, self.sent = dict(self.sent), Counter()
        return sent


def test_a_listing_reads_the_metadata_of_each_object_it_has_not_seen_once(s3_bucket: str) -> None:
    writer = S3Store(s3_bucket, "ds")
    for i in range(25):
        writer.write(f"shard_{i:03d}/metadata.json", b"{%d}" % i, metadata={"status": "available"})
    reader = S3Store(s3_bucket, "ds", list_page_size=10, head_threads=4)
    count = Requests(reader.client)

    listed = reader.list(suffix="/metadata.json")
    assert [dict(o.metadata) for o in listed] == [{"status": "available"}] * 25
    assert count.take() == {"ListObjectsV2": 3, "HeadObject": 25}
    assert 1 < count.max_heads <= 4
    assert reader.list(suffix="/metadata.json") == listed
    assert count.take() == {"ListObjectsV2": 3}  # nothing changed: the pages alone

    in_use = {"status": "in_use", "holder": "w"}
    moved = writer.write("shard_007/metadata.json", b"{7, again}", metadata=in_use)
    writer.client.delete_object(Bucket=s3_bucket, Key="ds/shard_011/metadata.json")
    now = {o.key: o for o in reader.list(suffix="/metadata.json")}
    assert count.take() == {"ListObjectsV2": 3, "HeadObject": 1}  # the one that changed
    assert len(now) == 24
    assert "shard_011/metadata.json" not in now
    changed = now["shard_007/metadata.json"]
    assert (changed.generation, changed.size) == (moved.generation, len(b"{7, again}"))
    assert dict(changed.metadata) == in_use


def test_the_stores_own_writes_and_reads_cost_no_head_in_its_listings(s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "p")
    other = S3Store(s3_bucket, "p")
    other.write("b", b"written elsewhere", metadata={"status": "failed"})
    count = Requests(store.client)
    store.write("a", b"mine", metadata={"status": "completed"})
    store.read("b")
    count.take()
    assert [dict(o.metadata) for o in store.list()] == [{"status": "completed"}, {"status": "failed"}]
    assert count.take() == {"ListObjectsV2": 1}


def test_an_object_deleted_between_the_listing_and_its_head_is_left_out(s3_bucket: str) -> None:
    writer = S3Store(s3_bucket, "p")
    writer.write("stays", b"1", metadata={"status": "available"})
    writer.write("goes", b"2", metadata={"status": "available"})
    reader = S3Store(s3_bucket, "p", head_threads=1)

    def delete_first(params: dict[str, Any], **_: Any) -> None:
        if params["Key"] == "p/goes":
            writer.client.delete_object(Bucket=s3_bucket, Key="p/goes")

    reader.client.meta.events.register("before-parameter-build.s3.HeadObject", delete_first)
    assert [o.key for o in reader.list()] == ["stays"]


def test_s3_urls_open_the_s3_store_at_the_environments_endpoint(s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/runs/one/")
    assert isinstance(store.inner, S3Store)
    assert store.url == f"s3://{s3_bucket}/runs/one"
    store.write("k", b"v", metadata={"status": "available"})
    listed = open_store(f"s3://{s3_bucket}/runs").list()
    assert [(o.key, o.metadata["status"]) for o in listed] == [("one/k", "available")]


def test_missing_credentials_are_one_clear_line_from_the_cli(s3_bucket: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = subprocess.run(
        [sys.executable, "-m", "shardclaim", "status", f"s3://{s3_bucket}/ds"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "no AWS credentials" in done.stderr
    assert "AWS_ACCESS_KEY_ID" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_bucket_is_not_a_missing_object(s3_server: str) -> None:
    store = S3Store("no-such-bucket-here")
    for op in (lambda: store.read("k"), store.list, store.now, lambda: store.write("k", b"v")):
        with pytest.raises(StoreError, match="bucket not found"):
            op()


def test_a_dataset_of_many_shards_is_built_on_s3_and_read_back(s3_bucket: str, tmp_path: Path) -> None:
    """64 shards share the builder's upload memory in blocks smaller than S3's smallest part (5 MiB):
    the chunk files' blocks are raised to it, and every record comes back."""
    url = build_dataset(f"s3://{s3_bucket}/ds", tmp_path, shards=64, records=640, chunk_size_mb=1)
    got = sorted(r["id"] for s in range(64) for r in iter_shard_records(url, s))
    assert got == list(range(640))


@pytest.mark.parametrize(
    ("status", "code", "raised"),
    [
        (412, "PreconditionFailed", GenerationMismatchError),
        (409, "ConditionalRequestConflict", GenerationMismatchError),  # a concurrent write won the key
        (404, "NoSuchKey", GenerationMismatchError),  # If-Match on an object that is not there
        (503, "SlowDown", TransientStoreError),
        (500, "InternalError", TransientStoreError),
        (400, "RequestTimeout", TransientStoreError),  # S3 says 400 for a request body that came too slowly
        (403, "AccessDenied", StoreError),
    ],
)
def test_s3_answers_to_a_conditional_write_map_to_the_store_errors(
    status: int, code: str, raised: type[StoreError]
) -> None:
    from botocore.stub import Stubber

    store = S3Store("bucket", "p", client=default_client("http://127.0.0.1:9"))
    with Stubber(store.client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(raised) as err:
            store.write("k", b"v", if_generation_match="0123abcd")
    assert type(err.value) is raised
    if raised is GenerationMismatchError:
        assert (err.value.key, err.value.expected) == ("k", "0123abcd")  # type: ignore[attr-defined]


def _stubbed_get(body: bytes, etag: str, date: str | None = None) -> Any:
    """A store whose one GET answers ``body`` under ``etag`` (what a proxy cutting bodies short, or a
    gateway serving weak ETags, would hand it)."""
    import io
    from datetime import UTC, datetime

    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    store = S3Store("bucket", "p", client=default_client("http://127.0.0.1:9"))
    stub = Stubber(store.client)
    stub.add_response(
        "get_object",
        {"Body": StreamingBody(io.BytesIO(body), len(body)), "ETag": etag, "LastModified": datetime.now(UTC),
         "Metadata": {}, "ResponseMetadata": {"HTTPHeaders": {"date": date} if date else {}}},
        {"Bucket": "bucket", "Key": "p/k"},
    )  # fmt: skip
    stub.activate()
    return store


def test_a_body_that_does_not_match_its_etag_is_a_transient_fault() -> None:
    """A single-part object's ETag is its MD5: a body cut short (an honest status, a proxy's doing) is
    retried like a lost answer, never judged as the object (a sound shard read as corrupt)."""
    import hashlib

    whole = b'{"status": "available"}'
    etag = f'"{hashlib.md5(whole, usedforsecurity=False).hexdigest()}"'
    with pytest.raises(TransientStoreError, match="does not match its ETag"):
        _stubbed_get(whole[:9], etag).read("k")
    assert _stubbed_get(whole, etag).read("k").data == whole
    assert _stubbed_get(whole, '"0123456789abcdef-2"').read("k").data == whole  # multipart: no MD5 to hold


def test_a_weak_etag_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match="weak ETag"):
        _stubbed_get(b"x", 'W/"9dd4e461268c8034f5c8564e155c67a6"').read("k")


def test_a_read_whose_date_is_far_from_this_clock_is_read_untimed() -> None:
    """A read's Date is the time claims and steals stamp (read_at): held to now()'s 15-minute bound, and
    untold (None) outside it, the object read all the same."""
    wrong = _stubbed_get(b"x", '"0123"', date="Fri, 01 Jan 2100 00:00:00 GMT").read("k")
    assert (wrong.data, wrong.read_at) == (b"x", None)
    from datetime import UTC, datetime
    from email.utils import format_datetime

    fine = _stubbed_get(b"x", '"0123"', date=format_datetime(datetime.now(UTC), usegmt=True)).read("k")
    assert fine.read_at is not None
