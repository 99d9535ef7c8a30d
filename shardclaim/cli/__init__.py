"""The ``shardclaim`` command line: ``main(argv) -> int``, the parser assembled from one module per
command group, and what every command shares (an error is one line on stderr and exit 1, a closed pipe
is quiet).

* :mod:`.create`: ``create`` (the builder);
* :mod:`.shards`: ``status``, ``claim``, ``complete``, ``fail``, ``reset`` (the ShardManager);
* :mod:`.run`: ``run``'s arguments (the engine is :mod:`shardclaim.run`);
* :mod:`.logs`: ``logs`` (what an attempt of ``run`` wrote);
* :mod:`.cat`: ``cat`` (a shard's records as JSONL on stdout, verified);
* :mod:`.watch`: ``status --watch`` (the live view; drawn by :mod:`shardclaim.view`);
* :mod:`.report`: ``report`` (the job as one self-contained HTML page);
* :mod:`.wait`: ``wait`` (block until the job is settled: exit 0, 1 or 124);
* :mod:`.selftest`: ``selftest`` (the races are :mod:`shardclaim._selftest`);
* :mod:`.render`: the text of the status table and its summary lines.

A command module imports what its command needs when the command runs, so that building the parser
loads neither the builder nor the manager: ``shardclaim create`` never imports the manager.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from shardclaim import __version__
from shardclaim.cli import cat, create, logs, report, run, selftest, shards, wait
from shardclaim.cli.create import add_create_arguments
from shardclaim.cli.options import both_spellings, show_defaults
from shardclaim.errors import ShardclaimError

__all__ = ["add_create_arguments", "both_spellings", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardclaim",
        description="Split a dataset into shards that preemptible workers claim exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"shardclaim {__version__}")
    parser.add_argument(
        "-v", dest="log_verbose", action="count", default=0,
        help="more log messages (-vv: debug); or SHARDCLAIM_LOG_LEVEL=DEBUG|INFO|WARNING|ERROR",
    )  # fmt: skip
    parser.add_argument("-q", dest="quiet", action="store_true", help="errors only in the log")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (create, shards, run, wait, logs, cat, report, selftest):  # the order of `shardclaim --help`
        group.register(sub)
    both_spellings(parser)
    show_defaults(parser)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = os.environ.get("SHARDCLAIM_LOG_LEVEL", "WARNING").upper()
    if args.quiet:
        level = "ERROR"
    elif args.log_verbose:
        level = "DEBUG" if args.log_verbose > 1 else "INFO"
    logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else "WARNING",
                        format="shardclaim: %(message)s")  # fmt: skip


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
    ours, cmd = run.split_command(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(ours)
    args.cmd = cmd
    _configure_logging(args)
    try:
        code: int = args.handler(args)
    except (ShardclaimError, ValueError) as e:
        print(f"shardclaim: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except OSError as e:  # a full disk, a directory that cannot be made: the reason, not a traceback
        print(f"shardclaim: {e}", file=sys.stderr)
        return 1
    except MemoryError:  # a memory limit (ulimit -v, a container's): what happened, not a traceback
        print("shardclaim: out of memory", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if "can't start new thread" not in str(e):  # threading's words; anything else is a bug to report
            raise
        print("shardclaim: cannot start a thread (out of memory, or a limit on threads or processes)",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 130
    return code
