"""The ``shardclaim`` command line. ``main(argv)`` returns the exit status."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import orjson

from shardclaim.errors import ShardclaimError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardclaim",
        description="Split a dataset into shards that preemptible workers claim exactly once.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "selftest":
            return _selftest(args)
    except ShardclaimError as e:
        print(f"shardclaim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
