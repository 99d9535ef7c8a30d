"""``shardclaim run DATASET [-N K] -- CMD ARGS...``: the command's arguments. The engine (worker
processes, leases, the finalizer) is :mod:`shardclaim.run`, imported when the command runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from shardclaim.cli.options import budget, lease_seconds, positive_float, positive_int

__all__ = ["register", "run_run", "split_command"]


def register(sub: Any) -> None:
    """The ``run`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
    run = sub.add_parser(
        "run",
        help="run CMD on every shard with K local workers",
        description="Claim shards and run CMD on each (see shardclaim.run); exit 1 if a shard failed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("dataset_dir", metavar="DATASET")
    run.add_argument("-N", "--workers", type=positive_int, default=1, help="local worker processes")
    run.add_argument("--lease-seconds", type=lease_seconds, default=60.0, help="lease length in seconds")
    run.add_argument("--max-attempts", type=budget, default=3, help="failures before a shard is failed")
    run.add_argument(
        "--max-expiries", type=budget, default=3,
        help="leases lost by a dying holder, without progress, before a shard is failed",
    )  # fmt: skip
    run.add_argument(
        "--max-consecutive-failures", type=positive_int, default=3,
        help="a worker that fails this many shards in a row stops: its environment is suspect",
    )  # fmt: skip
    run.add_argument(
        "--max-failed-shards", type=positive_int, metavar="K",
        help="halt the job on every machine once K shards are failed (default: never)",
    )  # fmt: skip
    run.add_argument(
        "--timeout", type=positive_float, metavar="SECONDS",
        help="stop an attempt after SECONDS (SIGTERM, then SIGKILL) and fail it as timed out",
    )  # fmt: skip
    run.add_argument(
        "--progress", action="store_true", default=None, help="progress line (default: on a tty)"
    )
    run.add_argument(
        "--per-chunk", action="store_true",
        help="run CMD once per chunk (each run a reservation), so that idle workers may take the chunks "
        "of a slow shard not started yet; without it a running CMD owns all of its shard's chunks",
    )  # fmt: skip
    run.add_argument(
        "--on-complete", metavar="SHELL_CMD", help="run once, fleet-wide, when all shards settle"
    )
    run.epilog = """\
Everything after -- is the command: shardclaim run DATASET -N 4 -- python work.py

The command's environment, for the shard it got:
  SHARDCLAIM_SHARD_ID, SHARDCLAIM_TOTAL_SHARDS   the shard and how many there are
  SHARDCLAIM_CHUNKS                              its chunk files (paths or URLs), one per line
  SHARDCLAIM_CHUNKS_JSON                         the same as a JSON list
  SHARDCLAIM_RESUME_CHUNK                        the first chunk not done yet (after a crash)
  SHARDCLAIM_CHUNK_RANGE                         START-END: which of the shard's chunks these are
                                                 (a part of a shard taken from a slow holder)
  SHARDCLAIM_CHECKPOINT_FILE                     write the number of chunks done into it
  SHARDCLAIM_DATASET, SHARDCLAIM_ATTEMPT, SHARDCLAIM_WORKER_ID
  VELDA_SHARD_ID, VELDA_TOTAL_SHARDS             the seed's names
Exit: 0 every shard completed; 1 a shard failed, the job halted or a worker stopped; 2 usage; 143 SIGTERM.
Every attempt's output: shardclaim logs DATASET --shard_id N."""
    run.set_defaults(handler=run_run)


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(shardclaim's arguments, the wrapped command)``: for ``run``, everything after the first ``--``
    is the command, not ours to parse; for any other command the whole of ``argv`` is ours."""
    argv = list(argv)
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def run_run(args: argparse.Namespace) -> int:
    from shardclaim.run import run_workers

    return run_workers(
        args.dataset_dir, args.cmd, workers=args.workers,
        lease_seconds=args.lease_seconds, max_attempts=args.max_attempts, on_complete=args.on_complete,
        progress=args.progress, timeout=args.timeout, max_expiries=args.max_expiries,
        max_consecutive_failures=args.max_consecutive_failures, max_failed_shards=args.max_failed_shards,
        per_chunk=args.per_chunk,
    )  # fmt: skip
