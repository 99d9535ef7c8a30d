"""The retry policy: transient failures are retried with bounded, jittered backoff; a refused
precondition never is; a write whose response was lost is recognised as our own on re-read.
Run on every backend, with faults injected by a wrapper and the sleep injected (no real waiting)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from shardclaim.errors import GenerationMismatchError, TransientStoreError
from shardclaim.store.base import ObjectInfo, Store, StoredObject
from shardclaim.store.retry import WRITE_TOKEN_KEY, RetryingStore, RetryPolicy


class Faulty:
    """Wraps a real backend; each queued fault applies to the next write."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writes = 0
        self.faults: list[str] = []  # "fail" (nothing written) or "lose" (written, answer lost)

    @property
    def url(self) -> str:
        return self.inner.url

    def read(self, key: str) -> StoredObject:
        return self.inner.read(key)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        return self.inner.list(prefix, suffix=suffix)

    def now(self):  # type: ignore[no-untyped-def]
        return self.inner.now()

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        self.writes += 1
        fault = self.faults.pop(0) if self.faults else None
        if fault == "fail":
            raise TransientStoreError("write", "injected 503")
        info = self.inner.write(key, data, if_generation_match=if_generation_match, metadata=metadata)
        if fault == "lose":
            raise TransientStoreError("write", "injected: connection reset after the write landed")
        return info


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def faulty(store: Store) -> Faulty:
    return Faulty(store)


@pytest.fixture
def retrying(faulty: Faulty, sleeps: list[float]) -> RetryingStore:
    policy = RetryPolicy(max_attempts=5, initial_wait=0.5, max_wait=4.0, sleep=sleeps.append)
    return RetryingStore(faulty, policy=policy)


def test_transient_failures_are_retried_until_the_write_lands(
    retrying: RetryingStore, faulty: Faulty, sleeps: list[float]
) -> None:
    faulty.faults = ["fail", "fail"]
    info = retrying.write("k", b"v", if_generation_match=0)
    assert faulty.writes == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 4.0 for s in sleeps)
    assert retrying.read("k").generation == info.generation


def test_a_refused_precondition_is_never_retried(
    retrying: RetryingStore, faulty: Faulty, sleeps: list[float]
) -> None:
    retrying.write("k", b"v1", if_generation_match=0)
    faulty.writes = 0
    with pytest.raises(GenerationMismatchError):
        retrying.write("k", b"v2", if_generation_match=0)
    assert faulty.writes == 1
    assert sleeps == []


def test_a_lost_response_followed_by_412_is_recognised_as_our_success(
    retrying: RetryingStore, faulty: Faulty
) -> None:
    faulty.faults = ["lose"]
    info = retrying.write("k", b"mine", if_generation_match=0)
    obj = retrying.read("k")
    assert faulty.writes == 2  # the retry was refused: the first attempt had landed
    assert obj.data == b"mine"
    assert info.generation == obj.generation


def test_a_lost_race_after_a_transient_failure_is_still_a_mismatch(
    retrying: RetryingStore, faulty: Faulty, store: Store
) -> None:
    g = store.write("k", b"v1").generation
    faulty.faults = ["fail"]

    # Between our failed attempt and its retry, another worker moves the object on.
    original = faulty.inner.write

    def racing_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        faulty.inner.write = original  # type: ignore[method-assign]
        store.write("k", b"theirs", if_generation_match=g)
        return original(*args, **kwargs)

    faulty.inner.write = racing_write  # type: ignore[method-assign]
    with pytest.raises(GenerationMismatchError):
        retrying.write("k", b"ours", if_generation_match=g)
    assert retrying.read("k").data == b"theirs"


def test_retries_are_bounded(retrying: RetryingStore, faulty: Faulty, sleeps: list[float]) -> None:
    faulty.faults = ["fail"] * 10
    with pytest.raises(TransientStoreError):
        retrying.write("k", b"v")
    assert faulty.writes == 5
    assert len(sleeps) == 4


def test_every_write_carries_a_fresh_token(retrying: RetryingStore) -> None:
    retrying.write("a", b"x", metadata={"status": "available"})
    retrying.write("b", b"x")
    ta = retrying.read("a").metadata
    tb = retrying.read("b").metadata
    assert ta["status"] == "available"
    assert ta[WRITE_TOKEN_KEY] != tb[WRITE_TOKEN_KEY]


def test_backoff_is_jittered_and_grows() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=9, initial_wait=1.0, max_wait=1000.0, sleep=sleeps.append)
    calls = 0

    def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise TransientStoreError("read", "injected")

    with pytest.raises(TransientStoreError):
        policy.call(always_fails)
    assert calls == 9
    # Full jitter: the n-th wait lies in [0, 2**n] and the waits are not all alike.
    assert all(0 <= s <= 2.0 ** (n + 1) for n, s in enumerate(sleeps))
    assert len(set(sleeps)) > 1
    assert max(sleeps[4:]) > max(sleeps[:2])


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"initial_wait": -1.0}])
def test_policy_options_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**bad)  # type: ignore[arg-type]
