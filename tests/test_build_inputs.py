"""What the builder reads: compressed inputs read to their proper end, and input names that never show
credentials. A truncated input fails the build naming the file, whatever the flags; a URL's password
or signature is neither recorded in the master nor printed."""

from __future__ import annotations

import base64
import bz2
import gzip
import http.server
import lzma
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from shardclaim import InputError, create_sharded_dataset
from tests.test_dataset import dataset_lines, records

FLAGS = [{}, {"skip_invalid": True}, {"validate": False}]


def shardclaim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args], capture_output=True, text=True, timeout=300, check=False
    )


def zstd_block_ends(frame: bytes) -> list[int]:
    """Offsets just after each block of one zstd frame (RFC 8878), the last one before any checksum."""
    descriptor = frame[4]
    fcs = (0, 2, 4, 8)[descriptor >> 6]
    single = descriptor >> 5 & 1
    if single and fcs == 0:
        fcs = 1
    pos = 4 + 1 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + fcs
    ends = []
    while True:
        header = int.from_bytes(frame[pos : pos + 3], "little")
        size = 1 if (header >> 1) & 3 == 1 else header >> 3
        pos += 3 + size
        ends.append(pos)
        if header & 1:
            return ends


def zstd_input(checksum: bool) -> bytes:
    data = b"".join(records(8000, size=300))
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(data)


def cuts_of(suffix: str, blob: bytes) -> dict[str, int]:
    """Where to cut a compressed file: boundaries a reader could mistake for the end, and the middle."""
    n = len(blob)
    cuts = {"middle": n // 2, "last byte": n - 1}
    if suffix == ".zst":
        ends = zstd_block_ends(blob)
        assert len(ends) > 4
        cuts |= {"after the first block": ends[0], "after a middle block": ends[len(ends) // 2]}
        cuts |= {"before the last block": ends[-2]}
        if len(blob) > ends[-1]:
            cuts["before the checksum"] = ends[-1]
    if suffix == ".gz":
        cuts |= {"before the trailer": n - 8, "inside the trailer": n - 4}
    return cuts


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b),
}


def truncated_cases() -> Iterator[Any]:
    for suffix, compress in COMPRESSORS.items():
        blob = compress(b"".join(records(8000, size=300)))
        for where, cut in cuts_of(suffix, blob).items():
            yield pytest.param(suffix, blob[:cut], id=f"{suffix}-{where}")
    blob = zstd_input(checksum=False)
    for where in ("after a middle block", "before the last block"):
        yield pytest.param(".zst", blob[: cuts_of(".zst", blob)[where]], id=f".zst-no-checksum-{where}")
    first, second = gzip.compress(b"".join(records(3000))), gzip.compress(b"".join(records(3000, seed=1)))
    for cut in (10, len(second) // 2):  # inside the second member's header, in its middle
        yield pytest.param(".gz", first + second[:cut], id=f".gz-second-member-cut-at-{cut}")
    frames = zstd_input(checksum=True) + zstd_input(checksum=False)
    yield pytest.param(".zst", frames[: len(frames) - 100], id=".zst-inside-the-second-frame")


@pytest.mark.parametrize(("suffix", "blob"), list(truncated_cases()))
@pytest.mark.parametrize("flags", FLAGS, ids=["validated", "skip-invalid", "no-validate"])
def test_a_truncated_compressed_input_fails_the_build_naming_the_file(
    tmp_path: Path, suffix: str, blob: bytes, flags: dict[str, Any]
) -> None:
    src = tmp_path / f"in.jsonl{suffix}"
    src.write_bytes(blob)
    with pytest.raises(InputError, match=rf"in\.jsonl\{suffix}: .*truncated"):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=4, **flags)
    assert not (tmp_path / "ds" / "master_metadata.json").exists()


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_the_command_line_reports_a_truncated_input_without_a_traceback(tmp_path: Path, suffix: str) -> None:
    blob = COMPRESSORS[suffix](b"".join(records(5000)))
    src = tmp_path / f"in.jsonl{suffix}"
    src.write_bytes(blob[: len(blob) - 9])
    for flag in ("--skip-invalid", "--no-validate"):
        result = shardclaim("create", "--input_file", str(src), "--output_dir", str(tmp_path / "ds"), flag)
        assert result.returncode == 1
        assert f"in.jsonl{suffix}" in result.stderr
        assert "truncated" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_truncated_input_read_through_an_fsspec_url_fails_too(tmp_path: Path) -> None:
    blob = zstd_input(checksum=False)
    src = tmp_path / "in.jsonl.zst"
    src.write_bytes(blob[: cuts_of(".zst", blob)["before the last block"]])
    with pytest.raises(InputError, match=r"in\.jsonl\.zst: .*truncated"):
        create_sharded_dataset(f"file://{src}", str(tmp_path / "ds"), num_shards=2, validate=False)


@pytest.mark.parametrize("where", ["path", "url"])
def test_multi_member_gzip_multi_frame_zstd_and_multi_stream_bz2_are_read_whole(
    tmp_path: Path, where: str
) -> None:
    parts = [records(3000, seed=s) for s in range(3)]
    makers = {
        ".gz": gzip.compress,
        ".zst": zstandard.ZstdCompressor(write_checksum=True).compress,
        ".bz2": bz2.compress,
        ".xz": lzma.compress,
    }
    for suffix, compress in makers.items():
        src = tmp_path / f"in.jsonl{suffix}"
        src.write_bytes(b"".join(compress(b"".join(p)) for p in parts))
        out = tmp_path / f"ds{suffix}"
        name = str(src) if where == "path" else f"file://{src}"
        master = create_sharded_dataset(name, str(out), num_shards=3)
        assert master["total_tasks"] == 9000, suffix
        assert Counter(dataset_lines(out)) == Counter(line for p in parts for line in p)


def test_a_zstd_skippable_frame_is_not_data(tmp_path: Path) -> None:
    lines = records(500)
    frame = zstandard.ZstdCompressor().compress(b"".join(lines))
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    src = tmp_path / "in.jsonl.zst"
    src.write_bytes(skippable + frame + skippable)
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2)
    assert master["total_tasks"] == 500


def test_garbage_after_a_compressed_stream_fails_the_build(tmp_path: Path) -> None:
    for suffix, compress in COMPRESSORS.items():
        src = tmp_path / f"in.jsonl{suffix}"
        src.write_bytes(compress(b"".join(records(100))) + b"\x17not compressed data at all\n")
        with pytest.raises(InputError, match=rf"in\.jsonl\{suffix}: "):
            create_sharded_dataset(str(src), str(tmp_path / f"ds{suffix}"), num_shards=2, validate=False)


# -- credentials in input URLs ----------------------------------------------------------------------

PASSWORD = "PASSW0RD-c8f1"
SIGNATURE = "SIGNATURE-5e0b"
CREDENTIAL = "CREDENTIAL-77aa"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the files of ``server.files`` to requests with alice's password (basic auth) or a
    signature in the query; anything else gets 401, an unknown file 404."""

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        path, _, query = self.path.partition("?")
        auth = self.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        if auth != expected and SIGNATURE not in query:
            self.send_response(401)
            self.end_headers()
            return
        data = self.server.files.get(path)  # type: ignore[attr-defined]
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(host:port, files)`` of an HTTP server on loopback that wants a password or a signature."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", server.files  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, SIGNATURE, CREDENTIAL):
            assert secret not in text


@pytest.mark.parametrize("form", ["password", "signed"])
def test_credentials_in_an_input_url_are_neither_recorded_nor_printed(
    tmp_path: Path, http_server: tuple[str, dict[str, bytes]], form: str
) -> None:
    host, files = http_server
    files["/data.jsonl"] = b"".join(records(200))
    if form == "password":
        url = f"http://alice:{PASSWORD}@{host}/data.jsonl"
    else:
        url = f"http://{host}/data.jsonl?X-Goog-Signature={SIGNATURE}&X-Goog-Credential={CREDENTIAL}"
    out = tmp_path / "ds"
    result = shardclaim("create", "--input_file", url, "--output_dir", str(out), "--verbose", "--json")
    assert result.returncode == 0, result.stderr
    master_text = (out / "master_metadata.json").read_text()
    assert orjson.loads(master_text)["inputs"] == [f"http://{host}/data.jsonl"]
    assert orjson.loads(master_text)["total_tasks"] == 200
    assert_no_secret(master_text, result.stdout, result.stderr)


@pytest.mark.parametrize("problem", ["missing", "malformed", "refused"])
def test_an_error_about_an_input_url_shows_it_without_credentials(
    tmp_path: Path, http_server: tuple[str, dict[str, bytes]], problem: str
) -> None:
    host, files = http_server
    lines = records(20)
    lines[2] = b'{"broken": \n'
    files["/bad.jsonl"] = b"".join(lines)
    name = {"missing": "missing.jsonl", "malformed": "bad.jsonl", "refused": "bad.jsonl"}[problem]
    if problem == "refused":  # a wrong password and no signature: 401
        url = f"http://alice:wrong-{PASSWORD}@{host}/{name}?X-Goog-Credential={CREDENTIAL}"
    else:
        url = f"http://alice:{PASSWORD}@{host}/{name}?X-Goog-Signature={SIGNATURE}&X-Goog-Credential={CREDENTIAL}"
    result = shardclaim("create", "--input_file", url, "--output_dir", str(tmp_path / "ds"))
    assert result.returncode == 1
    assert f"http://{host}/{name}" in result.stderr
    assert "Traceback" not in result.stderr
    if problem == "malformed":
        assert "line 3: not valid JSON" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert not (tmp_path / "ds" / "master_metadata.json").exists()


def test_a_glob_over_a_url_with_credentials_is_shown_without_them(tmp_path: Path) -> None:
    result = shardclaim(
        "create", "--input_file", f"memory://alice:{PASSWORD}@nowhere/x-*.jsonl?sig={SIGNATURE}",
        "--output_dir", str(tmp_path / "ds"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "no input file matches" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
