"""The report: one self-contained HTML page drawn from the job document (:mod:`.document`).

Inline CSS, inline SVG charts (:mod:`.charts`) and a few lines of inline script that only add
conveniences (filtering the failures, naming a clicked shard): nothing is fetched, so the file opens
from a bucket, an e-mail or a laptop offline. Everything a shard document says is escaped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from html import escape
from typing import Any

from shardclaim.attempt_log import log_key
from shardclaim.view.charts import STATE_COLOURS, Bar, gantt_svg, grid_svg, histogram_svg, throughput_svg
from shardclaim.view.snapshot import shown_state

__all__ = ["render_report"]

#: Lines of each failed shard's error shown (its document keeps the last 4,000 characters).
ERROR_TAIL_LINES = 30
_FAILED_OUTCOMES = ("failed", "timed out")

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff;max-width:1060px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px;
margin:4px 0;white-space:pre-wrap} code{font-size:12px} .halt{background:#d23c3c;color:#fff;padding:8px;
font-weight:bold} .muted{color:#666;font-size:12px} .legend span{display:inline-block;width:11px;
height:11px;margin:0 4px 0 12px;vertical-align:middle;border:1px solid #999}
.state-succeeded{color:#2e9d48} .state-failed,.state-halted{color:#d23c3c}
"""
_CSS += "".join(f".s-{state}{{fill:{colour}}}" for state, colour in STATE_COLOURS.items())
_CSS += ".s-missing{stroke:#bbb}"

_JS = """
document.getElementById('filter').addEventListener('input', function (e) {
  var q = e.target.value.toLowerCase();
  document.querySelectorAll('#failures tbody tr').forEach(function (tr) {
    tr.style.display = tr.textContent.toLowerCase().indexOf(q) < 0 ? 'none' : '';
  });
});
document.getElementById('grid').addEventListener('click', function (e) {
  var t = e.target.closest('rect');
  if (t) { document.getElementById('picked').textContent = t.textContent; }
});
"""


def _ts(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value).timestamp()
    return None


def _attempts(shard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [a for a in shard.get("attempts") or [] if isinstance(a, dict)]


def _bars(shards: list[dict[str, Any]], now: float) -> list[Bar]:
    bars = []
    for s in shards:
        for a in _attempts(s):
            start, end = _ts(a.get("started")), _ts(a.get("ended"))
            if start is None or end is None:
                continue
            bars.append(Bar(str(a.get("worker") or "?"), start, end, str(a.get("outcome")),
                            f"shard {s['shard_id']} attempt {a.get('attempt')}: {a.get('outcome')}, "
                            f"{end - start:,.1f} s on {a.get('worker')} ({a.get('host')})"))  # fmt: skip
        start = _ts(s.get("started_at"))
        if s["status"] == "in_use" and start is not None:
            bars.append(Bar(str(s.get("assigned_to") or "?"), start, max(now, start), "running",
                            f"shard {s['shard_id']} attempt {s.get('attempt')}: running for "
                            f"{now - start:,.1f} s on {s.get('assigned_to')}"))  # fmt: skip
    return bars


def _completing(shard: Mapping[str, Any]) -> tuple[float, float, str] | None:
    """The span of the attempt that completed the shard, and its worker."""
    for a in reversed(_attempts(shard)):
        if a.get("outcome") == "completed":
            start, end = _ts(a.get("started")), _ts(a.get("ended"))
            if start is None or end is None:
                return None
            return start, end, str(a.get("worker") or "?")
    return None


def _table(head: list[str], rows: list[list[str]], *, ident: str = "") -> str:
    attr = f' id="{ident}"' if ident else ""
    return (
        f"<table{attr}><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        + "</tbody></table>"
    )  # fmt: skip


def _summary(doc: Mapping[str, Any], bars: list[Bar], span: tuple[float, float] | None) -> str:
    summary = doc["summary"]
    state = escape(str(summary["state"]))
    rows = [["state", f'<b class="state-{state}">{state}</b>'], ["shards", f"{summary['shards']:,}"]]
    for name, ids in (summary.get("ids") or {}).items():
        count = summary["counts"].get(name, 0)
        rows.append(
            [escape("running" if name == "in_use" else name), f"{count:,}: <code>{escape(ids)}</code>"]
        )
    rows.append(["records done", f"{summary['records_done']:,} of {summary.get('records_total', 0):,}"])
    if summary.get("chunks_total") is not None:
        rows.append(["chunks done", f"{summary.get('chunks_done') or 0:,} of {summary['chunks_total']:,}"])
    rows.append(["compute", f"{summary.get('compute_seconds', 0):,.1f} s in ended attempts"])
    failed_attempts = sum(b.outcome in _FAILED_OUTCOMES for b in bars)
    rows.append(["attempts", f"{len(bars):,} on {len({b.worker for b in bars}):,} workers; "
                             f"{failed_attempts:,} failed or timed out"])  # fmt: skip
    if span is not None:
        rows.append(["wall time", f"{span[1] - span[0]:,.1f} s (first start to last end)"])
    final = doc.get("finalizer")
    if final:
        rows.append(["finalizer", escape(f"{final.get('status')} on {final.get('worker')}")])
    return _table(["", ""], rows)


def _failures(doc: Mapping[str, Any], logs: Mapping[str, int], store_url: str) -> tuple[str, int]:
    num = int(doc["summary"]["shards"])
    rows = []
    for s in doc["shards"]:
        if s["status"] not in ("failed", "invalid") and "document_error" not in s:
            continue
        error = str(s.get("last_error") or s.get("error") or s.get("document_error") or "(no error recorded)")
        tail = "\n".join(error.strip().splitlines()[-ERROR_TAIL_LINES:])
        failed = [a for a in _attempts(s) if a.get("outcome") in _FAILED_OUTCOMES and a.get("attempt")]
        where = "no attempt recorded"
        if failed:
            attempt = int(failed[-1]["attempt"])
            key = log_key(int(s["shard_id"]), num, attempt)
            command = f"shardclaim logs {doc['dataset']} --shard_id {s['shard_id']} --attempt {attempt}"
            if key in logs:
                where = (f"<code>{escape(store_url.rstrip('/') + '/' + key)}</code> ({logs[key]:,} bytes)<br>"
                         f"<code>{escape(command)}</code>")  # fmt: skip
            else:
                where = f"no log kept for attempt {attempt} (<code>{escape(key)}</code>; not run by `run`)"
        shard_id = int(s["shard_id"])
        rows.append(
            [
                f'<b id="shard-{shard_id}">{shard_id}</b>',
                escape(str(s["status"])),
                str(s.get("failures") or 0),
                f'<pre class="error">{escape(tail)}</pre>',
                where,
            ]
        )
    head = ["shard", "state", "failures", f"error (last {ERROR_TAIL_LINES} lines)", "full log"]
    return _table(head, rows, ident="failures"), len(rows)


def _ranges(doc: Mapping[str, Any]) -> str:
    rows = []
    for s in doc["shards"]:
        for r in s.get("ranges") or []:
            text = ", ".join(f"{k}={v}" for k, v in r.items()) if isinstance(r, dict) else str(r)
            rows.append([str(s["shard_id"]), escape(text)])
    if not rows:
        return ""
    return "<h2>Split shards (chunk ranges)</h2>" + _table(["shard", "range"], rows)


def render_report(doc: Mapping[str, Any], *, logs: Mapping[str, int], store_url: str) -> str:
    """The page for the job document ``doc``; ``logs``: the attempt logs kept (key -> size)."""
    shards: list[dict[str, Any]] = doc["shards"]
    now = _ts(doc["generated_at"]) or 0.0
    bars = _bars(shards, now)
    span = (min(b.start for b in bars), max(b.end for b in bars)) if bars else None
    states = [shown_state(s) for s in shards]
    labels = [f"shard {s['shard_id']}: {'expired lease' if st == 'expired' else st}"
              + (f" ({s.get('assigned_to')})" if st in ("in_use", "expired") else "")
              for s, st in zip(shards, states, strict=True)]  # fmt: skip
    completing = [(s, c) for s in shards if (c := _completing(s)) is not None]
    by_duration = sorted(completing, key=lambda p: p[0]["shard_id"])
    by_duration.sort(key=lambda p: p[1][0] - p[1][1])  # longest first
    failures, n_failed = _failures(doc, logs, store_url)
    names = {"in_use": "running", "expired": "expired lease"}
    legend = "".join(
        f'<span style="background:{c}"></span>{names.get(n, n)}' for n, c in STATE_COLOURS.items()
    )
    dataset = escape(str(doc["dataset"]))
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>shardclaim report: {dataset}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{dataset}</h1><p class=muted>as the store showed it at {escape(str(doc['generated_at']))} "
        f"(schema {doc['schema_version']})</p>",
    ]
    if doc.get("halt"):
        from shardclaim.lease.halt import describe

        parts.append(f'<p class="halt">{escape(describe(doc["halt"], str(doc["dataset"])))}</p>')
    parts += ["<h2>Summary</h2>", _summary(doc, bars, span)]
    grid = grid_svg(states, labels=labels)
    parts += [
        f"<h2>Shards</h2><p class=legend>{legend}</p><div id=grid>{grid}</div>",
        "<p id=picked class=muted>click a shard to name it</p>",
    ]
    if span is not None:
        parts += ["<h2>Attempts per worker</h2><p class=muted>one row per worker, one bar per attempt, "
                  "coloured by how it ended (hover for details)</p>", gantt_svg(bars, *span)]  # fmt: skip
    if completing and span is not None:
        spans = [(c[0], c[1], int(s.get("total_tasks") or 0)) for s, c in completing]
        parts += [
            "<h2>Throughput</h2><p class=muted>records per second (bars; each completed shard's records "
            "spread over the attempt that completed it) and records done (line)</p>",
            throughput_svg(spans, *span),
        ]
        slow = [[str(s["shard_id"]), f"{c[1] - c[0]:,.1f} s", escape(c[2])] for s, c in by_duration[:10]]
        parts += ["<h2>Shard durations</h2><p class=muted>the attempt that completed each shard</p>",
                  histogram_svg([c[1] - c[0] for _, c in completing]), "<p>slowest:</p>",
                  _table(["shard", "duration", "worker"], slow)]  # fmt: skip
    parts += [
        f"<h2>Failed shards ({n_failed})</h2>",
        "<input id=filter placeholder='filter failures'>",
        failures,
    ]
    parts += [_ranges(doc), f"<script>{_JS}</script></body></html>"]
    return "\n".join(parts)
