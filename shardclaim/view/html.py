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


def _attempts(unit: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [a for a in unit.get("attempts") or [] if isinstance(a, dict)]


def _parts(shard: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], float]]:
    """What was held on its own: the shard, or each chunk range of a split shard (work stealing), as
    (name, its document, the share of the shard's records it holds)."""
    name = f"shard {shard['shard_id']}"
    ranges = [r for r in shard.get("ranges") or [] if isinstance(r, dict)]
    chunks = shard.get("num_chunks")
    if not ranges or not isinstance(chunks, int) or chunks < 1:
        return [(name, shard, 1.0)]
    out: list[tuple[str, Mapping[str, Any], float]] = []
    for r in ranges:
        start, end = r.get("start"), r.get("end")
        if isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= chunks:
            out.append((f"{name} chunks {start}-{end - 1}", r, (end - start) / chunks))
    return out or [(name, shard, 1.0)]


def _bars(shards: list[dict[str, Any]], now: float) -> list[Bar]:
    bars = []
    for s in shards:
        held = _parts(s)
        history = [(f"shard {s['shard_id']}", a) for a in _attempts(s)]  # a split shard's, before its split
        if len(held) > 1 or held[0][1] is not s:
            history += [(name, a) for name, part, _ in held for a in _attempts(part)]
        for name, a in history:
            start, end = _ts(a.get("started")), _ts(a.get("ended"))
            if start is None or end is None:
                continue
            bars.append(Bar(str(a.get("worker") or "?"), start, end, str(a.get("outcome")),
                            f"{name} attempt {a.get('attempt')}: {a.get('outcome')}, "
                            f"{end - start:,.1f} s on {a.get('worker')} ({a.get('host')})"))  # fmt: skip
        for name, part, _ in held:
            start = _ts(part.get("started_at"))
            if part.get("status") == "in_use" and start is not None:
                bars.append(Bar(str(part.get("assigned_to") or "?"), start, max(now, start), "running",
                                f"{name} attempt {part.get('attempt')}: running for "
                                f"{now - start:,.1f} s on {part.get('assigned_to')}"))  # fmt: skip
    return bars


def _completions(shard: Mapping[str, Any]) -> list[tuple[float, float, str, float, str]]:
    """For each part of the shard that completed: the span of the attempt that completed it, its worker,
    its records and its name."""
    out = []
    for name, part, share in _parts(shard):
        for a in reversed(_attempts(part)):
            if a.get("outcome") == "completed":
                start, end = _ts(a.get("started")), _ts(a.get("ended"))
                if start is not None and end is not None:
                    records = share * float(shard.get("total_tasks") or 0)
                    out.append((start, end, str(a.get("worker") or "?"), records, name))
                break
    return out


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
        error = str(s.get("last_error") or s.get("error") or s.get("document_error") or "")
        held = _parts(s)
        if not error and held[0][1] is not s:  # a split shard: its failed parts' errors
            error = "\n".join(f"{name}: {p.get('last_error')}" for name, p, _ in held if p.get("last_error"))
        tail = "\n".join((error or "(no error recorded)").strip().splitlines()[-ERROR_TAIL_LINES:])
        units = [s, *(p for _, p, _ in held if p is not s)]
        failed = [
            a
            for u in units
            for a in _attempts(u)
            if a.get("outcome") in _FAILED_OUTCOMES and type(a.get("attempt")) is int and a["attempt"] > 0
        ]
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
    """The chunk ranges of split shards (work stealing): who holds which chunks, how far each got."""
    rows = []
    for s in doc["shards"]:
        for r in s.get("ranges") or []:
            if not isinstance(r, dict):
                continue
            start, end = r.get("start"), r.get("end")
            chunks = f"{start}-{end - 1}" if isinstance(start, int) and isinstance(end, int) else "?"
            error = str(r.get("last_error") or "").strip().splitlines()
            rows.append([str(s["shard_id"]), chunks, escape(str(r.get("status"))),
                         escape(str(r.get("assigned_to") or "")), escape(str(r.get("resume_chunk", ""))),
                         escape(str(r.get("attempt", ""))), escape(error[-1] if error else "")])  # fmt: skip
    if not rows:
        return ""
    head = ["shard", "chunks", "state", "holder", "done up to chunk", "attempt", "last error"]
    return "<h2>Split shards (chunk ranges)</h2>" + _table(head, rows)


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
    completing = [c for s in shards for c in _completions(s)]
    by_duration = sorted(completing, key=lambda c: c[0] - c[1])  # longest first (stable: shard order)
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
        spans = [(c[0], c[1], c[3]) for c in completing]
        parts += [
            "<h2>Throughput</h2><p class=muted>records per second (bars; each completed shard's records "
            "spread over the attempt that completed it) and records done (line)</p>",
            throughput_svg(spans, *span),
        ]
        slow = [[escape(c[4]), f"{c[1] - c[0]:,.1f} s", escape(c[2])] for c in by_duration[:10]]
        parts += ["<h2>Shard durations</h2><p class=muted>the attempt that completed each shard</p>",
                  histogram_svg([c[1] - c[0] for c in completing]), "<p>slowest:</p>",
                  _table(["shard", "duration", "worker"], slow)]  # fmt: skip
    parts += [
        f"<h2>Failed shards ({n_failed})</h2>",
        "<input id=filter placeholder='filter failures'>",
        failures,
    ]
    parts += [_ranges(doc), f"<script>{_JS}</script></body></html>"]
    return "\n".join(parts)
