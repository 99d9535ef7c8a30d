"""``shardclaim wait DATASET [--timeout S]``: block until the job is settled, for CI pipelines and
scripts. Exit 0 when every shard completed, 1 when some failed (or are invalid) or the job was halted,
124 when ``--timeout`` ran out first (as ``timeout(1)`` does). One listing and one clock read a look."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardclaim.cli.options import positive_float
from shardclaim.errors import TransientStoreError

if TYPE_CHECKING:
    import argparse

    from shardclaim.manager import ShardManager
    from shardclaim.view.snapshot import Snapshot

__all__ = ["TIMED_OUT", "register", "run_wait", "wait"]

TIMED_OUT = 124


def register(sub: Any) -> None:
    """The ``wait`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
    p = sub.add_parser(
        "wait",
        help="block until every shard is completed or failed (exit 0 / 1, 124 on --timeout)",
        description=textwrap.fill(
            "Block until the job is settled: every shard completed or failed, or the job halted. Exit 0 when "
            "every shard completed; 1 when some failed or are invalid, or the job was halted (or the dataset "
            "cannot be read); 124 when --timeout ran out first. Each look is one listing of the shards and "
            "one read of the store's clock; an unreachable store is retried until the timeout."
        ),
    )
    p.add_argument("dataset_dir", metavar="DATASET", help="dataset directory or URL")
    p.add_argument(
        "--timeout", type=positive_float, default=None, help="give up after S seconds (default: never)"
    )
    p.add_argument("--interval", type=positive_float, default=5.0, help="seconds between looks")
    p.set_defaults(handler=run_wait)


def run_wait(args: argparse.Namespace) -> int:
    from shardclaim.cli.render import halt_line, id_lines, summary_line
    from shardclaim.manager import ShardManager

    manager = ShardManager(args.dataset_dir, "waiter", max_outage_seconds=None)
    code, snap = wait(manager, timeout=args.timeout, interval=args.interval)
    if snap is None:
        print(
            f"shardclaim wait: timed out after {args.timeout:g} s; the store never answered", file=sys.stderr
        )
        return code
    text = [summary_line(snap.summary), *id_lines(snap.ids)]
    if snap.halt is not None:
        text.append(halt_line(snap.halt, snap.dataset))
    if code == TIMED_OUT:
        print(f"shardclaim wait: timed out after {args.timeout:g} s", file=sys.stderr)
        print("\n".join(text), file=sys.stderr)
    else:
        print("\n".join(text))
    return code


def wait(
    manager: ShardManager,
    *,
    timeout: float | None,
    interval: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    look: Callable[[], Snapshot] | None = None,
) -> tuple[int, Snapshot | None]:
    """Look until settled: (exit status, last look). Never sleeps past the deadline; a look is made at
    the deadline before giving up. A transient store error is logged once and retried."""
    if look is None:
        from shardclaim.view.snapshot import take

        look = lambda: take(manager)  # noqa: E731
    deadline = None if timeout is None else clock() + timeout
    snap: Snapshot | None = None
    warned = False
    while True:
        try:
            snap = look()
        except TransientStoreError as e:
            if not warned:
                print(f"shardclaim wait: store unreachable ({e}); still trying", file=sys.stderr)
                warned = True
        else:
            if snap.settled:
                return (0 if snap.summary["state"] == "succeeded" else 1), snap
        if deadline is None:
            sleep(interval)
            continue
        left = deadline - clock()
        if left <= 0:
            return TIMED_OUT, snap
        sleep(min(interval, left))
