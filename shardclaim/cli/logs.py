"""``shardclaim logs DATASET --shard_id N [--attempt K] [--follow]``: print what an attempt of ``run``
wrote (stdout and stderr, as :mod:`shardclaim.attempt_log` keeps them next to the dataset)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from shardclaim.cli.options import positive_float, positive_int

__all__ = ["register", "run_logs"]


def register(sub: Any) -> None:
    """The ``logs`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
    p = sub.add_parser("logs", help="print the output of a shard's attempt (run keeps every attempt's)")
    p.add_argument("dataset_dir", metavar="DATASET", help="dataset directory or URL")
    p.add_argument("--shard_id", "--shard-id", dest="shard_id", type=int, required=True)
    p.add_argument("--attempt", type=positive_int, help="which attempt (default: the latest)")
    p.add_argument(
        "--part", type=int, default=0, metavar="CHUNK",
        help="the part of a split shard that starts at chunk CHUNK (stragglers: run --per-chunk)",
    )  # fmt: skip
    p.add_argument("--follow", "-f", action="store_true", help="keep printing while the attempt runs")
    p.add_argument("--interval", type=positive_float, default=2.0, help="seconds between looks with --follow")
    p.set_defaults(handler=run_logs)


def run_logs(args: argparse.Namespace) -> int:
    from shardclaim.attempt_log import log_key
    from shardclaim.errors import ObjectNotFoundError
    from shardclaim.manager import ShardManager

    m = ShardManager(args.dataset_dir, "logs-reader", max_outage_seconds=None)
    doc = m.read_shard(args.shard_id)
    holder = next(
        (p for p in doc.get("ranges") or [] if p["start"] == args.part), doc if not args.part else None
    )
    if holder is None:
        starts = ", ".join(str(p["start"]) for p in doc.get("ranges") or []) or "0 (it is whole)"
        print(f"shardclaim: shard {args.shard_id} has no part starting at chunk {args.part}; parts: {starts}",
              file=sys.stderr)  # fmt: skip
        return 1
    attempt = args.attempt or int(holder.get("attempt") or 0)
    if attempt < 1:
        print(f"shardclaim: shard {args.shard_id} has had no attempt yet", file=sys.stderr)
        return 1
    key = log_key(args.shard_id, m.num_shards, attempt, args.part)
    printed = 0
    while True:
        try:
            data = m.store.read(key).data
        except ObjectNotFoundError:
            if not args.follow:
                print(f"shardclaim: no log for shard {args.shard_id}, attempt {attempt}", file=sys.stderr)
                return 1
            data = b""
        sys.stdout.buffer.write(data[printed:])
        sys.stdout.buffer.flush()
        printed = max(printed, len(data))
        if not args.follow:
            return 0
        doc = m.read_shard(args.shard_id)
        now = next((p for p in doc.get("ranges") or [] if p["start"] == args.part), doc)
        if now["status"] != "in_use" or int(now.get("attempt") or 0) != attempt:
            args.follow = False  # the attempt is over: one last look for its final upload
            continue
        time.sleep(args.interval)
