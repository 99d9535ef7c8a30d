"""The one retry policy, and the store wrapper that applies it.

Only :class:`~shardclaim.errors.TransientStoreError` is retried, with jittered exponential backoff and a
bound on attempts. A :class:`~shardclaim.errors.GenerationMismatchError` is an answer and passes
straight through — with one exception that makes retried writes safe: when the *first* attempt of a
conditional write may have landed (its response was lost) and a retry is refused, the wrapper re-reads
the object and, if it carries this write's unique token, reports the write as the success it was.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import tenacity

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError, TransientStoreError
from shardclaim.store.base import Generation, ObjectInfo, Store, StoredObject

__all__ = ["WRITE_TOKEN_KEY", "RetryPolicy", "RetryingStore"]

#: Metadata key under which every write through :class:`RetryingStore` records its unique token.
WRITE_TOKEN_KEY = "shardclaim-write"

T = TypeVar("T")
log = logging.getLogger("shardclaim.store")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient store failures are retried.

    Waits are random in ``[0, min(max_wait, initial_wait * 2**n)]`` (full jitter), so a fleet that
    hit the same 429 does not come back in step. By default a request gives up after ``max_attempts``
    (about 25 s at most); with ``max_seconds`` it keeps trying for that long instead, whatever the number
    of attempts — what a worker uses to wait out a store outage of minutes. A request that has been
    failing for ``report_after`` seconds says so once in the log, and once more when it gets through.
    """

    max_attempts: int = 8
    initial_wait: float = 0.2
    max_wait: float = 15.0
    max_seconds: float | None = None
    report_after: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            msg = f"max_attempts must be at least 1, got {self.max_attempts!r}"
            raise ValueError(msg)
        if self.initial_wait < 0 or self.max_wait < 0:
            msg = f"waits must not be negative, got {self.initial_wait!r} and {self.max_wait!r}"
            raise ValueError(msg)
        if self.max_seconds is not None and not 0 <= self.max_seconds < float("inf"):
            msg = f"max_seconds must be a non-negative number, got {self.max_seconds!r}"
            raise ValueError(msg)

    def retrying(self, outage: _Outage | None = None) -> tenacity.Retrying:
        outage = outage if outage is not None else _Outage(self)
        stop: Any = tenacity.stop_after_attempt(self.max_attempts)
        if self.max_seconds is not None:
            limit = self.max_seconds

            def stop(state: tenacity.RetryCallState) -> bool:
                return outage.elapsed() >= limit

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientStoreError),
            wait=tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            stop=stop,
            sleep=self.sleep,
            before_sleep=outage.failing,
            reraise=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        outage = _Outage(self)
        result: T = self.retrying(outage)(fn)
        outage.over()
        return result


class _Outage:
    """One request's run of transient failures: said once when long, and once when over."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._start = policy.clock()
        self._reported = False

    def elapsed(self) -> float:
        return self._policy.clock() - self._start

    def failing(self, state: tenacity.RetryCallState) -> None:
        down = self.elapsed()
        if self._reported or down < self._policy.report_after:
            return
        self._reported = True
        error = state.outcome.exception() if state.outcome is not None else None
        bound = self._policy.max_seconds
        log.warning(
            "the store has failed for %.0f s (%s); still retrying%s",
            down, error, f", for up to {bound:.0f} s in all" if bound is not None else "",
        )  # fmt: skip

    def over(self) -> None:
        if self._reported:
            log.warning("the store answers again, after %.0f s", self.elapsed())


class RetryingStore:
    """A :class:`~shardclaim.store.base.Store` that retries another store's transient failures."""

    def __init__(
        self,
        inner: Store,
        *,
        policy: RetryPolicy | None = None,
        token_factory: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.inner = inner
        self.policy = policy if policy is not None else RetryPolicy()
        self._token_factory = token_factory

    @property
    def url(self) -> str:
        return self.inner.url

    def read(self, key: str) -> StoredObject:
        return self.policy.call(lambda: self.inner.read(key))

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        return self.policy.call(lambda: self.inner.list(prefix, suffix=suffix))

    def now(self) -> datetime:
        return self.policy.call(self.inner.now)

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        token = self._token_factory()
        meta = {**(metadata or {}), WRITE_TOKEN_KEY: token}
        attempts = 0

        def attempt() -> ObjectInfo:
            nonlocal attempts
            attempts += 1
            try:
                return self.inner.write(key, data, if_generation_match=if_generation_match, metadata=meta)
            except GenerationMismatchError:
                if attempts == 1:
                    raise
                # An earlier attempt failed without an answer and may have landed.
                mine = self._own_write(key, token)
                if mine is None:
                    raise
                return mine

        return self.policy.call(attempt)

    def _own_write(self, key: str, token: str) -> ObjectInfo | None:
        try:
            obj = self.inner.read(key)
        except ObjectNotFoundError:
            return None
        if obj.metadata.get(WRITE_TOKEN_KEY) != token:
            return None
        return ObjectInfo(key, obj.generation, obj.updated, len(obj.data), obj.metadata)
