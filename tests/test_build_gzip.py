"""gzip input through ISA-L (python-isal), with zlib as the fallback: both read every member byte-exact and
refuse a corrupt or truncated file; decompression runs a few blocks ahead in a thread."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from shardclaim import InputError, create_sharded_dataset
from shardclaim.dataset import decompress


def body(n: int) -> bytes:
    return b"".join(orjson.dumps({"i": i, "pad": "x\u00e9\\" * (i % 200)}) + b"\n" for i in range(n))


@pytest.fixture(params=["isal", "zlib"])
def inflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "zlib":  # as where python-isal cannot be installed
        monkeypatch.setattr(decompress, "_gzip_decoder_factory", lambda: lambda: zlib.decompressobj(wbits=31))
    return str(request.param)


def test_isal_is_what_inflates_gzip_here() -> None:
    from isal import isal_zlib

    assert type(decompress._gzip_decoder_factory()()) is type(isal_zlib.decompressobj(wbits=31))


def chunks_of(ds: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(ds.glob("shard_*/chunk_*.jsonl")))


def test_a_multi_member_gzip_builds_byte_exact(tmp_path: Path, inflate: str) -> None:
    data = body(30_000)  # several 8 MiB blocks of output, so the read-ahead runs ahead
    cut = data.index(b"\n", len(data) // 3) + 1
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(gzip.compress(data[:cut], 1) + gzip.compress(data[cut:], 9) + b"\0" * 8)
    create_sharded_dataset(
        str(src), str(tmp_path / "ds"), num_shards=1, chunk_size_mb=4, strategy="contiguous"
    )
    assert chunks_of(tmp_path / "ds") == data


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda z: z[:-3], "truncated"),  # the trailer cut short
        (lambda z: z[:-8] + bytes([z[-8] ^ 1]) + z[-7:], "corrupt gzip data"),  # the CRC-32 in the trailer
        (lambda z: z[: len(z) // 2], "truncated"),
        (lambda z: z + b"garbage!", "corrupt gzip data|truncated"),  # "garbage!" as a next member
    ],
)
def test_a_corrupt_or_truncated_gzip_fails_the_build(
    tmp_path: Path, inflate: str, spoil: Callable[[bytes], bytes], message: str
) -> None:
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(spoil(gzip.compress(body(20_000))))
    with pytest.raises(InputError, match=message):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_every_strategy_builds_compressed_input_byte_exact(tmp_path: Path, suffix: str) -> None:
    data = body(40_000)
    compress: Any = gzip.compress if suffix == ".gz" else zstandard.compress
    src = tmp_path / f"in.jsonl{suffix}"
    src.write_bytes(compress(data))
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(data)
    for strategy in ("blocks", "round_robin", "contiguous"):
        create_sharded_dataset(str(src), str(tmp_path / strategy), num_shards=3, strategy=strategy)  # type: ignore[arg-type]
        create_sharded_dataset(
            str(plain), str(tmp_path / f"{strategy}-plain"), num_shards=3, strategy=strategy
        )  # type: ignore[arg-type]
        assert chunks_of(tmp_path / strategy) == chunks_of(tmp_path / f"{strategy}-plain")
    assert sorted(chunks_of(tmp_path / "blocks").splitlines()) == sorted(data.splitlines())
