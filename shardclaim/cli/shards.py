"""``shardclaim status|claim|complete|fail|reset``: the ShardManager from the command line. The manager
is imported when one of these commands runs, not when the parser is built."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import orjson

from shardclaim.cli.options import lease_seconds, positive_float
from shardclaim.cli.render import finalizer_line, halt_line, id_lines, shard_line, summary_line
from shardclaim.errors import LeaseLostError

if TYPE_CHECKING:  # the manager is imported by the commands that use it, not by `create`
    from shardclaim.manager import ShardManager

__all__ = ["CLI_LEASE_SECONDS", "register", "run_shard_command"]

#: A CLI claim has no heartbeat: its lease is the time the caller has to complete the shard.
CLI_LEASE_SECONDS = 6 * 3600.0


def register(sub: Any) -> None:
    """The five commands, on the subparsers ``sub`` of the ``shardclaim`` parser."""

    def dataset(p: argparse.ArgumentParser) -> None:  # every one of them acts on one dataset
        p.add_argument("dataset_dir", metavar="DATASET", help="dataset directory or URL")
        p.set_defaults(handler=run_shard_command)

    from shardclaim.cli.watch import WATCH_COST

    p = sub.add_parser(
        "status",
        help="every shard's state and an aggregate line; --watch: live, until the job settles",
        description=textwrap.fill(
            "Without options: one line per shard, the aggregate, and the shards in each state as compact "
            "ranges (one listing). --json: the job as one JSON document (schema in the README; one read per "
            "shard on top of the listing, 16 in flight). --watch: a live view that ends by itself when "
            "every shard is completed or failed or the job is halted (exit 0 if all completed, else 1); "
            "a line per refresh when the output is not a terminal. " + WATCH_COST
        ),
    )
    dataset(p)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON object (schema_version 1)")
    shown.add_argument("--watch", action="store_true", help="a live view until the job settles")
    p.add_argument(
        "--interval", type=positive_float, default=2.0, help="seconds between refreshes of --watch"
    )

    p = sub.add_parser("claim", help="claim one shard (exit 1 when none is claimable)")
    dataset(p)
    p.add_argument("--worker_id", "--worker-id", dest="worker_id")
    p.add_argument("--shard_id", "--shard-id", dest="shard_id", type=int, help="preferred shard")
    p.add_argument(
        "--lease-seconds", type=lease_seconds, default=CLI_LEASE_SECONDS,
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

    p = sub.add_parser(
        "reset",
        help="make shards available again (operator action)",
        description=(
            "Each reset is a compare-and-swap on the state it judged: --stale and --failed reset a shard "
            "only if it is still stale or failed when written. Any reset of a settled shard re-arms the "
            "fan-in finalizer."
        ),
    )
    dataset(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--shard_id", "--shard-id", dest="shard_id", type=int)
    which.add_argument("--stale", action="store_true", help="every in_use shard whose lease expired")
    which.add_argument("--failed", action="store_true", help="every failed shard")
    p.add_argument(
        "--finalizer", action="store_true",
        help="clear the fan-in finalizer's marker (a failed or running finalizer runs again)",
    )  # fmt: skip


def run_shard_command(args: argparse.Namespace) -> int:
    from shardclaim.manager import ShardManager

    command = args.command
    if command == "status" and args.watch:
        from shardclaim.cli.watch import run_watch

        return run_watch(args)
    if command == "status":
        return _status(
            ShardManager(args.dataset_dir, "status-reader", max_outage_seconds=None), as_json=args.json
        )
    if command == "claim":
        m = ShardManager(
            args.dataset_dir, args.worker_id, lease_seconds=args.lease_seconds, max_outage_seconds=None
        )
        shard = m.claim_shard(preferred_shard_id=args.shard_id, adoptable=True)
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
        reader = ShardManager(args.dataset_dir, "cli", max_outage_seconds=None)
        worker = reader.read_shard(args.shard_id).get("assigned_to") or "cli"
    m = ShardManager(args.dataset_dir, worker, max_outage_seconds=None)
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

    if args.shard_id is None and not (args.stale or args.failed or args.finalizer):
        print("shardclaim reset: give --shard_id N, --stale, --failed and/or --finalizer", file=sys.stderr)
        return 2
    m = ShardManager(args.dataset_dir, "operator", max_outage_seconds=None)
    if args.shard_id is not None:
        m.reset_shard(args.shard_id)
        done = [args.shard_id]
    elif args.stale:
        done = m.reset_stale()
    elif args.failed:
        done = m.reset_failed()
    else:
        done = []
    for shard_id in done:
        print(f"Shard {shard_id}: reset to available")
    if args.finalizer:
        print("finalizer: reset" if m.reset_finalizer() else "finalizer: nothing to reset")
    elif not done:
        print("no shard to reset")
    return 0


def _status(m: ShardManager, *, as_json: bool) -> int:
    from shardclaim.view.document import job_document
    from shardclaim.view.snapshot import take

    snap = take(m)
    if as_json:
        sys.stdout.write(orjson.dumps(job_document(m, snapshot=snap)).decode() + "\n")
        return 0
    final = m.finalizer_status()
    for s in snap.statuses:
        # One read per failed shard, for its last error line.
        last_error = m.read_shard(s["shard_id"]).get("last_error") if s["status"] == "failed" else None
        print(shard_line(s, last_error))
    print(summary_line(snap.summary))
    for text in id_lines(snap.ids):
        print(text)
    if m.halt is not None:
        print(halt_line(m.halt, m.dataset_dir))
    if final is not None:
        print("finalizer: " + finalizer_line(final))
    return 0
