"""The one retry policy, and the store wrapper that applies it.

Only :class:`~shardclaim.errors.TransientStoreError` is retried, with jittered exponential backoff and a
bound on attempts. A :class:`~shardclaim.errors.GenerationMismatchError` is an answer and passes
straight through — with one exception that makes retried writes safe: when the *first* attempt of a
conditional write may have landed (its response was lost) and a retry is refused, the wrapper re-reads
the object and, if it carries this write's unique token, reports the write as the success it was.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import tenacity

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError, TransientStoreError
from shardclaim.store.base import ObjectInfo, Store, StoredObject

__all__ = ["WRITE_TOKEN_KEY", "RetryPolicy", "RetryingStore"]

#: Metadata key under which every write through :class:`RetryingStore` records its unique token.
WRITE_TOKEN_KEY = "shardclaim-write"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient store failures are retried.

    Waits are random in ``[0, min(max_wait, initial_wait * 2**n)]`` (full jitter), so a fleet that
    hit the same 429 does not come back in step.
    """

    max_attempts: int = 8
    initial_wait: float = 0.2
    max_wait: float = 15.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            msg = f"max_attempts must be at least 1, got {self.max_attempts!r}"
            raise ValueError(msg)
        if self.initial_wait < 0 or self.max_wait < 0:
            msg = f"waits must not be negative, got {self.initial_wait!r} and {self.max_wait!r}"
            raise ValueError(msg)

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientStoreError),
            wait=tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            sleep=self.sleep,
            reraise=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        result: T = self.retrying()(fn)
        return result


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
        if_generation_match: int | None = None,
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
