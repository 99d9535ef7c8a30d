"""``shardclaim status DATASET --watch``: the job, live, until it settles.

On a terminal the view is redrawn in place (plain ANSI: cursor home, erase to the end of each line and
below; no alternate screen, so the last frame stays on screen after the view ends). The frame is a pure
function of the look and the terminal's size (:mod:`shardclaim.view.frame`), so a resize only changes
the next frame. Plain ANSI rather than a terminal library: every worker machine installs shardclaim, and
what the view needs (home, erase, colour) is three escape sequences. When the output is not a terminal,
one line per refresh.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from shardclaim.errors import TransientStoreError

if TYPE_CHECKING:
    import argparse

    from shardclaim.manager import ShardManager
    from shardclaim.view.follow import Follower

__all__ = ["WATCH_COST", "run_watch", "watch"]

#: What one refresh costs, per backend (``status --help``).
WATCH_COST = (
    "Each refresh is one listing of the shards' metadata objects, which carry each shard's state "
    "(a local directory: one walk of the dataset's directories; GCS: one list request per 1,000 shards), "
    "and one read of the store's clock; plus, once per failure, one read of a failed shard the view "
    "names (at most 5 a refresh). An S3 listing carries no metadata: there the store asks for it (HEAD) of "
    "each shard written since the previous refresh, so the first refresh costs one request per shard and "
    "each later one a request per shard that changed."
)

_HOME, _ERASE_LINE, _ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
_HIDE_CURSOR, _SHOW_CURSOR, _CLEAR = "\x1b[?25l", "\x1b[?25h", "\x1b[2J"


def run_watch(args: argparse.Namespace) -> int:
    from shardclaim.manager import ShardManager

    manager = ShardManager(args.dataset_dir, "status-watcher", max_outage_seconds=None)
    tty = sys.stdout.isatty()
    color = tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return watch(manager, sys.stdout, interval=args.interval, tty=tty, color=color)


def watch(
    manager: ShardManager,
    out: TextIO,
    *,
    interval: float,
    tty: bool,
    color: bool = False,
    size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    sleep: Callable[[float], None] = time.sleep,
    follower: Follower | None = None,
) -> int:
    """Look, draw, sleep ``interval``, until the job is settled: 0 when every shard completed, else 1.

    A look that fails on a transient store error is shown and retried at the next refresh.
    """
    from shardclaim.view.follow import Follower  # (here: `status --help` reads WATCH_COST above)
    from shardclaim.view.frame import frame, line

    follower = (
        follower if follower is not None else Follower(manager, window_seconds=max(60.0, 10 * interval))
    )
    if tty:
        out.write(_HIDE_CURSOR + _HOME + _CLEAR)
    try:
        while True:
            try:
                look = follower.look()
            except TransientStoreError as e:
                text = f"store unreachable ({e}); looking again in {interval:g} s"
                out.write(f"{_HOME}{text}{_ERASE_LINE}\n" if tty else text + "\n")
                out.flush()
                sleep(interval)
                continue
            if tty:
                cols, rows = size()
                lines = frame(look, cols, rows, color=color)
                out.write(_HOME + f"{_ERASE_LINE}\n".join(lines) + _ERASE_LINE + _ERASE_BELOW)
            else:
                out.write(line(look) + "\n")
            out.flush()
            if look.snapshot.settled:
                return 0 if look.snapshot.summary["state"] == "succeeded" else 1
            sleep(interval)
    finally:
        if tty:
            out.write(_SHOW_CURSOR + "\n")
            out.flush()
