"""The text the command line prints about a dataset: one line per shard, the aggregate line, the
finalizer's line. Pure functions of the values the manager returns; printing is the caller's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardclaim.status import ShardStatusEntry

__all__ = [
    "finalizer_line",
    "halt_line",
    "id_lines",
    "shard_line",
    "summary_line",
]


def shard_line(s: ShardStatusEntry, last_error: str | None = None) -> str:
    """``Shard 3: in_use (assigned to: w1), heartbeat 4s ago, attempt 1``; a failed shard's line ends
    with the last line of ``last_error``."""
    line = f"Shard {s['shard_id']}: {s['status']}"
    if s["status"] in ("invalid", "missing"):
        return line + (f": {s['error']}" if s.get("error") else "")
    if s.get("parts"):  # a split shard: its parts' holders and leases are in status --json
        line += f" in {s['parts']} parts" + (", one with an EXPIRED lease" if s.get("expired") else "")
    elif s["status"] == "in_use":
        line += f" (assigned to: {s['assigned_to']})"
        line += f", heartbeat {s['heartbeat_age_s']:.0f}s ago" + (", EXPIRED" if s["expired"] else "")
    if s.get("attempt"):
        line += f", attempt {s['attempt']}"
    if s.get("failures"):
        line += f", {s['failures']} failed"
    if s.get("compute_s"):
        line += f", {s['compute_s']:.1f} s of compute"
    if s["status"] == "failed":
        error = (last_error or "").strip().splitlines()
        if error and error[0].startswith("timed out"):
            error = error[:1]  # the reason, not the command's last words
        line += f"; last error: {error[-1]}" if error else ""
    return line


def summary_line(agg: Mapping[str, Any]) -> str:
    """The aggregate of :func:`shardclaim.status.summarize`: ``running: 8 shards (5 available, 3
    in_use); 1200 records done``."""
    counts = ", ".join(f"{v} {k}" for k, v in sorted(agg["counts"].items()))
    line = f"{agg['state']}: {agg['shards']} shards ({counts}); {agg['records_done']} records done"
    return line + (f"; {agg['compute_seconds']:.1f} s of compute" if agg.get("compute_seconds") else "")


def finalizer_line(final: Mapping[str, Any]) -> str:
    """The fan-in finalizer's marker: who runs it, or how it ended."""
    status = str(final.get("status"))
    if status == "running":
        return f"running on {final.get('worker')}"
    if status == "failed":
        code = final.get("exit_code")
        lines = str(final.get("error") or "").strip().splitlines()
        return (
            f"failed on {final.get('worker')}"
            + (f" (exit {code})" if code is not None else "")
            + (f": {lines[-1]}" if lines else "")
            + "; shardclaim reset DATASET --finalizer runs it again"
        )
    if status == "done":
        return f"done on {final.get('worker')} at {final.get('ended_at')}"
    return status


def halt_line(halt: Mapping[str, Any], dataset: str) -> str:
    """The fleet-wide halt: why, and how to lift it."""
    from shardclaim.lease.halt import describe

    return describe(halt, dataset)


def id_lines(ids: Mapping[Any, Sequence[int]], *, indent: str = "  ") -> list[str]:
    """One line per state naming its shards as compact ranges: ``  completed: 0-12,14,16-99``."""
    from shardclaim.idranges import compact

    names = {"in_use": "running"}
    return [f"{indent}{names.get(state, state)}: {compact(found)}" for state, found in ids.items() if found]
