"""The terminal ``shardclaim run`` shares with the commands it runs: one progress line at the bottom,
everyone's output scrolling above it, whole lines only.

Output comes from several processes (each worker's commands, through their pumps, and the workers' own
messages), so an in-process progress bar (tqdm's ``write``) cannot keep them apart. A
:class:`SharedLine` is a lock shared by every process of the run: a writer takes it, clears the progress
line (``\\r`` + erase-line) when it writes to that terminal, writes whole lines, and marks the line as
overwritten; the parent redraws the last text a moment later (no listing needed) and refreshes it from a
listing at a fixed cadence — never once per exiting worker, so the end of a run is one redraw, not a
burst. :class:`Progress` turns aggregates into that line: shards, records (of completed shards and of
the checkpointed chunks of running ones), the rate over a sliding window, and an ETA.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Mapping
from multiprocessing.context import BaseContext
from typing import IO, Any

from shardclaim.rate import RateWindow, format_duration

__all__ = ["CLEAR", "Progress", "SharedLine"]

#: Back to the start of the line, erase it.
CLEAR = b"\r\x1b[K"


class SharedLine:
    """A progress line at the bottom of a terminal that other processes write above.

    Made by the parent before its workers start and handed to them (it pickles into a child process);
    the parent :meth:`draw`\\ s, everyone :meth:`write`\\ s.
    """

    def __init__(self, ctx: BaseContext, *, out: IO[bytes] | None = None) -> None:
        self._lock = ctx.Lock()
        self._overwritten = ctx.Value("b", 0, lock=False)
        self._out = out
        self._text = b""

    def __getstate__(self) -> dict[str, Any]:
        return {"_lock": self._lock, "_overwritten": self._overwritten}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _out=None, _text=b"")

    @property
    def _screen(self) -> IO[bytes]:
        """The terminal the line is drawn on: the process's original stderr (``sys.stderr`` itself may
        be a :meth:`text_stream` by now)."""
        if self._out is not None:
            return self._out
        original = sys.__stderr__ or sys.stderr
        return original.buffer

    def draw(self, text: str, *, final: bool = False) -> bool:
        """Replace the line with ``text`` (and end it, when ``final``). Never blocks long: a writer stuck
        on a full pipe must not stall the parent, so a draw that cannot take the lock soon is skipped."""
        if not self._lock.acquire(timeout=0.2):
            return False
        try:
            self._text = text.encode("utf-8", "replace")
            with contextlib.suppress(OSError, ValueError):
                self._screen.write(CLEAR + self._text + (b"\n" if final else b""))
                self._screen.flush()
            self._overwritten.value = 0
            return True
        finally:
            self._lock.release()

    def redraw(self) -> None:
        """Draw the last text again if someone wrote over it since."""
        if self._overwritten.value and self._text:
            self.draw(self._text.decode("utf-8", "replace"))

    def write(self, out: IO[bytes], data: bytes) -> None:
        """Write whole lines ``data`` to ``out``, above the progress line when ``out`` is that terminal."""
        if not data:
            return
        shared = _same_terminal(out, self._screen)
        with self._lock:
            with contextlib.suppress(OSError, ValueError):
                out.write(CLEAR + data if shared else data)
                out.flush()
            if shared:
                self._overwritten.value = 1

    def text_stream(self, out: IO[bytes]) -> IO[str]:
        """A text stream (for ``sys.stderr`` in a worker) that writes through :meth:`write` by whole
        lines: a message never lands in the middle of the progress line."""
        return io.TextIOWrapper(
            io.BufferedWriter(_Lines(self, out)), encoding="utf-8", errors="replace", line_buffering=True
        )


class _Lines(io.RawIOBase):
    """Bytes in, whole lines out through a :class:`SharedLine` (a partial line waits for its end)."""

    def __init__(self, line: SharedLine, out: IO[bytes]) -> None:
        self._line = line
        self._out = out
        self._partial = b""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = self._partial + bytes(b)
        whole, newline, self._partial = data.rpartition(b"\n")
        if newline:
            self._line.write(self._out, whole + newline)
        return len(b)

    def close(self) -> None:
        partial, self._partial = self._partial, b""
        if partial:  # a last message without its newline
            self._line.write(self._out, partial + b"\n")
        super().close()


def _same_terminal(a: IO[bytes], b: IO[bytes]) -> bool:
    if a is b:
        return True
    try:
        return os.isatty(a.fileno()) and os.isatty(b.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


class Progress:
    """The text of a run's progress line, from successive aggregates
    (:func:`shardclaim.status.summarize`). The rate is measured over the last ``window`` seconds
    (:class:`~shardclaim.rate.RateWindow`, as the live view measures it), so it follows a job that slows
    down or speeds up; ``clock`` is injectable."""

    def __init__(
        self, total_records: int, *, window: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._total = total_records
        self._window = RateWindow(window)
        self._clock = clock

    def text(self, agg: Mapping[str, Any]) -> str:
        counts, done = agg["counts"], int(agg["records_done"])
        self._window.add(self._clock(), done, int(counts.get("completed", 0)))
        rate = max(0.0, (self._window.rates() or (0.0, 0.0))[0])
        left = max(0, self._total - done)
        eta = format_duration(left / rate) if rate > 0 and left else ("-" if left else "0s")
        return (
            f"{counts.get('completed', 0)}/{agg['shards']} shards done, {counts.get('in_use', 0)} running, "
            f"{counts.get('failed', 0)} failed; {done}/{self._total} records, {rate:,.0f}/s, ETA {eta}"
        )
