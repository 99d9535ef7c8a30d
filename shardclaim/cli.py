"""The ``shardclaim`` command line. ``main(argv)`` returns the exit status."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

import orjson

from shardclaim.errors import ShardclaimError

__all__ = ["main"]


def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    """The builder's flags: the seed's spellings (``--input_file``) and dashed ones both work."""
    parser.add_argument(
        "--input_file", "--input-file", dest="input_file", nargs="+", required=True, metavar="INPUT",
        help="JSONL path(s) or URL(s); globs allowed; .gz/.zst/.bz2/.xz decompressed by suffix",
    )  # fmt: skip
    parser.add_argument(
        "--output_dir", "--output-dir", dest="output_dir", required=True, metavar="DIR",
        help="where the dataset goes: a directory, file:// or gs:// URL",
    )  # fmt: skip
    parser.add_argument("--num_shards", "--num-shards", dest="num_shards", type=int, default=8)
    parser.add_argument(
        "--chunk_size_mb", "--chunk-size-mb", dest="chunk_size_mb", type=float, default=100.0,
        help="largest chunk file in MiB; fractions such as 0.1 allowed (default 100)",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", choices=["round_robin", "contiguous"], default="round_robin",
        help="round_robin: record i to shard i mod N (default); contiguous: consecutive runs",
    )  # fmt: skip
    valid = parser.add_mutually_exclusive_group()
    valid.add_argument("--skip-invalid", action="store_true", help="skip and count malformed lines")
    valid.add_argument("--no-validate", action="store_true", help="do not parse lines (fastest)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a dataset already at DIR (it stays whole until the new one is complete)",
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="progress bar and log messages")
    parser.add_argument("--json", action="store_true", help="print the master metadata as JSON")


def run_create(args: argparse.Namespace) -> int:
    import logging

    from shardclaim.dataset import create_sharded_dataset

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    master = create_sharded_dataset(
        args.input_file if len(args.input_file) > 1 else args.input_file[0],
        args.output_dir,
        num_shards=args.num_shards,
        chunk_size_mb=args.chunk_size_mb,
        strategy=args.strategy,
        validate=not args.no_validate,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        progress=True if args.verbose else None,
    )
    elapsed = time.perf_counter() - t0
    if args.json:
        sys.stdout.write(orjson.dumps(master).decode() + "\n")
        return 0
    chunks = sum(s["num_chunks"] for s in master["shards"])
    mb = master["total_bytes"] / (1 << 20)
    print(
        f"{master['total_tasks']} records -> {master['num_shards']} shards, {chunks} chunks in "
        f"{args.output_dir}; skipped {master['skipped_invalid']} invalid, {master['blank_lines']} blank; "
        f"{mb:.1f} MiB in {elapsed:.2f}s ({mb / max(elapsed, 1e-9):.0f} MiB/s)"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardclaim",
        description="Split a dataset into shards that preemptible workers claim exactly once.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_create_arguments(
        sub.add_parser(
            "create",
            help="build a sharded dataset from JSONL",
            description="Stream JSONL into N shards of chunk files; master_metadata.json is written last.",
        )
    )

    from shardclaim._cli_shards import add_shard_commands

    add_shard_commands(sub)

    run = sub.add_parser(
        "run",
        help="run CMD on every shard with K local workers",
        description="Claim shards and run CMD on each (see shardclaim.run); exit 1 if a shard failed.",
    )
    run.add_argument("dataset_dir", metavar="DATASET")
    run.add_argument("-N", "--workers", type=int, default=1, help="local worker processes (default 1)")
    run.add_argument("--lease-seconds", type=float, default=60.0)
    run.add_argument("--max-attempts", type=int, default=3)
    run.add_argument(
        "--progress", action="store_true", default=None, help="progress line (default: on a tty)"
    )
    run.add_argument(
        "--on-complete", metavar="SHELL_CMD", help="run once, fleet-wide, when all shards settle"
    )
    run.epilog = "Everything after -- is the command: shardclaim run DATASET -N 4 -- python work.py"

    st = sub.add_parser(
        "selftest",
        help="race processes on a store to check its compare-and-swap",
        description=(
            "Race PROCESSES processes on the store at URL: each round all try to create the same "
            "object (exactly one must win), then all increment one counter by compare-and-swap "
            "(no update may be lost). Exit 0 when both hold, 1 when either does not. "
            "Leaves its objects under URL/selftest-*/."
        ),
    )
    st.add_argument("url", help="a local directory, file:///path, gs://bucket/prefix or memory://name")
    st.add_argument("--processes", type=int, default=8, help="racing processes (default 8)")
    st.add_argument("--rounds", type=int, default=20, help="create rounds (default 20)")
    st.add_argument("--increments", type=int, default=10, help="counter increments per process")
    st.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _selftest(args: argparse.Namespace) -> int:
    from shardclaim._selftest import race_counter, race_create

    for name in ("processes", "rounds", "increments"):
        if getattr(args, name) < 1:
            print(f"shardclaim: --{name} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    created = race_create(args.url, processes=args.processes, rounds=args.rounds)
    t1 = time.perf_counter()
    counted = race_counter(args.url, processes=args.processes, increments=args.increments)
    t2 = time.perf_counter()
    ok = created.ok and counted.ok
    if args.json:
        report = {
            "url": args.url,
            "ok": ok,
            "create": {"winners_per_round": created.winners_per_round, "losses": created.losses},
            "counter": {
                "reported_successes": counted.reported_successes,
                "final_value": counted.final_value,
                "conflicts": counted.conflicts,
            },
        }
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        bad = [i for i, w in enumerate(created.winners_per_round) if w != 1]
        print(
            f"create race: {args.processes} processes x {args.rounds} rounds: "
            + ("exactly one winner every round" if not bad else f"WRONG winner count in rounds {bad}")
            + f" ({created.losses} refused writes, {t1 - t0:.1f}s)"
        )
        print(
            f"counter race: {counted.reported_successes} successful writes, final value "
            f"{counted.final_value}, {counted.conflicts} refused as stale ({t2 - t1:.1f}s)"
            + ("" if counted.ok else "  LOST UPDATES")
        )
        print("OK: compare-and-swap holds on " + args.url if ok else "FAILED on " + args.url)
    return 0 if ok else 1


def _run(args: argparse.Namespace) -> int:
    from shardclaim.run import run_workers

    return run_workers(
        args.dataset_dir, args.cmd, workers=args.workers,
        lease_seconds=args.lease_seconds, max_attempts=args.max_attempts, on_complete=args.on_complete,
        progress=args.progress,
    )  # fmt: skip


def _shard_command(args: argparse.Namespace) -> int:
    from shardclaim._cli_shards import run_shard_command

    return run_shard_command(args)


_COMMANDS = {"selftest": _selftest, "create": run_create, "run": _run}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()  # a broken pipe surfaces here, not in the interpreter's exit
    except BrokenPipeError:
        # `shardclaim status DS | head -1`: the reader left. Quiet, like a shell tool killed by SIGPIPE;
        # stdout goes to /dev/null so that the interpreter's final flush cannot complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    return status


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:  # the wrapped command is not ours to parse
        cut = argv.index("--")
        argv, cmd = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    args.cmd = cmd
    try:
        return _COMMANDS.get(args.command, _shard_command)(args)
    except (ShardclaimError, ValueError) as e:
        print(f"shardclaim: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except OSError as e:  # a full disk, a directory that cannot be made: the reason, not a traceback
        print(f"shardclaim: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
