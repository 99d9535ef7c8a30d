"""``shardclaim report DATASET --html FILE``: the job as one self-contained HTML page (summary, shard
grid, attempts per worker, throughput, shard durations, every failed shard with its error and its log).
The page is drawn by :mod:`shardclaim.view.html` from the job document of :mod:`shardclaim.view.document`.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardclaim.cli.options import positive_int

if TYPE_CHECKING:
    import argparse

    from shardclaim.manager import ShardManager

__all__ = ["REPORT_COST", "build_report", "register", "run_report"]

REPORT_COST = (
    "For N shards it makes N + 5 requests: the master, one listing of the shards (on GCS one request per "
    "1,000), the store's clock, the finalizer's marker, one listing of the attempt logs (_logs/), and one "
    "read of each shard's document, --workers of them in flight."
)


def register(sub: Any) -> None:
    """The ``report`` command, on the subparsers ``sub`` of the ``shardclaim`` parser."""
    p = sub.add_parser(
        "report",
        help="write the job as one self-contained HTML page (opens offline)",
        description=textwrap.fill(
            "Write one HTML file with inline CSS, JS and SVG (nothing fetched from the network): the "
            "summary, the shard grid, attempts per worker over time, throughput, shard durations "
            "with the slowest named, and every failed shard with its error tail and where its full log is. "
            + REPORT_COST
        ),
    )
    p.add_argument("dataset_dir", metavar="DATASET", help="dataset directory or URL")
    p.add_argument("--html", metavar="FILE", required=True, help="where to write the page (a path or URL)")
    p.add_argument("--workers", type=positive_int, default=16, help="shard documents read in parallel")
    p.set_defaults(handler=run_report)


def build_report(manager: ShardManager, *, workers: int = 16) -> tuple[str, dict[str, Any]]:
    """The page, and the job document it was drawn from."""
    from shardclaim.view.document import job_document
    from shardclaim.view.html import render_report

    doc = job_document(manager, workers=workers)
    logs = {info.key: info.size for info in manager.store.list("_logs/")}
    return render_report(doc, logs=logs, store_url=manager.store.url), doc


def run_report(args: argparse.Namespace) -> int:
    from shardclaim.manager import ShardManager

    manager = ShardManager(args.dataset_dir, "report-reader", max_outage_seconds=None)
    page, doc = build_report(manager, workers=args.workers)
    _write(args.html, page.encode())
    failed = doc["summary"]["counts"].get("failed", 0)
    print(f"wrote {args.html}: {doc['summary']['state']}, {doc['summary']['shards']} shards, {failed} failed")
    return 0


def _write(target: str, data: bytes) -> None:
    """Whole or not at all: a local file is written beside its place and renamed into it."""
    if "://" in target:
        import fsspec

        with fsspec.open(target, "wb") as f:
            f.write(data)
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
