"""``shardclaim create``: the builder from the command line. The builder itself is imported when the
command runs, not when the parser is built."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from shardclaim.cli.options import positive_float, positive_int

__all__ = ["add_create_arguments", "register", "run_create"]


def register(sub: Any) -> None:
    """The ``create`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
    parser = sub.add_parser(
        "create",
        help="build a sharded dataset from JSONL, files or a grid",
        description="Stream JSONL into N shards of chunk files (or ranges of the inputs, --by-reference), "
        "or make a task of every file (--files) or grid point (--grid); master_metadata.json is written "
        "last.",
    )
    add_create_arguments(parser)
    parser.set_defaults(handler=run_create)


def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    """The builder's flags: the seed's spellings (``--input_file``) and dashed ones both work."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--input_file", "--input-file", dest="input_file", nargs="+", metavar="INPUT",
        help="JSONL path(s) or URL(s); globs allowed; .gz/.zst/.bz2/.xz decompressed by suffix",
    )  # fmt: skip
    what.add_argument(
        "--files", nargs="+", metavar="GLOB",
        help="every matching file or object is one task (not copied); shards balanced by bytes",
    )  # fmt: skip
    what.add_argument(
        "--grid", metavar="GRID.json",
        help='a JSON object of lists, {"lr": [0.1, 0.01], "fold": [0, 1]}: '
        "one record per point of their product",
    )  # fmt: skip
    parser.add_argument(
        "--output_dir", "--output-dir", dest="output_dir", required=True, metavar="DIR",
        help="where the dataset goes: a directory, file:// or gs:// URL",
    )  # fmt: skip
    parser.add_argument(
        "--num_shards", "--num-shards", dest="num_shards", type=positive_int, default=8, help="shards (8)"
    )
    parser.add_argument(
        "--chunk_size_mb", "--chunk-size-mb", dest="chunk_size_mb", type=positive_float, default=100.0,
        help="largest chunk file in MiB; fractions such as 0.1 allowed (default 100)",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", choices=["blocks", "round_robin", "contiguous"], default="blocks",
        help="blocks: runs of whole lines dealt in rotation, balanced by bytes (default, fastest); "
        "round_robin: record i to shard i mod N; contiguous: consecutive runs",
    )  # fmt: skip
    parser.add_argument(
        "--by-reference", "--by_reference", dest="by_reference", action="store_true",
        help="write no chunks: each is a byte range of an (uncompressed) input, pinned and checksummed; "
        "each shard is one consecutive run of about 1/N of the bytes (--strategy does not apply)",
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
    if args.files:
        from shardclaim.dataset.tasks import create_file_tasks

        master = create_file_tasks(args.files, args.output_dir, args.num_shards, overwrite=args.overwrite)
    elif args.grid:
        from shardclaim.dataset.tasks import create_grid_tasks

        master = create_grid_tasks(
            args.grid, args.output_dir, args.num_shards,
            overwrite=args.overwrite, strategy=args.strategy, chunk_size_mb=args.chunk_size_mb,
        )  # fmt: skip
    else:
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
            by_reference=args.by_reference,
        )
    elapsed = time.perf_counter() - t0
    if args.json:
        sys.stdout.write(orjson.dumps(master).decode() + "\n")
        return 0
    chunks = sum(s["num_chunks"] for s in master["shards"])
    mb = master["total_bytes"] / (1 << 20)
    if master.get("kind") == "files":
        shards = master["num_shards"]
        print(f"{master['total_tasks']} files ({mb:.1f} MiB) -> {shards} shards in {args.output_dir}")
        return 0
    print(
        f"{master['total_tasks']} records -> {master['num_shards']} shards, {chunks} chunks in "
        f"{args.output_dir}; skipped {master['skipped_invalid']} invalid, {master['blank_lines']} blank; "
        f"{mb:.1f} MiB in {elapsed:.2f}s ({mb / max(elapsed, 1e-9):.0f} MiB/s)"
    )
    return 0
