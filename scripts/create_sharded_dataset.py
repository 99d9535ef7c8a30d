#!/usr/bin/env python3
"""Seed-compatible entry point: ``python scripts/create_sharded_dataset.py --input_file F --output_dir D
--num_shards 8 --chunk_size_mb 100 --verbose``. Same as ``shardclaim create``."""

from __future__ import annotations

import argparse
import sys

from shardclaim.cli import add_create_arguments, main
from shardclaim.dataset import create_sharded_dataset

__all__ = ["create_sharded_dataset", "main"]  # `from create_sharded_dataset import create_sharded_dataset`


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_create_arguments(parser)
    parser.parse_known_args(argv)  # argparse errors and --help speak with this script's name
    return main(["create", *argv])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
