"""``shardclaim status|claim|complete|fail|reset``: the ShardManager from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from shardclaim.errors import LeaseLostError
from shardclaim.status import summarize

if TYPE_CHECKING:  # the manager is imported by the commands that use it, not by `create`
    from shardclaim.manager import ShardManager

__all__ = ["add_shard_commands", "run_shard_command"]

#: A CLI claim has no heartbeat: its lease is the time the caller has to complete the shard.
CLI_LEASE_SECONDS = 6 * 3600.0


def add_shard_commands(sub: Any) -> None:
    def dataset(p: argparse.ArgumentParser) -> None:
        p.add_argument("dataset_dir", metavar="DATASET", help="dataset directory or URL")

    p = sub.add_parser("status", help="every shard's state and an aggregate line")
    dataset(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("claim", help="claim one shard (exit 1 when none is claimable)")
    dataset(p)
    p.add_argument("--worker_id", "--worker-id", dest="worker_id")
    p.add_argument("--shard_id", "--shard-id", dest="shard_id", type=int, help="preferred shard")
    p.add_argument(
        "--lease-seconds", type=float, default=CLI_LEASE_SECONDS,
        help="no heartbeat renews a CLI claim: the lease is the time to complete it (default 6 h)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")

    for name, text in (("complete", "mark a shard completed"), ("fail", "mark a shard failed (one attempt)")):
        p = sub.add_parser(name, help=text + " (exit 1 if this worker does not hold it)")
        dataset(p)
        p.add_argument("--shard_id", "--shard-id", dest="shard_id", type=int, required=True)
        p.add_argument("--worker_id", "--worker-id", dest="worker_id", help="default: the current holder")
        if name == "fail":
            p.add_argument("--error", help="text recorded in the shard as last_error")

    p = sub.add_parser("reset", help="make shards available again (operator action)")
    dataset(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--shard_id", "--shard-id", dest="shard_id", type=int)
    which.add_argument("--stale", action="store_true", help="every in_use shard whose lease expired")
    which.add_argument("--failed", action="store_true", help="every failed shard")


def run_shard_command(args: argparse.Namespace) -> int:
    from shardclaim.manager import ShardManager

    command = args.command
    if command == "status":
        return _status(ShardManager(args.dataset_dir, "status-reader"), as_json=args.json)
    if command == "claim":
        m = ShardManager(args.dataset_dir, args.worker_id, lease_seconds=args.lease_seconds)
        shard = m.claim_shard(preferred_shard_id=args.shard_id)
        if shard is None:
            print("no shard is claimable now", file=sys.stderr)
            return 1
        if args.json:
            sys.stdout.write(orjson.dumps(shard).decode() + "\n")
        else:
            print(f"Claimed shard {shard['shard_id']} as {m.worker_id} (attempt {shard['attempt']})")
            for chunk in shard["chunks"]:
                print(f"  {chunk}")
        return 0
    if command in ("complete", "fail"):
        return _settle(args)
    return _reset(args)


def _settle(args: argparse.Namespace) -> int:
    from shardclaim.manager import ShardManager

    worker = args.worker_id
    if worker is None:  # the seed's CLI names no worker: act as whoever holds the shard
        worker = ShardManager(args.dataset_dir, "cli").read_shard(args.shard_id).get("assigned_to") or "cli"
    m = ShardManager(args.dataset_dir, worker)
    try:
        if args.command == "complete":
            m.mark_completed(args.shard_id)
            print(f"Shard {args.shard_id}: completed")
        else:
            print(f"Shard {args.shard_id}: {m.mark_failed(args.shard_id, args.error)}")
    except LeaseLostError as e:
        print(f"shardclaim: refused: {e}", file=sys.stderr)
        return 1
    return 0


def _reset(args: argparse.Namespace) -> int:
    from shardclaim.manager import ShardManager

    m = ShardManager(args.dataset_dir, "operator")
    if args.shard_id is not None:
        targets = [args.shard_id]
    else:
        statuses = m.get_shard_status()
        targets = [
            s["shard_id"]
            for s in statuses
            if (args.stale and s.get("expired")) or (args.failed and s["status"] == "failed")
        ]
    for shard_id in targets:
        m.reset_shard(shard_id)
        print(f"Shard {shard_id}: reset to available")
    if not targets:
        print("no shard to reset")
    return 0


def _status(m: ShardManager, *, as_json: bool) -> int:
    statuses = m.get_shard_status()
    agg = summarize(statuses)
    if as_json:
        sys.stdout.write(orjson.dumps({"summary": agg, "shards": statuses}).decode() + "\n")
        return 0
    for s in statuses:
        line = f"Shard {s['shard_id']}: {s['status']}"
        if s["status"] == "in_use":
            line += f" (assigned to: {s['assigned_to']})"
            line += f", heartbeat {s['heartbeat_age_s']:.0f}s ago" + (", EXPIRED" if s["expired"] else "")
        if s.get("attempt"):
            line += f", attempt {s['attempt']}"
        if s.get("failures"):
            line += f", {s['failures']} failed"
        if s["status"] == "failed":  # one read per failed shard, for its last error line
            error = (m.read_shard(s["shard_id"]).get("last_error") or "").strip().splitlines()
            line += f"; last error: {error[-1]}" if error else ""
        print(line)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(agg["counts"].items()))
    print(f"{agg['state']}: {agg['shards']} shards ({counts}); {agg['records_done']} records done")
    return 0
