"""One function turns a URL into a store; anything it cannot open is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardclaim import InvalidURLError, open_store
from shardclaim.store.gcs import GCSStore
from shardclaim.store.local import LocalStore
from shardclaim.store.memory import MemoryStore


def test_plain_paths_and_file_urls_open_the_local_store(tmp_path: Path) -> None:
    for url in (str(tmp_path), f"file://{tmp_path}", tmp_path, f"file://localhost{tmp_path}"):
        store = open_store(url)
        assert isinstance(store.inner, LocalStore)
        assert store.inner.root == tmp_path


def test_relative_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("data/set")
    assert isinstance(store.inner, LocalStore)
    assert store.inner.root == tmp_path / "data" / "set"


def test_memory_urls_name_one_store_per_process() -> None:
    a = open_store("memory://shared-name")
    b = open_store("memory://shared-name")
    assert isinstance(a.inner, MemoryStore)
    a.write("k", b"v")
    assert b.read("k").data == b"v"
    assert open_store("memory://other").list() == []


@pytest.mark.gcs
def test_gs_urls_open_the_gcs_store_with_its_prefix(gcs_bucket: str) -> None:
    store = open_store(f"gs://{gcs_bucket}/runs/one/")
    assert isinstance(store.inner, GCSStore)
    assert store.url == f"gs://{gcs_bucket}/runs/one"
    store.write("k", b"v")
    assert [o.key for o in open_store(f"gs://{gcs_bucket}/runs").list()] == ["one/k"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty URL"),
        ("   ", "empty URL"),
        ("s3://", "no bucket"),
        ("s3://Upper/x", "not a valid bucket name"),
        ("s3://bucket/a//b", "'..' parts"),
        ("s3://bucket/x?endpoint=y", "query strings"),
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("gs://", "no bucket"),
        ("gs:///path", "no bucket"),
        ("gs://UPPER/x", "not a valid bucket name"),
        ("gs://a/x", "not a valid bucket name"),
        ("gs://bucket/a//b", "'..' parts"),
        ("gs://bucket/../b", "'..' parts"),
        ("file://otherhost/x", "name no host"),
        ("gs://bucket/x?y=1", "query strings"),
    ],
)
def test_unopenable_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(InvalidURLError, match=message) as err:
        open_store(url)
    assert err.value.url == url
    assert isinstance(err.value, ValueError)
