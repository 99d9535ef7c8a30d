"""``shardclaim report`` and ``status --json``: what they cost in requests, and what the page and the
document say (the page in a real browser: tests/test_report_browser.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import orjson

from shardclaim import ShardManager
from shardclaim.cli.report import build_report
from shardclaim.layout import SHARD_METADATA, shard_dir
from shardclaim.store.base import Store, StoredObject
from shardclaim.testing import FakeClock, HookStore, build_dataset, memory_dataset
from shardclaim.view.document import SCHEMA_VERSION, job_document


class _Fetches(HTMLParser):
    """What a page would fetch: network URLs in src/href attributes, @import or url() in its styles."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "poster", "data") and re.search(
                r"(https?:)?//", value or "", re.IGNORECASE
            ):
                self.found.append(f"{tag} {name}={value}")
            if name == "style" and re.search(r"@import|url\(", value or "", re.IGNORECASE):
                self.found.append(f"{tag} style={value}")
        if tag in ("link", "iframe", "object", "embed", "img"):
            self.found.append(f"<{tag}>")

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._style and re.search(r"@import|url\(", data, re.IGNORECASE):
            self.found.append(f"style: {data[:80]}")


def fetches(page: str) -> list[str]:
    """What in ``page`` would make a browser fetch something (nothing, for a self-contained page)."""
    parser = _Fetches()
    parser.feed(page)
    return parser.found


def job(shards: int, *, failures: int = 0, completed: int = 0, chunks: int = 1) -> tuple:
    clock = FakeClock()
    store = memory_dataset(shards, clock=clock, chunks_per_shard=chunks)
    worker = ShardManager("memory://r", "w1", store=store, max_attempts=1)
    failed = []
    for i in range(failures):
        shard = worker.claim_shard()
        assert shard is not None
        clock.advance(3)
        worker.mark_failed(
            shard["shard_id"], f"Traceback (most recent call last):\n  line {i}\nOSError: disk {i} <b>"
        )
        failed.append(shard["shard_id"])
    for _ in range(completed):
        shard = worker.claim_shard()
        assert shard is not None
        clock.advance(5)
        worker.mark_completed(shard["shard_id"])
    return clock, store, worker, failed


def test_the_report_of_10000_shards_costs_n_plus_5_requests() -> None:
    _, store, _, failed = job(10_000, failures=3, completed=40)
    counted = HookStore(store)
    reader = ShardManager("memory://r", "reader", store=counted)  # type: ignore[arg-type]
    assert dict(counted.count) == {"read": 1}  # the master
    page, doc = build_report(reader)
    # The listing, the clock, every shard's document, the finalizer's marker, the listing of the logs.
    assert dict(counted.count) == {"read": 1 + 10_000 + 1, "list": 2, "now": 1}
    assert sum(counted.count.values()) == 10_000 + 5
    assert doc["summary"]["counts"] == {"failed": 3, "completed": 40, "available": 10_000 - 43}
    assert all(f'id="shard-{i}"' in page for i in failed)
    assert page.count('class="s-completed"') == 40


class Gate:
    """A store whose reads of shard documents wait until ``width`` of them are in flight together: proves
    the reads run ``width`` at a time, and records how many ever ran at once."""

    def __init__(self, inner: Store, width: int) -> None:
        self.inner, self.width = inner, width
        self.in_flight = self.most = 0
        self._lock = threading.Lock()
        self._full = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read(self, key: str) -> StoredObject:
        if not key.endswith("/" + SHARD_METADATA) or key.startswith("_"):
            return self.inner.read(key)
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.in_flight == self.width:
                self._full.set()
        try:
            assert self._full.wait(timeout=60), f"never {self.width} reads in flight at once"
            return self.inner.read(key)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_shard_documents_are_read_a_bounded_number_at_a_time() -> None:
    _, store, _, _ = job(200, completed=10)
    gate = Gate(store, 4)
    reader = ShardManager("memory://r", "reader", store=gate)  # type: ignore[arg-type]
    doc = job_document(reader, workers=4)
    assert gate.most == 4
    assert len(doc["shards"]) == 200


def test_the_page_names_every_failed_shard_with_its_error_tail_and_its_log() -> None:
    _, store, worker, failed = job(12, failures=3, completed=6)
    num = 12
    log = f"_logs/{shard_dir(failed[0], num)}/attempt_001.log"
    store.write(log, b"x" * 1234)
    page, _ = build_report(ShardManager("memory://r", "reader", store=store))
    for i, shard_id in enumerate(failed):
        row = re.search(rf'<tr><td><b id="shard-{shard_id}">.*?</tr>', page, re.DOTALL)
        assert row is not None
        assert f"OSError: disk {i} &lt;b&gt;" in row[0]  # the error's tail, escaped
        assert f"  line {i}" in row[0]
    assert f"{store.url}/{log}</code> (1,234 bytes)" in page
    assert f"shardclaim logs memory://r --shard_id {failed[0]} --attempt 1" in page
    assert f"{shard_dir(failed[1], num)}/attempt_001.log</code>; not run by `run`" in page
    assert "disk 0 <b>" not in page  # what a document says is text, never markup
    assert fetches(page) == []
    assert "<link" not in page
    assert page.count("<script>") == 1
    # The timeline: one bar per attempt (3 failed, 6 completed), each coloured by how it ended.
    assert len(re.findall(r"<title>shard \d+ attempt 1: (failed|completed)", page)) == 9
    worker.close()


def test_status_json_is_the_documented_schema_with_attempts_and_ranges() -> None:
    clock, store, worker, failed = job(4, failures=1, completed=1, chunks=4)
    held = worker.claim_shard()
    assert held is not None
    # A split shard (chunk-range stealing, shardclaim/lease/ranges.py) lists its parts in `ranges`.
    doc0 = job_document(ShardManager("memory://r", "reader", store=store))
    split_id = next(s["shard_id"] for s in doc0["shards"] if s["status"] == "available")
    key = f"{shard_dir(split_id, 4)}/{SHARD_METADATA}"
    obj = store.read(key)
    when = clock.now
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat()  # noqa: E731
    ranges = [
        {"start": 0, "end": 1, "status": "in_use", "assigned_to": "w1", "resume_chunk": 0, "attempt": 1,
         "started_at": iso(when), "lease": {"token": "SECRET-TOKEN", "worker": "w1", "lease_seconds": 60}},
        {"start": 1, "end": 4, "status": "completed", "assigned_to": "w9", "resume_chunk": 4, "attempt": 1,
         "attempts": [{"attempt": 1, "worker": "w9", "started": iso(when - 4), "ended": iso(when),
                       "outcome": "completed", "duration_s": 4.0}]},
    ]  # fmt: skip
    split = {**orjson.loads(obj.data), "ranges": ranges, "write_token": "SECRET-TOKEN"}
    store.write(key, orjson.dumps(split), if_generation_match=obj.generation, metadata=obj.metadata)
    clock.advance(7)
    reader = ShardManager("memory://r", "reader", store=store)
    doc = job_document(reader)
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert datetime.fromisoformat(doc["generated_at"]).timestamp() == clock.now
    ids = doc["summary"]["ids"]
    assert (ids["in_use"], ids["failed"]) == (str(held["shard_id"]), str(failed[0]))
    by_id = {s["shard_id"]: s for s in doc["shards"]}
    assert by_id[failed[0]]["last_error"].endswith("OSError: disk 0 <b>")
    assert [a["outcome"] for a in by_id[failed[0]]["attempts"]] == ["failed"]
    running = by_id[held["shard_id"]]
    assert running["started_at"] is not None
    assert running["heartbeat_age_s"] == 7.0
    assert by_id[split_id]["ranges"][1] == ranges[1]
    assert by_id[split_id]["ranges"][0]["lease"] == {"worker": "w1", "lease_seconds": 60}  # no token
    assert all(s["ranges"] == [] for s in doc["shards"] if s["shard_id"] != split_id)
    assert "SECRET-TOKEN" not in json.dumps(doc)
    page, _ = build_report(reader)
    assert "SECRET-TOKEN" not in page
    assert f"<tr><td>{split_id}</td><td>1-3</td><td>completed</td><td>w9</td><td>4</td>" in page
    assert f"<title>shard {split_id} chunks 1-3 attempt 1: completed, 4.0 s on w9" in page  # on the timeline
    assert f"<title>shard {split_id} chunks 0-0 attempt 1: running for 7.0 s on w1" in page
    worker.close()


def test_status_json_and_report_from_the_command_line(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=3, records=9)
    run = subprocess.run([sys.executable, "-m", "shardclaim", "run", ds, "--", "true"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = subprocess.run([sys.executable, "-m", "shardclaim", "status", ds, "--json"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["schema_version"] == 1
    assert doc["summary"]["ids"] == {"completed": "0-2"}
    assert {s["attempts"][0]["outcome"] for s in doc["shards"]} == {"completed"}
    html = tmp_path / "out" / "report.html"
    html.parent.mkdir()
    made = subprocess.run([sys.executable, "-m", "shardclaim", "report", ds, "--html", str(html)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "succeeded, 3 shards, 0 failed" in made.stdout
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in html.parent.iterdir()] == ["report.html"]  # written whole, nothing left over


def test_a_hostile_shard_document_is_shown_not_obeyed() -> None:
    _, store, _, _ = job(3)
    key = f"{shard_dir(1, 3)}/{SHARD_METADATA}"
    obj = store.read(key)
    hostile = {
        **orjson.loads(obj.data), "status": "failed", "failures": 3,
        "last_error": "</pre><script>alert(1)</script>",
        "attempts": [
            {"attempt": [1], "outcome": "failed", "started": "garbage", "ended": 5},
            {"attempt": 2, "outcome": "completed", "worker": "<img src=http://x/>",
             "started": "0001-01-01T00:00:00+00:00", "ended": "9999-12-31T00:00:00+00:00"},
        ],
    }  # fmt: skip
    store.write(key, orjson.dumps(hostile), if_generation_match=obj.generation, metadata={"status": "failed"})
    page, doc = build_report(ShardManager("memory://r", "reader", store=store))
    assert "document_error" not in doc["shards"][1]  # the document passed the checks: the page copes
    assert '<b id="shard-1">1</b>' in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page
    assert fetches(page) == []
    assert page.count("<script>") == 1


def test_the_fetch_check_finds_what_a_browser_would_fetch() -> None:
    assert fetches('<img src="x.png"><script src="//cdn/x.js"></script>') == [
        "<img>",
        "script src=//cdn/x.js",
    ]
    assert fetches("<style>@import 'https://x/y.css';</style>") != []
    assert fetches('<p>src="http://x" is text</p><a href="#shard-1">1</a>') == []
