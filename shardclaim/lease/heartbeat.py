"""The background driver that renews leases: a thread that calls one step at an interval, for ever.

The step is the unit of work (:meth:`shardclaim.manager.ShardManager.renew_leases`); tests and the
deterministic simulation call it directly, and this thread is only its driver. The thread survives
*any* exception a step raises, BaseException included (a stray CancelledError is not a shutdown): a
lapsed lease is a duplicate run somewhere else. It says so in the log; only :meth:`Heartbeat.stop` ends
it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Heartbeat"]

log = logging.getLogger("shardclaim.heartbeat")


class Heartbeat:
    """Calls ``step()`` every ``interval`` seconds in a daemon thread until stopped.

    ``wait(seconds) -> bool`` is what the thread blocks in between steps (default: the stop event's
    ``wait``); it returns True to end the loop. Tests inject it to drive the thread tick by tick.
    """

    def __init__(
        self,
        step: Callable[[], None],
        interval: float,
        *,
        name: str = "shardclaim-heartbeat",
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if not interval > 0:
            msg = f"interval must be positive, got {interval!r}"
            raise ValueError(msg)
        self._step = step
        self.interval = interval
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, *, wait: bool = True) -> None:
        """End the loop: no step starts after this. ``wait`` (the default) also waits for a step under way
        to finish; without it, the caller goes on at once (a step may be retrying an unreachable store)."""
        self._stop.set()
        if wait:
            self.join()

    def join(self) -> None:
        if self.started and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        while not self._wait(self.interval) and not self._stop.is_set():
            try:
                self._step()
            except BaseException:  # whatever it is: this thread is the leases' only life
                # Keep beating: the next step may well succeed, and a dead heartbeat loses every lease.
                log.exception("a heartbeat step failed; the next one is in %.1f s", self.interval)
