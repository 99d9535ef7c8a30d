"""Every attempt's output, kept next to the dataset: ``_logs/shard_NNN/attempt_KKK.log``.

``run`` passes the command's stdout and stderr through to its own (each line tagged ``[shard N]`` when
several workers share a terminal, as GNU parallel's ``--tag``) and writes both, in order, into the
attempt's log object: uploaded every ``interval`` seconds while the command runs and once at its end.
A log is bounded: past ``limit`` bytes its head is kept, then a notice of what was left out, then the
last ``tail`` bytes. Logs are best effort — a store error while uploading one is logged and never fails
the attempt. ``shardclaim logs DATASET --shard_id N [--attempt K] [--follow]`` prints them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from shardclaim.layout import shard_dir
from shardclaim.store import Store

__all__ = ["AttemptLog", "log_key"]

log = logging.getLogger("shardclaim.run")


def log_key(shard_id: int, num_shards: int, attempt: int, first_chunk: int = 0) -> str:
    """Where an attempt's output goes; a part of a split shard that starts at chunk K has its own
    attempts, kept as ``cKKKK_attempt_NNN.log``."""
    part = f"c{first_chunk:04d}_" if first_chunk else ""
    return f"_logs/{shard_dir(shard_id, num_shards)}/{part}attempt_{attempt:03d}.log"


class AttemptLog:
    """One attempt's output, bounded, uploaded now and then. Thread-safe (one pump per stream)."""

    def __init__(
        self, store: Store, key: str, *, limit: int = 16 << 20, tail: int = 1 << 20, interval: float = 10.0,
        clock_wait: Callable[[float], bool] | None = None,
    ) -> None:  # fmt: skip
        self._store = store
        self.key = key
        self._limit = limit
        self._tail_size = tail
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0
        self._lock = threading.Lock()
        self._changed = False
        self._stop = threading.Event()
        self._wait = clock_wait if clock_wait is not None else self._stop.wait
        self._interval = interval
        self._thread = threading.Thread(target=self._upload_now_and_then, name="shardclaim-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._changed = True
            room = self._limit - len(self._head)
            if room > 0:
                self._head += data[:room]
                data = data[room:]
            if data:
                self._tail += data
                if len(self._tail) > self._tail_size:
                    self._dropped += len(self._tail) - self._tail_size
                    del self._tail[: len(self._tail) - self._tail_size]

    def snapshot(self) -> bytes:
        with self._lock:
            if not self._dropped:
                return bytes(self._head + self._tail)
            notice = f"\n[... shardclaim: {self._dropped} bytes of output left out ...]\n".encode()
            return bytes(self._head) + notice + bytes(self._tail)

    def upload(self) -> None:
        with self._lock:
            self._changed = False
        try:
            self._store.write(self.key, self.snapshot())
        except Exception as e:  # a log must never fail the attempt it records
            log.warning("could not upload %s: %s", self.key, e)

    def _upload_now_and_then(self) -> None:
        while not self._wait(self._interval):
            if self._changed:
                self.upload()

    def close(self) -> None:
        """Stop the periodic uploads and upload the whole log once more."""
        self._stop.set()
        self._thread.join()
        self.upload()
