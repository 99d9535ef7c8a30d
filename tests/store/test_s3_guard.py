"""Guards on the S3 test server itself.

Every S3 correctness test in this suite is worth something only while moto's server refuses a PutObject
whose ``If-Match`` / ``If-None-Match`` does not hold, and lets exactly one of several racing creates
through. These tests talk to it with boto3 alone (no shardclaim code), so they fail if a moto upgrade
stops enforcing what the S3 store relies on.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.s3


@pytest.fixture
def s3(s3_bucket: str) -> Any:
    return boto3.client("s3")


def _status(err: pytest.ExceptionInfo[ClientError]) -> int:
    return int(err.value.response["ResponseMetadata"]["HTTPStatusCode"])


def test_server_refuses_a_stale_etag(s3: Any, s3_bucket: str) -> None:
    e1 = s3.put_object(Bucket=s3_bucket, Key="guard", Body=b"v1", IfNoneMatch="*")["ETag"]
    e2 = s3.put_object(Bucket=s3_bucket, Key="guard", Body=b"v2", IfMatch=e1)["ETag"]
    assert e2 != e1
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=s3_bucket, Key="guard", Body=b"stale", IfMatch=e1)
    assert _status(err) == 412
    assert s3.get_object(Bucket=s3_bucket, Key="guard")["Body"].read() == b"v2"


def test_server_refuses_create_if_absent_on_an_existing_object(s3: Any, s3_bucket: str) -> None:
    s3.put_object(Bucket=s3_bucket, Key="guard", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=s3_bucket, Key="guard", Body=b"second", IfNoneMatch="*")
    assert _status(err) == 412
    assert s3.get_object(Bucket=s3_bucket, Key="guard")["Body"].read() == b"first"


def test_server_refuses_an_etag_on_a_missing_object(s3: Any, s3_bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=s3_bucket, Key="never", Body=b"x", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert _status(err) in (404, 412)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=s3_bucket, Key="never")


def test_exactly_one_of_16_racing_creates_wins_every_round(s3: Any, s3_bucket: str) -> None:
    racers, rounds = 16, 20
    for r in range(rounds):
        key, barrier = f"race/{r}", threading.Barrier(racers)
        answers: dict[int, int] = {}  # racer -> HTTP status

        def race(
            i: int, key: str = key, barrier: threading.Barrier = barrier, out: dict[int, int] = answers
        ) -> None:
            barrier.wait()
            try:
                s3.put_object(Bucket=s3_bucket, Key=key, Body=f"racer {i}".encode(), IfNoneMatch="*")
                out[i] = 200
            except ClientError as e:
                out[i] = int(e.response["ResponseMetadata"]["HTTPStatusCode"])

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, status in answers.items() if status == 200]
        assert len(winners) == 1, answers
        assert set(answers.values()) <= {200, 409, 412}
        assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == f"racer {winners[0]}".encode()


def test_listings_carry_no_user_metadata(s3: Any, s3_bucket: str) -> None:
    """Why the S3 store fills in a listing's metadata itself (HEAD): the listing does not carry it."""
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x", Metadata={"status": "available"})
    (item,) = s3.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert "Metadata" not in item
    assert s3.head_object(Bucket=s3_bucket, Key="k")["Metadata"] == {"status": "available"}
