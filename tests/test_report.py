"""``shardclaim report`` and ``status --json``: what they cost in requests, and what the page and the
document say (the page in a real browser: tests/test_report_browser.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import orjson

from shardclaim import ShardManager
from shardclaim.cli.report import build_report
from shardclaim.layout import SHARD_METADATA, shard_dir
from shardclaim.store.base import Store, StoredObject
from shardclaim.testing import FakeClock, HookStore, build_dataset, memory_dataset
from shardclaim.view.document import SCHEMA_VERSION, job_document

#: What a page may never do: fetch something (src=, href= or @import of a network URL).
FETCHES = re.compile(r"""(?:\bsrc|\bhref)\s*=\s*["']?\s*(?:https?:)?//|@import""", re.IGNORECASE)


def job(shards: int, *, failures: int = 0, completed: int = 0, store_wrapper: type | None = None) -> tuple:
    clock = FakeClock()
    store = memory_dataset(shards, clock=clock)
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
    assert not FETCHES.search(page)
    assert "<link" not in page
    assert page.count("<script>") == 1
    # The timeline: one bar per attempt (3 failed, 6 completed), each coloured by how it ended.
    assert len(re.findall(r"<title>shard \d+ attempt 1: (failed|completed)", page)) == 9
    worker.close()


def test_status_json_is_the_documented_schema_with_attempts_and_ranges() -> None:
    clock, store, worker, failed = job(4, failures=1, completed=1)
    held = worker.claim_shard()
    assert held is not None
    # A split shard (chunk-range stealing) records its ranges; a view shows them as its document has them.
    key = f"{shard_dir(3, 4)}/{SHARD_METADATA}"
    obj = store.read(key)
    split = {**orjson.loads(obj.data), "ranges": [{"start_chunk": 0, "end_chunk": 1, "holder": "w9"}]}
    store.write(key, orjson.dumps(split), if_generation_match=obj.generation, metadata=obj.metadata)
    clock.advance(7)
    reader = ShardManager("memory://r", "reader", store=store)
    doc = job_document(reader)
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert datetime.fromisoformat(doc["generated_at"]).timestamp() == clock.now
    assert doc["summary"]["ids"] == {
        "completed": str(doc["summary"]["ids"]["completed"]),
        "in_use": str(held["shard_id"]),
        "available": doc["summary"]["ids"]["available"],
        "failed": str(failed[0]),
    }
    by_id = {s["shard_id"]: s for s in doc["shards"]}
    assert by_id[failed[0]]["last_error"].endswith("OSError: disk 0 <b>")
    assert [a["outcome"] for a in by_id[failed[0]]["attempts"]] == ["failed"]
    running = by_id[held["shard_id"]]
    assert running["started_at"] is not None
    assert running["heartbeat_age_s"] == 7.0
    assert {s["shard_id"]: s["ranges"] for s in doc["shards"]}[3] == split["ranges"]
    assert all(s["ranges"] == [] for s in doc["shards"] if s["shard_id"] != 3)
    page, _ = build_report(reader)
    assert "start_chunk=0, end_chunk=1, holder=w9" in page
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
