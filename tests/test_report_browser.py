"""The report in a real browser (Debian's ``chromium``, headless): it renders (a screenshot that is not
blank and shows the failed shards' colour), every failed shard and its error are in the page's DOM, and
nothing in it fetches from the network. On a directory and on the GCS test server."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shardclaim import ShardManager
from shardclaim.testing import build_dataset
from shardclaim.view.charts import STATE_COLOURS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: the report's browser test needs a real browser "
    "(apt-get install chromium; .ci/run installs it when the package registry can be reached)",
)

#: Shards 1 and 4 fail, with a three-line error whose last line names the shard.
FAIL_SOME = (
    'case "$SHARDCLAIM_SHARD_ID" in 1|4) printf "loading\\nparsing <record>\\nfatal: shard %s exploded\\n" '
    '"$SHARDCLAIM_SHARD_ID" >&2; exit 3;; esac'
)


def browser(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, one bytes of RGB(A) per row) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            assert colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b, c = prev[x], prev[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, channels, rows


class FailedRows(HTMLParser):
    """The text of each row of the failures table, by shard id; and every src/href/style of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, str] = {}
        self.links: list[str] = []
        self._table = self._row = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "style")]
        if tag == "table" and ("id", "failures") in attrs:
            self._table = True
        elif tag == "tr" and self._table:
            self._row, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row:
            self._row = False
            first = re.match(r"\s*(\d+)", "".join(self._text))
            if first:
                self.rows[int(first[1])] = "".join(self._text)
        elif tag == "table":
            self._table = False

    def handle_data(self, data: str) -> None:
        if self._row:
            self._text.append(data)


def test_the_report_opens_in_a_browser_with_every_failure_and_fetches_nothing(
    shared_url: str, tmp_path: Path
) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=6, records=60)
    options = ["-N", "2", "--max-attempts", "2"]
    run = subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, *options, "--", "sh", "-c", FAIL_SOME],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    statuses = ShardManager(ds, "check").get_shard_status()
    assert [s["shard_id"] for s in statuses if s["status"] == "failed"] == [1, 4], run.stderr  # the job ran
    page = tmp_path / "report.html"
    made = subprocess.run([sys.executable, "-m", "shardclaim", "report", ds, "--html", str(page)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    url = page.resolve().as_uri()

    dom = browser("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr
    parsed = FailedRows()
    parsed.feed(dom.stdout)
    assert sorted(parsed.rows) == [1, 4]  # every failed shard, and only those
    for shard_id, text in parsed.rows.items():
        assert f"fatal: shard {shard_id} exploded" in text
        assert "parsing <record>" in text  # the error's tail, as text
        assert f"_logs/shard_{shard_id:03d}/attempt_002.log (" in text  # where its full log is, and its size
        assert f"--shard_id {shard_id} --attempt 2" in text
    assert "<script src" not in dom.stdout
    assert not [link for link in parsed.links if re.search(r"(https?:)?//|@import", link, re.IGNORECASE)]
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", dom.stdout, re.IGNORECASE)

    shot = tmp_path / "report.png"
    snap = browser(f"--screenshot={shot}", "--window-size=1100,1400", url, profile=tmp_path / "profile-png")
    assert snap.returncode == 0, snap.stderr
    width, channels, rows = png_pixels(shot.read_bytes())
    colours = {row[x : x + 3] for row in rows[::4] for x in range(0, width * channels, channels * 4)}
    assert len(colours) > 20  # not blank: text, charts, cells
    failed_red = bytes.fromhex(STATE_COLOURS["failed"][1:])
    completed_green = bytes.fromhex(STATE_COLOURS["completed"][1:])
    assert failed_red in colours  # the failed shards' cells are drawn
    assert completed_green in colours
