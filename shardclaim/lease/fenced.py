"""One holder's lease on one object, and the only way that holder writes the object.

A :class:`FencedLease` remembers the generation of its holder's last write — the *fencing token* —
and conditions every write on it. When the store refuses (someone else wrote since: a peer reclaimed an
expired lease, an operator reset the shard, a successor took over the finalizer), the lease is over for
good: :class:`~shardclaim.errors.LeaseLostError` now and on every later call, and the ``on_lost``
callbacks run once. A lease is identified by its own token, never by a worker id: two holders that
share a worker id are still two leases.

A write that failed without an answer (a store error after the retry budget) may have landed. The
lease then remembers that write's ``write_token`` (stored in the document itself) and, before its next
write, reads the object: if the token is there, the write did land and the lease carries on from it.

A shard lease also knows its lease ``token`` (the one in the shard's ``lease``). A refused write is then
not the end by itself: the lease re-reads the document and carries on — applying its change to what it
read — if the token still holds (a part of) the shard in use, since a split of the shard by an idle
worker (:mod:`shardclaim.lease.ranges`) must not fence the holder of the other part. Whatever must fence
a holder (a reclaim, an operator's reset, a failure, another process settling it) replaces or removes its
token. Its change then applies to its own part of a split shard.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from shardclaim.errors import (
    GenerationMismatchError,
    LeaseLostError,
    ObjectNotFoundError,
    TransientStoreError,
)
from shardclaim.lease import ranges
from shardclaim.lease import shard as transitions
from shardclaim.store import Generation, Store

__all__ = ["Encoder", "FencedLease", "write_judged"]

#: Refusals in a row after which a write gives up for now (each one means another writer got in first).
_MAX_REBASES = 16

#: How a document becomes bytes and cached object metadata.
Encoder = Callable[[Mapping[str, Any]], tuple[bytes, dict[str, str]]]


class FencedLease:
    """The lease that ``holder`` holds on ``key``, last written at ``generation`` with ``doc``.

    Thread-safe: a heartbeat thread and the holder's own thread may write through it at once; their
    writes are serialised and each is conditioned on the one before.
    """

    def __init__(
        self,
        store: Store,
        key: str,
        generation: Generation,
        doc: Mapping[str, Any],
        *,
        holder: str,
        encode: Encoder,
        shard_id: int | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.holder = holder
        self.shard_id = shard_id
        self.token = token  #: the lease token in the shard's document (None: fenced by generation alone)
        self._encode = encode
        self._generation = generation
        self._doc: dict[str, Any] = dict(doc)
        self._lock = threading.Lock()
        # A write whose outcome is unknown: its token, whether it was final, and what it did.
        self._pending: tuple[str, bool, str] | None = None
        self._ended: str | None = None  # why the lease is over, once it is
        self._settled: tuple[str, dict[str, Any]] | None = None  # the final write: its kind and document
        self._on_lost: list[Callable[[], None]] = []
        self.lost = threading.Event()  #: set once a write was refused

    @property
    def doc(self) -> dict[str, Any]:
        """The document as this holder last wrote (or read) it."""
        with self._lock:
            return dict(self._doc)

    @property
    def generation(self) -> Generation:
        return self._generation

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` once when a write finds the lease lost (in the writing thread)."""
        with self._lock:
            self._on_lost.append(callback)
            fire = self.lost.is_set()
        if fire:
            callback()

    def write(
        self, change: Callable[[dict[str, Any]], dict[str, Any]], *, final: bool = False, kind: str = "write"
    ) -> dict[str, Any]:
        """Write ``change(doc)`` on the generation this holder last wrote; return the new document.

        ``final`` ends the lease after a successful write (the holder settled the object). ``kind``
        names the operation: retried after an unanswered final write that did land, the same kind
        returns that write's document instead of applying the change twice. Raises LeaseLostError
        if the object moved on, or if the lease already ended.
        """
        callbacks: list[Callable[[], None]] = []
        try:
            with self._lock:
                self._resolve_pending()
                if self._settled is not None and self._settled[0] == kind:
                    # This very write landed already (its answer was lost; whichever thread found out).
                    return dict(self._settled[1])
                if self._ended is not None:
                    raise self._error(self._ended)
                for _ in range(_MAX_REBASES):
                    doc = self._changed(change)
                    token = uuid.uuid4().hex
                    doc["write_token"] = token  # also makes every write's bytes unique (no ABA on ETags)
                    data, metadata = self._encode(doc)
                    try:
                        info = self.store.write(
                            self.key, data, if_generation_match=self._generation, metadata=metadata
                        )
                    except GenerationMismatchError:
                        if self._rebased():
                            continue  # written by someone else, but this lease still holds: again
                        self._ended = "the object was written by someone else"
                        self.lost.set()
                        callbacks = self._on_lost
                        raise self._error(self._ended) from None
                    except BaseException:
                        self._pending = (token, final, kind)
                        raise
                    break
                else:
                    # Nothing was written and the lease still holds: a fault worth retrying, like a 429.
                    raise TransientStoreError("write", f"{self.key}: {_MAX_REBASES} concurrent writes won")
                self._pending = None
                self._generation, self._doc = info.generation, doc
                if final:
                    self._ended = "it settled the object"
                    self._settled = (kind, doc)
                return dict(doc)
        finally:
            for callback in callbacks:
                callback()

    def _changed(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        if self.token is None:
            return change(dict(self._doc))
        when = None
        if ranges.is_split(self._doc):
            if ranges.part_of(self._doc, self.token) is None:
                raise self._error("its part of the shard is no longer in use")  # never a blind write
            # A part is renewed by its own time: the object's is every part's latest write.
            when = self.store.now()
        return ranges.with_part(dict(self._doc), self.token, change, written_at=when)

    def _stored(self) -> tuple[Generation, dict[str, Any]] | None:
        """The object as stored now: its generation and document (None if it is not a JSON object)."""
        obj = self.store.read(self.key)
        try:
            current = orjson.loads(obj.data)
        except orjson.JSONDecodeError:
            return None
        return (obj.generation, current) if isinstance(current, dict) else None

    def _rebased(self) -> bool:
        """After a refusal: whether the lease token still holds in the document now stored (which the
        lease then carries on from)."""
        if self.token is None:
            return False
        try:
            stored = self._stored()
        except ObjectNotFoundError:
            return False
        if stored is None or not ranges.owns(stored[1], self.token):
            return False
        self._generation, self._doc = stored
        return True

    def end(self, why: str) -> None:
        """Forget the lease without writing (an operator reset it; the holder is shutting down)."""
        with self._lock:
            if self._ended is None:
                self._ended = why

    def _resolve_pending(self) -> tuple[bool, str] | None:
        """After an unanswered write: did it land? Returns (final, kind) of that write if it did."""
        if self._pending is None:
            return None
        token, final, kind = self._pending
        stored = self._stored()
        self._pending = None
        if stored is None or stored[1].get("write_token") != token:
            return None
        self._generation, self._doc = stored  # it landed: carry on from it
        current = stored[1]
        if final:
            self._ended = "it settled the object"
            self._settled = (kind, current)
        return final, kind

    def _error(self, detail: str) -> LeaseLostError:
        return LeaseLostError(self.shard_id, self.holder, detail)


def write_judged(store: Store, key: str, generation: Generation, doc: Mapping[str, Any]) -> bool:
    """A shard write outside any lease — an operator's reset, a claimant failing a poison shard —
    conditioned on the generation its decision was judged on, with a fresh write token; False when the
    object moved on since (the decision must be made again, or not at all)."""
    data, meta = transitions.encode({**doc, "write_token": uuid.uuid4().hex})
    try:
        store.write(key, data, if_generation_match=generation, metadata=meta)
    except GenerationMismatchError:
        return False
    return True
