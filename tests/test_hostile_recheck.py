"""Hostile re-check of the day's fixes: metadata bound to bytes, the S3 Date bound, S3 ETag checks,
two-pass reads, layout checks, identical-rewrite guard, stray objects and garbled halts, file/grid tasks,
durable chunks.

Each test asserts what would break if the promise did. The eight bugs this pass found were kept as strict
xfails until fixed (see the git log of this file); every test now passes. Clocks and answers are
injected (botocore event hooks, a Date-rewriting relay in front of the S3 test server), never waited for.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim import ShardManager
from shardclaim.errors import StoreError, TransientStoreError
from shardclaim.store import RetryingStore, RetryPolicy
from shardclaim.store.base import DIGEST_KEY
from shardclaim.store.s3 import S3Store, default_client
from shardclaim.testing import build_dataset
from tests._proxy import FaultProxy

PREFIX = "ds"
FAST = RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=0.005)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def s3_store(bucket: str, client: Any = None) -> S3Store:
    return S3Store(bucket, PREFIX, client=client)


def s3_doc_key(shard_id: int) -> str:
    return f"{PREFIX}/shard_{shard_id:03d}/metadata.json"


def drain(url: str, worker: str, store: Any = None) -> list[int]:
    """Every shard a worker loop claims and completes, in order."""
    processed: list[int] = []
    with ShardManager(url, worker, lease_seconds=60, store=store) as m:
        for claim in m.claims(sleep=lambda _: None):
            with claim:
                processed.append(claim.shard_id)
    return processed


def statuses(url: str, store: Any = None) -> list[str]:
    with ShardManager(url, "observer", lease_seconds=60, store=store) as m:
        return [s["status"] for s in m.get_shard_status()]


# == 1. Metadata bound to bytes ============================================================================


@pytest.mark.s3
def test_s3_metadata_of_older_code_without_digest_is_read_through_and_the_job_is_whole(
    s3_bucket: str, tmp_path: Path
) -> None:
    """Objects written before the digest: their metadata reads as none, every shard is read instead."""
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=3, records=6)
    s3 = default_client()
    for sid in range(3):
        key = s3_doc_key(sid)
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        # what older code wrote: the status cache, no content-md5 (here stale on purpose: completed)
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body, Metadata={"status": "completed", "attempt": "1"})
    assert statuses(url) == ["available"] * 3
    done = cli("wait", url, "--timeout", "1", "--interval", "0.2")
    assert done.returncode == 124, (done.returncode, done.stdout, done.stderr)  # not settled on metadata
    assert sorted(drain(url, "w")) == [0, 1, 2]
    assert statuses(url) == ["completed"] * 3


@pytest.mark.s3
def test_s3_metadata_with_the_digest_of_other_bytes_is_not_trusted(s3_bucket: str, tmp_path: Path) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    s3 = default_client()
    key = s3_doc_key(1)
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    other = s3.get_object(Bucket=s3_bucket, Key=s3_doc_key(0))["Body"].read()
    for forged_md5 in (md5(other), md5(body).upper(), md5(body)[:31] + "0", " " + md5(body)):
        meta = {"status": "completed", DIGEST_KEY: forged_md5.strip()}
        if forged_md5.strip() == md5(body):
            continue
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body, Metadata=meta)
        assert statuses(url) == ["available", "available"], forged_md5
    assert sorted(drain(url, "w")) == [0, 1]


@pytest.mark.s3
def test_s3_a_multipart_uploaded_shard_document_is_read_not_judged_by_its_metadata(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A multipart object's ETag is not its MD5: its metadata (even with the right MD5) is not bound, and its
    GET is not checked against the ETag as an MD5."""
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    s3 = default_client()
    key = s3_doc_key(1)
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    up = s3.create_multipart_upload(
        Bucket=s3_bucket, Key=key, Metadata={"status": "completed", DIGEST_KEY: md5(body)}
    )
    part = s3.upload_part(Bucket=s3_bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=body)
    s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key=key,
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    etag = s3.head_object(Bucket=s3_bucket, Key=key)["ETag"].strip('"')
    assert "-" in etag  # really a multipart ETag
    store = s3_store(s3_bucket)
    assert store.read("shard_001/metadata.json").data == body
    assert dict(store.read("shard_001/metadata.json").metadata) == {}
    assert statuses(url) == ["available", "available"]
    assert sorted(drain(url, "w")) == [0, 1]
    assert statuses(url) == ["completed", "completed"]


@pytest.mark.s3
def test_s3_listing_cache_after_a_foreign_rewrite_of_identical_bytes_keeps_the_bytes_own_metadata(
    s3_bucket: str,
) -> None:
    """Same bytes, same ETag, other metadata (unbound): the cache keeps what was written with these bytes,
    a fresh client reads none — neither hands out the foreign metadata."""
    writer = s3_store(s3_bucket)
    info = writer.write("shard_000/metadata.json", b'{"v":1}', metadata={"status": "in_use", "holder": "a"})
    reader = s3_store(s3_bucket)
    assert dict(reader.list()[0].metadata) == {"status": "in_use", "holder": "a"}
    default_client().put_object(
        Bucket=s3_bucket, Key=s3_doc_key(0), Body=b'{"v":1}', Metadata={"status": "completed"}
    )
    (cached,) = reader.list()
    assert cached.generation == info.generation
    assert dict(cached.metadata) == {"status": "in_use", "holder": "a"}
    assert dict(s3_store(s3_bucket).list()[0].metadata) == {}


@pytest.mark.s3
def test_s3_a_hand_edit_of_one_metadata_key_keeping_the_digest_does_not_lose_a_shard(
    s3_bucket: str, tmp_path: Path
) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    s3 = default_client()
    key = s3_doc_key(1)
    meta = s3.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
    assert DIGEST_KEY in meta
    s3.copy_object(
        Bucket=s3_bucket,
        Key=key,
        CopySource={"Bucket": s3_bucket, "Key": key},
        Metadata={**meta, "status": "completed"},
        MetadataDirective="REPLACE",
    )
    assert orjson.loads(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())["status"] == "available"
    assert sorted(drain(url, "w")) == [0, 1], "shard 1 was never run"


@pytest.mark.gcs
def test_gcs_a_metadata_patch_of_one_key_does_not_lose_a_shard(gcs_bucket: str, tmp_path: Path) -> None:
    from shardclaim.store.gcs import default_client as gcs_client

    url = build_dataset(f"gs://{gcs_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    blob = gcs_client().bucket(gcs_bucket).get_blob(f"{PREFIX}/shard_001/metadata.json")
    assert DIGEST_KEY in (blob.metadata or {})
    blob.metadata = {**blob.metadata, "status": "completed"}
    blob.patch()
    assert orjson.loads(blob.download_as_bytes())["status"] == "available"
    assert sorted(drain(url, "w")) == [0, 1], "shard 1 was never run"


@pytest.mark.gcs
def test_gcs_metadata_with_the_digest_of_other_bytes_or_none_is_not_trusted(
    gcs_bucket: str, tmp_path: Path
) -> None:
    from shardclaim.store.gcs import default_client as gcs_client

    url = build_dataset(f"gs://{gcs_bucket}/{PREFIX}", tmp_path, shards=3, records=6)
    bucket = gcs_client().bucket(gcs_bucket)
    other = bucket.blob(f"{PREFIX}/shard_000/metadata.json").download_as_bytes()
    for sid, meta in ((1, {"status": "completed", DIGEST_KEY: md5(other)}), (2, {"status": "failed"})):
        blob = bucket.blob(f"{PREFIX}/shard_{sid:03d}/metadata.json")
        body = blob.download_as_bytes()
        blob.metadata = meta
        blob.upload_from_string(body)
    assert statuses(url) == ["available"] * 3
    assert sorted(drain(url, "w")) == [0, 1, 2]


# == 2. The S3 Date bound ==================================================================================


def rewrite_date(client: Any, when: list[datetime]) -> None:
    """Every answer reaches ``client`` with the Date ``when[0]`` (a list: the test moves the clock)."""

    def rewrite(response_dict: dict[str, Any], **_: Any) -> None:
        response_dict["headers"]["Date"] = format_datetime(when[0], usegmt=True)

    client.meta.events.register("before-parse.s3.*", rewrite)


@pytest.mark.s3
@pytest.mark.parametrize(("minutes", "ok"), [(14, True), (-14, True), (16, False), (-16, False)])
def test_s3_date_just_under_fifteen_minutes_is_used_just_over_is_refused_naming_both_clocks(
    s3_bucket: str, minutes: int, ok: bool
) -> None:
    store = s3_store(s3_bucket)
    when = [datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=minutes)]
    rewrite_date(store.client, when)
    if ok:
        assert store.now() == when[0]
        return
    with pytest.raises(StoreError) as e:
        store.now()
    assert f"{when[0]:%Y-%m-%d %H:%M:%S}" in str(e.value)
    assert "clock" in str(e.value)
    assert not isinstance(e.value, TransientStoreError)


@pytest.mark.s3
def test_s3_a_clock_that_jumps_during_a_lease_neither_completes_twice_nor_loses_the_shard(
    s3_bucket: str, tmp_path: Path
) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=1, records=2)
    raw = s3_store(s3_bucket)
    when = [datetime.now(UTC)]
    rewrite_date(raw.client, when)
    m = ShardManager(url, "holder", lease_seconds=60, store=RetryingStore(raw, policy=FAST))
    try:
        assert m.claim_shard() is not None
        when[0] = datetime.now(UTC) + timedelta(hours=2)  # the gateway's clock jumps
        with pytest.raises(StoreError, match="clock"):
            m.mark_completed(0)
        assert statuses(url) == ["in_use"]  # nothing was written on a wrong clock
        thief = s3_store(s3_bucket)
        rewrite_date(thief.client, when)
        with pytest.raises(StoreError, match="clock"), ShardManager(url, "thief", store=thief) as t:
            t.claim_shard()
        when[0] = datetime.now(UTC)  # ...and back
        m.mark_completed(0)
    finally:
        m.close()
    assert statuses(url) == ["completed"]


@pytest.fixture
def skewed_relay(s3_proxy: FaultProxy) -> FaultProxy:
    """The S3 test server behind a gateway whose clock runs three hours ahead of this machine's."""
    s3_proxy.clock_offset = timedelta(hours=3)
    return s3_proxy


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 50
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.s3
def test_cli_on_a_gateway_whose_clock_is_hours_off_exits_1_with_one_line_naming_the_clocks(
    s3_bucket: str, tmp_path: Path, skewed_relay: FaultProxy
) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    env = {"AWS_ENDPOINT_URL": skewed_relay.url}
    runs = {
        "status": ("status", url),
        "wait": ("wait", url, "--timeout", "20"),
        "run": ("run", url, "-N", "1", "--", "true"),
    }
    for name, args in runs.items():
        done = cli(*args, env=env)
        assert done.returncode == 1, (name, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        errors = [line for line in done.stderr.splitlines() if "clock" in line]
        assert len(errors) == 1, (name, done.stderr)
        assert "fix the clock" in errors[0], (name, done.stderr)
    assert statuses(url) == ["available", "available"]
    # A claim of an available shard judges no lease (no clock needed); one over live leases must judge
    # them, and is refused.
    holder = ShardManager(url, "holder", lease_seconds=600)
    assert holder.claim_shard() is not None
    assert holder.claim_shard() is not None
    for args in (
        ("claim", url, "--worker_id", "w"),
        ("reset", url, "--stale"),
        ("reset", url, "--shard_id", "0"),
    ):
        done = cli(*args, env=env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert "fix the clock" in done.stderr, (args, done.stderr)
    assert statuses(url) == ["in_use", "in_use"]
    holder.close()
    skewed_relay.clock_offset = timedelta(minutes=14)
    done = cli("status", url, env=env)
    assert done.returncode == 0, done.stderr


# == 3. S3 ETag checks =====================================================================================


class KmsEtags:
    """What S3 answers for SSE-KMS (or SSE-C) objects: an ETag of 32 hex digits that is NOT the MD5 of the
    bytes. Emulated over moto (which always answers the MD5) by a consistent one-to-one mapping on every
    answer, and the reverse on If-Match."""

    def __init__(self, client: Any) -> None:
        self.back: dict[str, str] = {}
        client.meta.events.register("before-parse.s3.*", self._answer)
        client.meta.events.register("before-parameter-build.s3.PutObject", self._if_match)

    def _kms(self, real: str) -> str:
        fake = md5(b"kms:" + real.encode())
        self.back[fake] = real
        return fake

    def _answer(self, response_dict: dict[str, Any], **_: Any) -> None:
        headers = response_dict["headers"]
        headers["x-amz-server-side-encryption"] = "aws:kms"  # as S3 says of every SSE-KMS object
        for k in list(headers):
            if k.lower() == "etag" and "-" not in headers[k]:
                headers[k] = '"' + self._kms(headers[k].strip('"')) + '"'
        body = response_dict.get("body")
        if isinstance(body, bytes) and b"<ETag>" in body:
            import re

            def sub(m: re.Match[bytes]) -> bytes:
                inner = m.group(1).decode().replace("&quot;", "").replace("&#34;", "").strip('"')
                return b"<ETag>&quot;" + self._kms(inner).encode() + b"&quot;</ETag>"

            response_dict["body"] = re.sub(rb"<ETag>(.*?)</ETag>", sub, body)

    def _if_match(self, params: dict[str, Any], **_: Any) -> None:
        if "IfMatch" in params:
            params["IfMatch"] = '"' + self.back.get(params["IfMatch"].strip('"'), "?") + '"'


@pytest.mark.s3
def test_s3_sound_objects_whose_etag_is_not_their_md5_as_under_sse_kms_are_read(
    s3_bucket: str, tmp_path: Path
) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    raw = s3_store(s3_bucket)
    KmsEtags(raw.client)
    store = RetryingStore(raw, policy=FAST)
    obj = store.read("shard_000/metadata.json")  # the bytes as stored, and sound
    assert orjson.loads(obj.data)["shard_id"] == 0
    assert sorted(drain(url, "w", store=store)) == [0, 1]


@pytest.mark.s3
def test_s3_kms_style_etags_keep_compare_and_swap_working_for_writes(s3_bucket: str) -> None:
    """The emulation above is sound for what does not read: create, conditional update, 412 on a stale
    version, metadata from a listing (unbound: read through)."""
    raw = s3_store(s3_bucket)
    KmsEtags(raw.client)
    first = raw.write("k", b"one", if_generation_match=0, metadata={"status": "available"})
    assert first.generation != md5(b"one")
    second = raw.write("k", b"two", if_generation_match=first.generation)
    from shardclaim.errors import GenerationMismatchError

    with pytest.raises(GenerationMismatchError):
        raw.write("k", b"three", if_generation_match=first.generation)
    assert raw.list()[0].generation == second.generation


def cut_bodies(client: Any, times: int = 10**6) -> list[int]:
    """Each GET's body reaches the client with its second half garbled (``times`` times): as long as the
    object, other bytes (a proxy that cut the body and padded it, a flipped bit)."""
    import io

    from botocore.response import StreamingBody

    left = [times]

    def cut(parsed: dict[str, Any], **_: Any) -> None:
        if left[0] > 0 and "Body" in parsed:
            left[0] -= 1
            data = parsed["Body"].read()
            bad = data[: len(data) // 2] + b"\0" * (len(data) - len(data) // 2)
            parsed["Body"] = StreamingBody(io.BytesIO(bad), len(bad))

    client.meta.events.register("after-call.s3.GetObject", cut)
    return left


@pytest.mark.s3
def test_s3_a_body_cut_short_every_time_ends_the_retry_budget_with_a_clear_transient_error(
    s3_bucket: str,
) -> None:
    raw = s3_store(s3_bucket)
    raw.write("k", b'{"a": 1, "padding": "' + b"x" * 200 + b'"}', metadata={"status": "available"})
    left = cut_bodies(raw.client)
    store = RetryingStore(raw, policy=FAST)
    with pytest.raises(TransientStoreError) as e:
        store.read("k")
    assert "does not match its ETag" in str(e.value)
    assert 10**6 - left[0] == FAST.max_attempts  # retried, within the budget, not forever
    # cut once: the retry reads it whole
    raw2 = s3_store(s3_bucket)
    cut_bodies(raw2.client, times=1)
    assert RetryingStore(raw2, policy=FAST).read("k").data.startswith(b'{"a": 1')


@pytest.mark.s3
@pytest.mark.parametrize("etag", ['W/"{m}"'])
def test_s3_a_weak_etag_is_a_clear_error_not_a_retry(s3_bucket: str, etag: str) -> None:
    raw = s3_store(s3_bucket)
    raw.write("k", b"data")
    calls = [0]

    def weaken(response_dict: dict[str, Any], **_: Any) -> None:
        calls[0] += 1
        response_dict["headers"]["ETag"] = etag.format(m=md5(b"data"))

    raw.client.meta.events.register("before-parse.s3.GetObject", weaken)
    with pytest.raises(StoreError) as e:
        RetryingStore(raw, policy=FAST).read("k")
    assert not isinstance(e.value, TransientStoreError)
    assert "weak ETag" in str(e.value)
    assert calls[0] == 1


@pytest.mark.s3
@pytest.mark.parametrize("etag", ["{m}", '"{m}"', '""{m}""'])
def test_s3_etags_quoted_oddly_or_in_upper_case_still_read_a_sound_object(s3_bucket: str, etag: str) -> None:
    raw = s3_store(s3_bucket)
    raw.write("k", b"data", metadata={"status": "available"})

    def requote(response_dict: dict[str, Any], **_: Any) -> None:
        response_dict["headers"]["ETag"] = etag.format(m=md5(b"data"), M=md5(b"data").upper())

    raw.client.meta.events.register("before-parse.s3.GetObject", requote)
    obj = RetryingStore(raw, policy=FAST).read("k")
    assert obj.data == b"data"


# == 6. Identical rewrites under If-Match ==================================================================


def test_memory_etag_store_a_whole_job_with_renewals_halt_lift_and_finalizer_never_rewrites_same_bytes() -> (
    None
):
    """Every conditional write of the lease layer on a store whose versions are content hashes: claims,
    heartbeats, failures to the halt, its lifting, completions, the fan-in marker and its reset. None may
    trip the identical-rewrite guard (ValueError)."""
    from shardclaim.fanin import finalize_once
    from shardclaim.testing import memory_dataset

    store = memory_dataset(3, versions="etag", name="recheck-etag")
    rs = RetryingStore(store, policy=FAST)
    m = ShardManager(store.url, "w", lease_seconds=60, max_attempts=1, max_failed_shards=1, store=rs)
    try:
        shard = m.claim_shard()
        assert shard is not None
        for _ in range(3):
            m.heartbeat(shard["shard_id"])
        m.mark_failed(shard["shard_id"])  # past max_attempts: failed
        m.get_shard_status()  # the listing that trips the halt
        assert m.halt is not None
        m.get_shard_status()  # a second trip attempt finds it halted
        assert m.claim_shard() is None
        m.reset_failed()  # lifts the halt (a conditional rewrite)
        m.reset_failed()  # nothing left to lift
        done = []
        while (s := m.claim_shard()) is not None:
            m.heartbeat(s["shard_id"])
            m.mark_completed(s["shard_id"])
            done.append(s["shard_id"])
        assert len(done) == 3
        runs: list[int] = []
        assert finalize_once(m, lambda agg: runs.append(1)) == "ran"
        assert finalize_once(m, lambda agg: runs.append(1)) == "done"
        assert m.reset_finalizer()
        assert finalize_once(m, lambda agg: runs.append(1)) == "ran"
        assert runs == [1, 1]
        m.reset_shard(0)
        again = m.claim_shard()
        assert again is not None
        m.mark_failed(again["shard_id"])
        m.get_shard_status()  # halts again, over the lifted halt object (a conditional rewrite)
        assert m.halt is not None
        assert m.claim_shard() is None
        assert m.reset_failed() == [again["shard_id"]]
        assert m.claim_shard() is not None
    finally:
        m.close()


@pytest.mark.s3
def test_cli_selftest_on_s3_passes_its_counter_race(s3_bucket: str) -> None:
    done = cli(
        "selftest", f"s3://{s3_bucket}/st", "--processes", "3", "--rounds", "3", "--increments", "4", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert "Traceback" not in done.stderr
    assert result, result


@pytest.mark.s3
def test_s3_build_marker_renewals_and_release_never_write_the_same_bytes(s3_bucket: str) -> None:
    from shardclaim.dataset.localfs import filesystem
    from shardclaim.dataset.lock import MarkerLock
    from shardclaim.store import open_store

    url = f"s3://{s3_bucket}/marker"
    fs, base = filesystem(url)
    lock = MarkerLock(open_store(url), fs, base, url)
    seen = set()
    for _ in range(5):
        lock.renew()
        seen.add(default_client().head_object(Bucket=s3_bucket, Key="marker/_build.json")["ETag"])
    assert len(seen) == 5
    lock.release()


# == 7. Stray objects, unhashable statuses, garbled halts ==================================================


@pytest.mark.s3
@pytest.mark.parametrize(
    "stray",
    [
        "shard_000/metadata.json/x",
        "shard_000//metadata.json",
        "./shard_001/metadata.json",
        "shard_000/../metadata.json",
        "sp ace/metadata.json",
        "_halt//metadata.json",
        "\u00e9/metadata.json",
    ],
)
def test_s3_stray_keys_under_the_prefix_do_not_stop_status_claims_or_a_rebuild(
    s3_bucket: str, tmp_path: Path, stray: str
) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    body = orjson.dumps({"status": "halted", "failed": 9, "limit": 1})
    default_client().put_object(
        Bucket=s3_bucket, Key=f"{PREFIX}/{stray}", Body=body, Metadata={"status": "completed"}
    )
    assert statuses(url) == ["available", "available"]
    assert sorted(drain(url, "w")) == [0, 1]
    done = cli("status", url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.s3
@pytest.mark.parametrize(
    "meta",
    [
        {"status": "halted", "failed": "NaN", "limit": "1e999"},
        {"status": "halted", "failed": "-1", "limit": "\u0661"[:0] + "0x10"},
        {"status": "halted", "failed": "99999999999999999999999999999", "limit": "1"},
        {"status": "halted "[:-1], "failed": "1 2"},
    ],
)
def test_s3_a_halt_whose_bound_metadata_is_garbled_is_read_shown_and_liftable(
    s3_bucket: str, tmp_path: Path, meta: dict[str, str]
) -> None:
    """Garbled values with a correct digest (written by a buggy or older writer through the store):
    neither a crash of every command nor an unliftable halt."""
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    body = orjson.dumps({"status": "halted", "failed": 2, "limit": 2, "write_token": "t"})
    default_client().put_object(
        Bucket=s3_bucket,
        Key=f"{PREFIX}/_halt/metadata.json",
        Body=body,
        Metadata={**meta, DIGEST_KEY: md5(body)},
    )
    done = cli("status", url)
    assert "Traceback" not in done.stderr, done.stderr
    with ShardManager(url, "op", lease_seconds=60) as m:
        m.get_shard_status()
        assert m.halt is not None
        assert m.claim_shard() is None
    done = cli("reset", url, "--failed")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert sorted(drain(url, "w")) == [0, 1]


@pytest.mark.s3
@pytest.mark.parametrize("status", [["completed"], {"a": 1}, [], None, 1.5, True])
def test_s3_a_shard_whose_status_is_unhashable_or_odd_is_invalid_and_the_others_run(
    s3_bucket: str, tmp_path: Path, status: Any
) -> None:
    url = build_dataset(f"s3://{s3_bucket}/{PREFIX}", tmp_path, shards=3, records=6)
    s3 = default_client()
    key = s3_doc_key(1)
    doc = orjson.loads(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    s3.put_object(Bucket=s3_bucket, Key=key, Body=orjson.dumps({**doc, "status": status}))
    assert sorted(drain(url, "w")) == [0, 2]
    done = cli("status", url)
    assert "Traceback" not in done.stderr, done.stderr
    assert "invalid" in done.stdout + done.stderr


# == 9. Durable chunks =====================================================================================


def jsonl(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"id": i, "pad": "p" * (i % 97)}) + b"\n" for i in range(n)))
    return path


def contents(root: Path) -> dict[Path, bytes]:
    """Every file of a dataset and its bytes (the build's lock files aside: they say who builds)."""
    return {
        p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".lock" not in p.name
    }


@pytest.mark.parametrize("where", ["fdatasync", "fsync"])
def test_an_eio_while_making_chunks_durable_fails_the_build_and_keeps_the_old_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from shardclaim.dataset import create_sharded_dataset

    src = jsonl(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "out"
    create_sharded_dataset(str(src), str(out), num_shards=4, chunk_size_mb=0.01)
    before = contents(out)
    calls = [0]
    real = getattr(os, where)

    def eio(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, where, eio)
    jsonl(src, 2000)
    with pytest.raises(OSError, match="Input/output error") as e:
        create_sharded_dataset(str(src), str(out), num_shards=4, chunk_size_mb=0.01, overwrite=True)
    assert e.value.errno == errno.EIO
    monkeypatch.setattr(os, where, real)
    after = contents(out)
    assert after == before  # the old dataset, whole; nothing of the failed build published
    assert not [p for p in tmp_path.iterdir() if ".shardclaim" in p.name]  # no staging left beside it
    master = create_sharded_dataset(str(src), str(out), num_shards=4, chunk_size_mb=0.01, overwrite=True)
    assert master["total_tasks"] == 2000


def test_an_eio_on_a_first_build_leaves_no_dataset_and_the_cli_says_one_line(tmp_path: Path) -> None:
    """The same through the CLI, in a process whose fdatasync fails (EIO) on the second chunk."""
    src = jsonl(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "out"
    code = (
        "import errno, os, sys\n"
        "n = [0]\n"
        "real = os.fdatasync\n"
        "def eio(fd):\n"
        "    n[0] += 1\n"
        "    if n[0] == 2: raise OSError(errno.EIO, 'Input/output error')\n"
        "    real(fd)\n"
        "os.fdatasync = eio\n"
        "from shardclaim.cli import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "create", "--input_file", str(src), "--output_dir", str(out),
         "--num_shards", "4", "--chunk_size_mb", "0.01"],
        capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Input/output error" in done.stderr, done.stderr
    assert not (out / "master_metadata.json").exists()
    assert not out.exists() or not any(out.iterdir())  # nothing published, nothing left
    assert not [p for p in tmp_path.iterdir() if ".shardclaim" in p.name]


# == 5. Ranges: overlap, counts, chunk bounds ==============================================================


def byref_dataset(tmp_path: Path, shards: int = 2, n: int = 400) -> tuple[Path, list[bytes]]:
    from shardclaim.dataset import create_sharded_dataset

    src = jsonl(tmp_path / "src.jsonl", n)
    ds = tmp_path / "ds"
    create_sharded_dataset(str(src), str(ds), num_shards=shards, chunk_size_mb=0.005, by_reference=True)
    return ds, src.read_bytes().splitlines()


def served(ds: Path, shards: int) -> tuple[list[bytes], list[str]]:
    """Every record each shard serves (raw lines), and the shards refused (with the error)."""
    from shardclaim import iter_shard_records

    out: list[bytes] = []
    refused: list[str] = []
    for sid in range(shards):
        try:
            out.extend(iter_shard_records(str(ds), sid, parse=False))
        except Exception as e:
            refused.append(f"{sid}: {type(e).__name__}: {e}")
    return out, refused


def test_byref_ranges_of_two_shards_that_overlap_are_refused_not_served_twice(tmp_path: Path) -> None:
    ds, _ = byref_dataset(tmp_path)
    zero = orjson.loads((ds / "shard_000" / "metadata.json").read_bytes())
    one_path = ds / "shard_001" / "metadata.json"
    one = orjson.loads(one_path.read_bytes())
    # shard 1 keeps its own ranges and names shard 0's first one too (counts and totals consistent)
    chunks = [{**c, "chunk_id": i} for i, c in enumerate([zero["chunks"][0], *one["chunks"]])]
    total = sum(c["num_tasks"] for c in chunks)
    one_path.write_bytes(
        orjson.dumps({**one, "chunks": chunks, "num_chunks": len(chunks), "total_tasks": total})
    )
    out, refused = served(ds, 2)
    assert len(out) == len(set(out)), f"records served twice; refused: {refused}"


def test_byref_a_range_whose_count_is_off_by_one_either_way_is_an_error_in_the_reader_and_cat(
    tmp_path: Path,
) -> None:
    from shardclaim.dataset.cat import shard_jsonl

    ds, _ = byref_dataset(tmp_path)
    path = ds / "shard_000" / "metadata.json"
    good = orjson.loads(path.read_bytes())
    first = good["chunks"][0]
    for delta in (-1, 1):
        chunk = {**first, "num_tasks": first["num_tasks"] + delta}
        doc = {**good, "chunks": [chunk, *good["chunks"][1:]], "total_tasks": good["total_tasks"] + delta}
        path.write_bytes(orjson.dumps(doc))
        out, refused = served(ds, 1)
        assert refused, (delta, len(out))
        with pytest.raises(Exception):  # noqa: B017,PT011 - any clear error, not silently fewer/more
            b"".join(shard_jsonl(str(ds), 0))
        done = cli("cat", str(ds), "--shard_id", "0")
        assert done.returncode != 0, (delta, done.stderr)
        assert "Traceback" not in done.stderr, (delta, done.stderr)


@pytest.mark.parametrize(("start", "stop"), [(-1, None), (0, 99), (True, None), (1.0, None), (0, -1)])
def test_chunk_bounds_outside_the_shard_or_reversed_are_refused(
    tmp_path: Path, start: Any, stop: Any
) -> None:
    from shardclaim import iter_shard_records

    ds, _ = byref_dataset(tmp_path)
    n = orjson.loads((ds / "shard_000" / "metadata.json").read_bytes())["num_chunks"]
    assert n >= 2
    with pytest.raises(ValueError, match="chunk"):
        list(iter_shard_records(str(ds), 0, start_chunk=start, stop_chunk=stop))


# == 4. Two-pass reads =====================================================================================


def small_dataset(tmp_path: Path) -> tuple[str, Path]:
    from shardclaim.dataset import create_sharded_dataset

    src = jsonl(tmp_path / "in.jsonl", 2000)
    ds = tmp_path / "ds"
    create_sharded_dataset(str(src), str(ds), num_shards=2, chunk_size_mb=0.05)
    meta = orjson.loads((ds / "shard_000" / "metadata.json").read_bytes())
    return str(ds), ds / "shard_000" / meta["chunks"][0]["file"]


def second_read_runs(
    monkeypatch: pytest.MonkeyPatch, module: Any, attr: str, matches: Any, act: Any
) -> list[Any]:
    """``module.attr`` (the block reader verified.verified_blocks calls), running ``act()`` just before the
    second read for which ``matches(path, *args)`` holds: between a check and the serving."""
    real, reads = getattr(module, attr), []

    def reading(fs: Any, path: str, *args: Any) -> Any:
        if matches(path, *args):
            reads.append(path)
            if len(reads) == 2:
                act()
        return real(fs, path, *args)

    monkeypatch.setattr(module, attr, reading)
    return reads


def test_a_chunk_replaced_by_rename_between_the_two_reads_stops_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.dataset import cat as cat_module
    from shardclaim.dataset import verified
    from shardclaim.errors import ChunkCorruptError

    ds, target = small_dataset(tmp_path)
    monkeypatch.setattr(cat_module, "_IN_MEMORY", 16)
    monkeypatch.setattr(verified, "BLOCK", 4096)
    original = target.read_bytes()

    def replace() -> None:
        fresh = target.with_name("fresh.tmp")
        fresh.write_bytes(original.replace(b'"id":', b'"ID":'))
        st = target.stat()
        os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(fresh, target)

    reads = second_read_runs(monkeypatch, cat_module, "blocks", lambda p, *a: p == str(target), replace)
    out: list[bytes] = []
    with pytest.raises(ChunkCorruptError, match="changed"):
        out.extend(cat_module.shard_jsonl(ds, 0))
    assert len(reads) == 2
    assert b'"ID":' not in b"".join(out)


def test_a_chunk_changed_through_a_shared_mapping_between_the_two_reads_stops_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write through a shared mapping into an already-dirty page touches no time or size: only the
    bytes show it, and each block of the second read is held to the first read's CRC32C."""
    import mmap

    from shardclaim.dataset import cat as cat_module
    from shardclaim.dataset import verified
    from shardclaim.errors import ChunkCorruptError

    ds, target = small_dataset(tmp_path)
    monkeypatch.setattr(cat_module, "_IN_MEMORY", 16)
    monkeypatch.setattr(verified, "BLOCK", 4096)
    with open(target, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
    at = mapped.find(b'"id":')
    mapped[at : at + 1] = mapped[at : at + 1]  # a writer that mapped the file and wrote to it earlier

    def write() -> None:
        mapped[at : at + 5] = b'"ID":'

    reads = second_read_runs(monkeypatch, cat_module, "blocks", lambda p, *a: p == str(target), write)
    out: list[bytes] = []
    try:
        with pytest.raises(ChunkCorruptError, match="changed while it was read"):
            out.extend(cat_module.shard_jsonl(ds, 0))
    finally:
        mapped.close()
    assert len(reads) == 2
    assert b'"ID":' not in b"".join(out)


# == 8. File and grid tasks ================================================================================


def test_file_tasks_loops_links_and_the_output_each_count_once_or_never(tmp_path: Path) -> None:
    from shardclaim import create_file_tasks, iter_shard_records

    root = tmp_path / "root"
    for d in ("a/b", "c"):
        (root / d).mkdir(parents=True)
    sizes = {}
    for i, d in enumerate(("a", "a/b", "c")):
        for j in range(2):
            (root / d / f"f{j}.txt").write_bytes(b"x" * (i * 10 + j + 1))
            sizes[f"{d}/f{j}.txt"] = i * 10 + j + 1
    os.symlink("..", root / "a" / "b" / "up")
    os.symlink(root, root / "c" / "top")
    os.link(root / "a" / "f0.txt", root / "c" / "hard.txt")
    os.symlink("../a/f1.txt", root / "c" / "soft.txt")
    os.mkfifo(root / "c" / "fifo.txt")
    os.symlink("/dev/zero", root / "c" / "zero.txt")
    os.symlink("nowhere", root / "c" / "dangling.txt")
    out = root / "out"
    patterns = [f"{root}/**/*.txt", f"{root}/./a/*.txt", f"{root}/c/top/a/b/*.txt", f"{root}/c/soft.txt"]
    for rebuild in (False, True):
        master = create_file_tasks(patterns, str(out), num_shards=2, overwrite=rebuild)
        assert master["total_tasks"] == 6
        tasks = [t for s in range(2) for t in iter_shard_records(str(out), s)]
        assert len(tasks) == len({os.stat(t).st_ino for t in tasks}) == 6
        assert not any(os.path.realpath(t).startswith(str(out)) for t in tasks)
        (root / "m.txt").unlink(missing_ok=True)
        os.symlink(out / "master_metadata.json", root / "m.txt")  # a link into the output: never a task


def test_grid_limits_and_exact_values(tmp_path: Path) -> None:
    from shardclaim import iter_shard_records
    from shardclaim.dataset.tasks import create_grid_tasks
    from shardclaim.errors import InputError

    bad = {
        "over": '{"a": [' + ",".join(["0"] * 1000) + '], "b": [' + ",".join(["0"] * 1001) + '], "c": '
        "[" + ",".join(["0"] * 1000) + "]}",
        "nested twice": '{"a": [{"x": 1, "\\u0078": 2}]}',
        "empty": "{}",
        "infinite": '{"a": [1e400]}',
    }
    for name, text in bad.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        with pytest.raises(InputError):
            create_grid_tasks(str(p), str(tmp_path / "never"), num_shards=1)
        assert not (tmp_path / "never").exists(), name
    p = tmp_path / "ok.json"
    p.write_text('{"big": [123456789012345678901234567890, -18446744073709551617], "f": [0.1]}')
    create_grid_tasks(str(p), str(tmp_path / "g"), num_shards=1)
    assert list(iter_shard_records(str(tmp_path / "g"), 0)) == [
        {"big": 123456789012345678901234567890, "f": 0.1},
        {"big": -18446744073709551617, "f": 0.1},
    ]


def test_iter_shard_records_does_not_serve_a_copied_chunk_rewritten_after_its_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What claim.records() and run's workers read: a chunk read twice (over 64 MiB; here every one) and
    rewritten in between yields none of the rewritten lines."""
    from shardclaim import iter_shard_records
    from shardclaim.dataset import read as read_module
    from shardclaim.dataset import verified
    from shardclaim.errors import ChunkCorruptError

    ds, target = small_dataset(tmp_path)
    monkeypatch.setattr(read_module, "_IN_MEMORY", 16)
    monkeypatch.setattr(verified, "BLOCK", 4096)

    def rewrite() -> None:
        st = target.stat()
        target.write_bytes(target.read_bytes().replace(b'"id":', b'"ID":'))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

    reads = second_read_runs(monkeypatch, read_module, "blocks", lambda p, *a: p == str(target), rewrite)
    out: list[bytes] = []
    with pytest.raises(ChunkCorruptError, match="changed while it was read"):
        out.extend(iter_shard_records(ds, 0, parse=False))
    assert len(reads) == 2
    assert not any(b'"ID":' in line for line in out)


@pytest.mark.parametrize(
    "where", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("gs", marks=pytest.mark.gcs)]
)
def test_a_bucket_source_rewritten_between_the_two_reads_of_a_range_stops_the_output(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Remote stamps: s3fs's and gcsfs's info caches must not hide the rewrite (same size, other bytes)."""
    from shardclaim import iter_shard_records
    from shardclaim.dataset import byref_read, create_sharded_dataset
    from shardclaim.errors import ChunkCorruptError

    bucket = request.getfixturevalue("s3_bucket" if where == "s3" else "gcs_bucket")
    body = jsonl(tmp_path / "src.jsonl", 400).read_bytes()
    if where == "s3":
        s3 = default_client()

        def put(data: bytes) -> None:
            s3.put_object(Bucket=bucket, Key="src.jsonl", Body=data)
    else:
        from shardclaim.store.gcs import default_client as gcs_client

        blob = gcs_client().bucket(bucket).blob("src.jsonl")

        def put(data: bytes) -> None:
            blob.upload_from_string(data)

    put(body)
    ds = f"{where}://{bucket}/{PREFIX}"
    create_sharded_dataset(
        f"{where}://{bucket}/src.jsonl", ds, num_shards=2, chunk_size_mb=0.005, by_reference=True
    )
    assert len(list(iter_shard_records(ds, 0, parse=False))) > 0  # warms the filesystem's caches first
    monkeypatch.setattr(byref_read, "_IN_MEMORY", 16)
    rewritten = second_read_runs(
        monkeypatch, byref_read, "_blocks", lambda p, offset, length: length > 16,  # not the edges' reads
        lambda: put(body.replace(b'"id":', b'"ID":')),
    )  # fmt: skip
    out: list[bytes] = []
    with pytest.raises(ChunkCorruptError, match="changed"):
        out.extend(iter_shard_records(ds, 0, parse=False))
    assert len(rewritten) >= 2
    assert not any(b'"ID":' in line for line in out)


@pytest.mark.gcs
@pytest.mark.parametrize(
    "stray", [".shardclaim-x/metadata.json", "notes/metadata.json/x", "sp ace/metadata.json"]
)
def test_gcs_stray_keys_under_the_prefix_do_not_stop_status_or_claims(
    gcs_bucket: str, tmp_path: Path, stray: str
) -> None:
    from shardclaim.store.gcs import default_client as gcs_client

    url = build_dataset(f"gs://{gcs_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    blob = gcs_client().bucket(gcs_bucket).blob(f"{PREFIX}/{stray}")
    blob.metadata = {"status": "completed"}
    blob.upload_from_string(b"{}")
    assert statuses(url) == ["available", "available"]
    assert sorted(drain(url, "w")) == [0, 1]


@pytest.mark.gcs
def test_gcs_a_build_after_a_killed_build_removes_its_staging_area(gcs_bucket: str, tmp_path: Path) -> None:
    from shardclaim.dataset import create_sharded_dataset
    from shardclaim.store.gcs import default_client as gcs_client

    url = build_dataset(f"gs://{gcs_bucket}/{PREFIX}", tmp_path, shards=2, records=4)
    left = f"{PREFIX}/.shardclaim-build-0123456789ab/shard_000/chunk_0000.jsonl"
    bucket = gcs_client().bucket(gcs_bucket)
    bucket.blob(left).upload_from_string(b'{"id": 0}\n')
    create_sharded_dataset(str(tmp_path / "records-4.jsonl"), url, num_shards=2, overwrite=True)
    assert left not in [b.name for b in bucket.list_blobs()]
    assert statuses(url) == ["available", "available"]


def test_file_tasks_given_as_file_urls_never_include_the_output_dataset(tmp_path: Path) -> None:
    from shardclaim import create_file_tasks, iter_shard_records

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_bytes(b"x")
    (root / "y.txt").write_bytes(b"yy")
    out = root / "out"
    for rebuild in (False, True):
        create_file_tasks([f"file://{root}/**"], str(out), num_shards=1, overwrite=rebuild)
        tasks = list(iter_shard_records(str(out), 0))
        assert not [t for t in tasks if "/out/" in t], tasks


def test_a_local_file_given_as_a_path_and_as_a_file_url_is_one_task(tmp_path: Path) -> None:
    from shardclaim.dataset.tasks import list_files

    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    (root / "b.txt").write_bytes(b"bb")
    _, files = list_files([f"{root}/*.txt", f"file://{root}/*.txt"])
    assert len(files) == 2, files
