"""The object-store backends against real HTTP faults: a loopback proxy in front of the GCS test server,
and in front of the S3 test server, injects 429 / 5xx answers, connection resets and lost responses, and
counts requests. Each test runs on both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shardclaim.errors import GenerationMismatchError, StoreClockError, StoreError, TransientStoreError
from shardclaim.store.base import CLOCK_READS, Store
from shardclaim.store.gcs import GCSStore
from shardclaim.store.retry import RetryingStore, RetryPolicy
from tests._proxy import FaultProxy
from tests.conftest import proxied_client


@dataclass
class Backend:
    name: str
    proxy: FaultProxy
    raw: Store  #: through the proxy
    direct: Store  #: the same objects, not through the proxy
    write: tuple[str, str]  #: the HTTP method of a state write, and a part of its path


@pytest.fixture(params=[pytest.param("gcs", marks=pytest.mark.gcs), pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    proxy = FaultProxy(request.getfixturevalue(f"{request.param}_server")).start()
    if request.param == "gcs":
        bucket = request.getfixturevalue("gcs_bucket")
        raw = GCSStore(bucket, "p", client=proxied_client(proxy))
        yield Backend("gcs", proxy, raw, GCSStore(bucket, "p"), ("POST", "/upload/"))
    else:
        from shardclaim.store.s3 import S3Store

        bucket = request.getfixturevalue("s3_bucket")
        raw_s3 = S3Store(bucket, "p", endpoint_url=proxy.url)
        yield Backend("s3", proxy, raw_s3, S3Store(bucket, "p"), ("PUT", f"/{bucket}/p/"))
    proxy.stop()


@pytest.fixture
def proxy(backend: Backend) -> FaultProxy:
    return backend.proxy


@pytest.fixture
def raw(backend: Backend) -> Store:
    return backend.raw


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def store(raw: Store, sleeps: list[float]) -> RetryingStore:
    return RetryingStore(raw, policy=RetryPolicy(max_attempts=4, sleep=sleeps.append))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_transient_on_every_operation(
    raw: Store, proxy: FaultProxy, status: int
) -> None:
    raw.write("k", b"v")
    for op in (lambda: raw.write("k", b"w"), lambda: raw.read("k"), raw.list, raw.now):
        proxy.inject("status", status=status)
        with pytest.raises(TransientStoreError):
            op()


@pytest.mark.parametrize("status", [400, 401, 403])
def test_other_failures_are_not_transient(raw: Store, proxy: FaultProxy, status: int) -> None:
    proxy.inject("status", status=status)
    with pytest.raises(StoreError) as err:
        raw.write("k", b"v")
    assert not isinstance(err.value, TransientStoreError)
    assert not isinstance(err.value, GenerationMismatchError)


def test_connection_resets_are_transient(raw: Store, proxy: FaultProxy) -> None:
    raw.write("k", b"v")
    for op in (lambda: raw.write("k", b"w"), lambda: raw.read("k"), raw.list, raw.now):
        proxy.inject("reset")
        with pytest.raises(TransientStoreError):
            op()


def test_injected_429_and_503_are_retried_to_success(
    store: RetryingStore, backend: Backend, sleeps: list[float]
) -> None:
    method, path = backend.write
    backend.proxy.inject("status", method=method, status=429)
    backend.proxy.inject("status", method=method, status=503)
    info = store.write("k", b"v", if_generation_match=0)
    assert len(sleeps) == 2
    assert store.read("k").generation == info.generation
    assert backend.proxy.count(method, path) == 3


def test_a_lost_response_to_a_successful_create_is_recognised(store: RetryingStore, backend: Backend) -> None:
    method, path = backend.write
    backend.proxy.inject("lose_response", method=method, path_contains=path)
    info = store.write("claim", b"worker-a", if_generation_match=0)
    obj = store.read("claim")
    assert obj.data == b"worker-a"
    assert obj.generation == info.generation
    assert backend.proxy.count(method, path) == 2  # the retry was refused with 412, then the re-read


def test_a_lost_response_to_a_successful_update_is_recognised(store: RetryingStore, backend: Backend) -> None:
    g = store.write("state", b"v1", if_generation_match=0).generation
    method, path = backend.write
    backend.proxy.inject("lose_response", method=method, path_contains=path)
    info = store.write("state", b"v2", if_generation_match=g)
    assert store.read("state").generation == info.generation
    with pytest.raises(GenerationMismatchError):
        store.write("state", b"v3", if_generation_match=g)


def test_read_write_and_now_are_one_request_each(raw: Store, proxy: FaultProxy) -> None:
    raw.write("k", b"v", metadata={"status": "available"})
    assert len(proxy.requests) == 1
    raw.read("k")
    assert len(proxy.requests) == 2
    raw.now()
    assert len(proxy.requests) == 3


def test_list_costs_one_request_per_page_of_1000(backend: Backend) -> None:
    if backend.name == "s3":
        pytest.skip("an S3 listing also reads unseen objects' metadata: counted in test_s3_store.py")
    for i in range(1001):
        backend.direct.write(f"s/{i:04d}", b"x")  # fill the bucket without the proxy: faster
    assert len(backend.raw.list("s/")) == 1001
    assert len(backend.proxy.requests) == 2


def test_a_body_changed_on_the_way_is_transient_and_retried(
    raw: Store, store: RetryingStore, proxy: FaultProxy
) -> None:
    """A read whose bytes are not the object's (same length, one byte other: a proxy's doing) is a
    transient fault on both buckets (S3: the ETag is the MD5; GCS: x-goog-hash), never the object."""
    raw.write("k", b'{"status": "available"}', metadata={"status": "available"})
    proxy.inject("garble", method="GET")
    with pytest.raises(TransientStoreError, match=r"(does|did) not match"):
        raw.read("k")
    proxy.inject("garble", method="GET")
    got = store.read("k")  # the retry reads it whole
    assert got.data == b'{"status": "available"}'
    assert dict(got.metadata) == {"status": "available"}


@pytest.mark.parametrize(
    "date", ["Fri, 01 Jan 2100 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"], ids=["future", "past"]
)
def test_a_store_clock_far_from_this_machines_is_refused_by_name(
    raw: Store, proxy: FaultProxy, date: str
) -> None:
    """Leases are timed by the store's clock, the Date of its answers. One of 2100 would make every live
    lease look expired (two holders); one of 1970 would leave a dead holder's shard stuck for ever. Answers
    more than 15 minutes from this machine's clock, three running, are a wrong clock's or a gateway's: a
    clear error naming both clocks, on both buckets; not transient (not waited out for minutes: somebody
    has to fix a clock)."""
    raw.write("k", b"v")
    proxy.inject("date", value=date, count=CLOCK_READS)
    before = len(proxy.requests)
    with pytest.raises(StoreClockError, match=r"store's clock.*from this machine's") as err:
        raw.now()
    assert not isinstance(err.value, TransientStoreError)
    assert len(proxy.requests) - before == CLOCK_READS
    proxy.inject("date", value=date, method="GET")  # a read's time is a record, never a lease's judge:
    got = raw.read("k")  # the object is read all the same (a worker can still give a shard back),
    assert (got.data, got.read_at) == (b"v", None)  # its time untold


def test_one_answer_with_a_wrong_clock_is_a_glitch_asked_again(raw: Store, proxy: FaultProxy) -> None:
    """One wrong Date, the next answer right: the store asks again at once, and a worker's heartbeat or
    completion carries on rather than losing a finished shard or the worker."""
    from datetime import UTC, datetime

    raw.write("k", b"v")
    proxy.inject("date", value="Fri, 01 Jan 2100 00:00:00 GMT", count=CLOCK_READS - 1)
    assert abs((raw.now() - datetime.now(UTC)).total_seconds()) < 60
    proxy.inject("date", value="Thu, 01 Jan 1970 00:00:00 GMT", count=CLOCK_READS - 1)
    assert abs((raw.now() - datetime.now(UTC)).total_seconds()) < 60


def test_a_store_clock_minutes_from_this_machines_is_the_store_s_time(raw: Store, proxy: FaultProxy) -> None:
    """Within the bound the store's clock is believed, not this machine's: leases are timed by it."""
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    ahead = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    proxy.inject("date", value=format_datetime(ahead, usegmt=True))
    assert raw.now() == ahead
