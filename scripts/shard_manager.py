#!/usr/bin/env python3
"""Seed-compatible entry point: ``python scripts/shard_manager.py --dataset_dir D --action
claim|status|complete|fail|reset --worker_id W --shard_id N``. Same as ``shardclaim ACTION D ...``."""

from __future__ import annotations

import argparse
import sys

from shardclaim.cli import both_spellings, main
from shardclaim.manager import ShardManager

__all__ = ["ShardManager", "main"]  # `from shard_manager import ShardManager`, as the seed documents


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--action", required=True, choices=["claim", "status", "complete", "fail", "reset"])
    parser.add_argument("--worker_id")
    parser.add_argument("--shard_id", type=int)
    parser.add_argument("--json", action="store_true")
    both_spellings(parser)
    args = parser.parse_args(argv)
    forwarded = [args.action, args.dataset_dir]
    if args.worker_id and args.action != "status":
        forwarded += ["--worker_id", args.worker_id]
    if args.shard_id is not None:
        forwarded += ["--shard_id", str(args.shard_id)]
    elif args.action in ("complete", "fail", "reset"):
        parser.error(f"--action {args.action} needs --shard_id")
    if args.json and args.action in ("claim", "status"):
        forwarded.append("--json")
    return main(forwarded)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
