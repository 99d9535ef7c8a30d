"""``shardclaim selftest URL``: race real processes on a store to check its compare-and-swap, and report.
The races themselves are :mod:`shardclaim._selftest`, imported when the command runs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

__all__ = ["register", "run_selftest"]


def register(sub: Any) -> None:
    """The ``selftest`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
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
    st.set_defaults(handler=run_selftest)


def run_selftest(args: argparse.Namespace) -> int:
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
