"""The GCS backend against real HTTP faults: a loopback proxy in front of the GCS test server injects
429 / 5xx answers, connection resets and lost responses, and counts requests."""

from __future__ import annotations

import pytest

from shardclaim.errors import GenerationMismatchError, StoreError, TransientStoreError
from shardclaim.store.gcs import GCSStore
from shardclaim.store.retry import RetryingStore, RetryPolicy
from tests._proxy import FaultProxy
from tests.conftest import proxied_client

pytestmark = pytest.mark.gcs


@pytest.fixture
def raw(proxy: FaultProxy, gcs_bucket: str) -> GCSStore:
    return GCSStore(gcs_bucket, "p", client=proxied_client(proxy))


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def store(raw: GCSStore, sleeps: list[float]) -> RetryingStore:
    return RetryingStore(raw, policy=RetryPolicy(max_attempts=4, sleep=sleeps.append))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_transient_on_every_operation(
    raw: GCSStore, proxy: FaultProxy, status: int
) -> None:
    raw.write("k", b"v")
    for op in (lambda: raw.write("k", b"w"), lambda: raw.read("k"), raw.list, raw.now):
        proxy.inject("status", status=status)
        with pytest.raises(TransientStoreError):
            op()


@pytest.mark.parametrize("status", [400, 401, 403])
def test_other_failures_are_not_transient(raw: GCSStore, proxy: FaultProxy, status: int) -> None:
    proxy.inject("status", status=status)
    with pytest.raises(StoreError) as err:
        raw.write("k", b"v")
    assert not isinstance(err.value, TransientStoreError)
    assert not isinstance(err.value, GenerationMismatchError)


def test_connection_resets_are_transient(raw: GCSStore, proxy: FaultProxy) -> None:
    raw.write("k", b"v")
    for op in (lambda: raw.write("k", b"w"), lambda: raw.read("k"), raw.list, raw.now):
        proxy.inject("reset")
        with pytest.raises(TransientStoreError):
            op()


def test_injected_429_and_503_are_retried_to_success(
    store: RetryingStore, proxy: FaultProxy, sleeps: list[float]
) -> None:
    proxy.inject("status", method="POST", status=429)
    proxy.inject("status", method="POST", status=503)
    info = store.write("k", b"v", if_generation_match=0)
    assert len(sleeps) == 2
    assert store.read("k").generation == info.generation
    assert proxy.count("POST", "/upload/") == 3


def test_a_lost_response_to_a_successful_create_is_recognised(
    store: RetryingStore, proxy: FaultProxy
) -> None:
    proxy.inject("lose_response", method="POST", path_contains="/upload/")
    info = store.write("claim", b"worker-a", if_generation_match=0)
    obj = store.read("claim")
    assert obj.data == b"worker-a"
    assert obj.generation == info.generation
    assert proxy.count("POST", "/upload/") == 2  # the retry was refused with 412, then the re-read


def test_a_lost_response_to_a_successful_update_is_recognised(
    store: RetryingStore, proxy: FaultProxy
) -> None:
    g = store.write("state", b"v1", if_generation_match=0).generation
    proxy.inject("lose_response", method="POST", path_contains="/upload/")
    info = store.write("state", b"v2", if_generation_match=g)
    assert store.read("state").generation == info.generation
    with pytest.raises(GenerationMismatchError):
        store.write("state", b"v3", if_generation_match=g)


def test_read_write_and_now_are_one_request_each(raw: GCSStore, proxy: FaultProxy) -> None:
    raw.write("k", b"v", metadata={"status": "available"})
    assert len(proxy.requests) == 1
    raw.read("k")
    assert len(proxy.requests) == 2
    raw.now()
    assert len(proxy.requests) == 3


def test_list_costs_one_request_per_page_of_1000(raw: GCSStore, proxy: FaultProxy, gcs_bucket: str) -> None:
    direct = GCSStore(gcs_bucket, "p")  # fill the bucket without the proxy: faster
    for i in range(1001):
        direct.write(f"s/{i:04d}", b"x")
    assert len(raw.list("s/")) == 1001
    assert len(proxy.requests) == 2
