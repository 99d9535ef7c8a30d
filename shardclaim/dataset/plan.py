"""A planner process for the ``blocks`` strategy: the per-byte scans of each block (blank lines, the
records in each run) worked out in a second process, ahead of the builder, on local inputs.

The builder's main thread then only copies bytes (and hands them to the writers, which CRC and write
them); the scans, which cost as much again on small records, run on the other core. The planner reads
the inputs itself (from the page cache) through the same :func:`~shardclaim.dataset.inputs.blocks_of`,
so its blocks are the builder's, and sends one small plan per block: its place in the stream (checked
by the builder) and ``(blank lines, newlines per run)``. Any mismatch or failure and the builder scans
the block itself: the planner can make a build faster, never different.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from multiprocessing.connection import Connection
from typing import Any

from shardclaim.dataset.deal import plan_block, runs_suit
from shardclaim.dataset.inputs import blocks_of, open_inputs, size_of
from shardclaim.dataset.localfs import is_local

__all__ = ["Planner"]

#: (which planned block, input index, start, end): the builder checks it is its own block's plan
Key = tuple[int, int, int, int]
Plan = tuple[list[tuple[int, int]], list[int]]
# Starting the process costs ~0.15 s; it pays for itself from about this much input.
PLAN_FROM = 96 << 20


def _plan(paths: list[str], num_shards: int, conn: Connection) -> None:
    try:
        seq = 0
        for index, _, data, start, end in blocks_of(open_inputs(paths), None):
            if runs_suit(end - start, num_shards):
                plan = plan_block(data, start, end, num_shards)
                conn.send(((seq, index, start, end), plan))
                seq += 1
    except Exception:  # noqa: S110 - the builder scans for itself; it reports any real problem
        pass
    finally:
        with contextlib.suppress(OSError):
            conn.send(None)
        conn.close()


class Planner:
    """Plans from a background process, in the builder's block order."""

    def __init__(self, files: list[Any], num_shards: int) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_plan, args=([f.path for f in files], num_shards, child), name="shardclaim-plan"
        )
        self._proc.daemon = True
        self._proc.start()
        child.close()
        self._done = False

    @staticmethod
    def suits(files: list[Any]) -> bool:
        """Local uncompressed inputs worth a process, with a second core to run it."""
        return (
            (os.cpu_count() or 1) > 1
            and all(is_local(f.fs) and not getattr(f, "compression", None) for f in files)
            and sum(size_of(f) for f in files) >= PLAN_FROM
        )

    def plan(self, key: Key) -> Plan | None:
        """The plan of the block ``key``, or None (the builder scans it itself, and every block after)."""
        if self._done:
            return None
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            message = None
        if message is None or message[0] != key:
            self._done = True
            return None
        return message[1]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._done = True
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._conn.close()
