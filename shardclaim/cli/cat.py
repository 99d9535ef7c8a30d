"""``shardclaim cat DATASET --shard_id N [--from-chunk K]``: a shard's records as JSONL on stdout, so that
a shell command can consume a shard (``shardclaim cat $SHARDCLAIM_DATASET --shard_id $SHARDCLAIM_SHARD_ID
| python process.py``).

Every kind of dataset: copied chunks and byte ranges are written as they are stored (blank lines of a
range left out, a last line without its newline given one), each chunk only after its size and CRC32C
have been checked against the shard's metadata, so a corrupt chunk stops the output (exit 1, the
chunk named on stderr) before any of its bytes; file tasks are written as JSON strings, one per line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shardclaim.cli.options import non_negative_int

__all__ = ["register", "run_cat"]


def register(sub: Any) -> None:
    """The ``cat`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
    parser = sub.add_parser(
        "cat",
        help="write a shard's records to stdout as JSONL, verified",
        description="Write the records of one shard (from chunk K on) to stdout as JSONL; each chunk's "
        "size and CRC32C are checked before any of its bytes is written.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="the dataset: a directory, gs:// or s3:// URL")
    parser.add_argument("--shard_id", "--shard-id", dest="shard_id", type=non_negative_int, required=True)
    parser.add_argument(
        "--from-chunk", "--from_chunk", dest="from_chunk", type=non_negative_int, default=0, metavar="K",
        help="start at chunk K (as SHARDCLAIM_RESUME_CHUNK says), default 0",
    )  # fmt: skip
    parser.set_defaults(handler=run_cat)


def run_cat(args: argparse.Namespace) -> int:
    from shardclaim.dataset.cat import shard_jsonl

    out = sys.stdout.buffer
    for block in shard_jsonl(args.dataset, args.shard_id, start_chunk=args.from_chunk):
        out.write(block)
    out.flush()
    return 0
