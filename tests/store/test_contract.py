"""The store contract, once, on every backend (memory, local directory, GCS test server, S3 test server).

Each backend's case says which properties it has where they differ (``StoreCase.versions``: ordered
generations or content ETags; ``StoreCase.listing``: metadata in the listing or fetched by the store)."""

from __future__ import annotations

import pickle
from datetime import UTC, timedelta

import pytest

from shardclaim.errors import GenerationMismatchError, InvalidKeyError, ObjectNotFoundError
from shardclaim.store.base import ABSENT, Store, bind_metadata, content_md5
from tests.conftest import StoreCase


def test_create_if_absent_succeeds_once(store: Store) -> None:
    first = store.write("shard_000/metadata.json", b"one", if_generation_match=0)
    with pytest.raises(GenerationMismatchError) as err:
        store.write("shard_000/metadata.json", b"two", if_generation_match=0)
    assert err.value.key == "shard_000/metadata.json"
    assert err.value.expected == 0
    obj = store.read("shard_000/metadata.json")
    assert obj.data == b"one"
    assert obj.generation == first.generation


def test_update_with_current_generation_succeeds_and_stale_fails(store: Store) -> None:
    g1 = store.write("k", b"v1", if_generation_match=0).generation
    g2 = store.write("k", b"v2", if_generation_match=g1).generation
    assert g2 != g1
    with pytest.raises(GenerationMismatchError) as err:
        store.write("k", b"stale", if_generation_match=g1)
    assert err.value.expected == g1
    obj = store.read("k")
    assert (obj.data, obj.generation) == (b"v2", g2)


def test_conditional_write_on_a_missing_object_is_refused(store: Store) -> None:
    with pytest.raises(GenerationMismatchError):
        store.write("absent", b"x", if_generation_match=12345)
    with pytest.raises(ObjectNotFoundError):
        store.read("absent")


def test_unconditional_write_replaces_and_moves_the_generation_on(store: Store) -> None:
    g1 = store.write("k", b"a").generation
    g2 = store.write("k", b"b").generation
    assert g2 != g1
    assert ABSENT not in (g1, g2)
    assert store.read("k").data == b"b"


def test_ordered_generations_increase_also_across_delete_and_recreate(case: StoreCase) -> None:
    if case.versions != "ordered":
        pytest.skip(f"{case.name} versions objects by content hash: no order to check")
    g1 = case.store.write("k", b"a", if_generation_match=0).generation
    g2 = case.store.write("k", b"a").generation
    case.remove("k")
    g3 = case.store.write("k", b"b", if_generation_match=0).generation
    assert isinstance(g1, int)
    assert isinstance(g2, int)
    assert isinstance(g3, int)
    assert g3 > g2 > g1


def test_an_etag_store_gives_equal_bytes_equal_versions(case: StoreCase) -> None:
    """Why every write above the store carries a unique token: on an ETag store, writing back the bytes
    a stale holder last saw brings back the version it names (ABA), and its conditional write wins."""
    if case.versions != "etag":
        pytest.skip(f"{case.name} gives every write a new generation")
    g1 = case.store.write("k", b"same", if_generation_match=0).generation
    case.store.write("k", b"other", if_generation_match=g1)
    g3 = case.store.write("k", b"same").generation
    assert isinstance(g1, str)
    assert g3 == g1
    case.store.write("k", b"stale holder wins", if_generation_match=g1)  # the ABA the token prevents


def test_an_etag_store_refuses_a_conditional_rewrite_of_the_same_bytes(case: StoreCase) -> None:
    """A writer that forgot its write token is caught at once: rewriting the very bytes it replaces
    would leave the version as it was, for a stale holder to match."""
    if case.versions != "etag":
        pytest.skip(f"{case.name} gives every write a new generation")
    g1 = case.store.write("k", b"renewed", if_generation_match=0).generation
    with pytest.raises(ValueError, match="same bytes as the version it replaces"):
        case.store.write("k", b"renewed", if_generation_match=g1)
    assert case.store.read("k").generation == g1
    assert case.store.write("k", b"renewed, token 2", if_generation_match=g1).generation != g1


def test_metadata_set_apart_from_the_bytes_is_not_trusted(case: StoreCase) -> None:
    """On a bucket, anyone may put an object with the metadata they like, or copy a shard's metadata onto
    other bytes: a listing (whose decisions rest on the metadata alone) and a read see none of it, so the
    object is read, never judged by metadata its bytes do not carry. The store's own writes are kept."""
    if case.put_raw is None:
        pytest.skip(f"{case.name}: objects are written through the store only")
    case.store.write("own", b'{"status": "in_use"}', metadata={"status": "in_use"})
    case.put_raw("forged", b'{"status": "available"}', {"status": "completed"})
    own = {o.key: o for o in case.store.list()}["own"]
    assert dict(own.metadata) == {"status": "in_use"}
    copied = case.store.read("own")
    assert dict(copied.metadata) == {"status": "in_use"}
    bound = dict(bind_metadata(copied.metadata, content_md5(copied.data)))
    case.put_raw("copied", b'{"status": "available"}', bound)  # a shard's metadata, with its digest
    fresh = case.peer() if case.peer is not None else case.store
    listed = {o.key: dict(o.metadata) for o in fresh.list()}
    assert listed == {"copied": {}, "forged": {}, "own": {"status": "in_use"}}
    assert dict(fresh.read("forged").metadata) == {}
    assert dict(fresh.read("copied").metadata) == {}


def test_read_returns_bytes_generation_and_metadata_of_one_write(store: Store) -> None:
    info = store.write("k", b"\x00\xffbinary", metadata={"status": "in_use", "holder": "w-1"})
    obj = store.read("k")
    assert obj.data == b"\x00\xffbinary"
    assert obj.generation == info.generation
    assert dict(obj.metadata) == {"status": "in_use", "holder": "w-1"}
    store.write("k", b"later")
    assert dict(store.read("k").metadata) == {}


def test_reading_a_missing_key_is_a_typed_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFoundError) as err:
        store.read("no/such/object.json")
    assert err.value.key == "no/such/object.json"
    assert isinstance(err.value, LookupError)


def test_list_returns_generation_time_size_and_metadata(store: Store) -> None:
    before = store.now()
    a = store.write("ds/shard_000/metadata.json", b"{}", metadata={"status": "available"})
    b = store.write("ds/shard_001/metadata.json", b"{...}", metadata={"status": "in_use"})
    store.write("ds/shard_000/chunk_0000.jsonl", b"{}\n")
    listed = store.list("ds/", suffix="/metadata.json")
    assert [o.key for o in listed] == ["ds/shard_000/metadata.json", "ds/shard_001/metadata.json"]
    assert [o.generation for o in listed] == [a.generation, b.generation]
    assert [o.size for o in listed] == [2, 5]
    assert [dict(o.metadata) for o in listed] == [{"status": "available"}, {"status": "in_use"}]
    after = store.now()
    for o in listed:
        assert o.updated.tzinfo is not None
        # Store clocks report whole seconds on GCS (HTTP Date): allow that much slack.
        assert before - timedelta(seconds=2) <= o.updated <= after + timedelta(seconds=2)


def test_a_listing_shows_the_metadata_another_client_wrote_and_rewrote(case: StoreCase) -> None:
    """Also where the listing carries no metadata (``case.listing == "fetched"``, S3): the store reads
    what it has not seen, and a new version of an object is never shown with its old metadata."""
    assert case.peer is not None
    peer = case.peer()
    assert case.store.list() == []
    peer.write("ds/shard_000/metadata.json", b"{1}", metadata={"status": "available"})
    first = case.store.list("ds/")
    assert [dict(o.metadata) for o in first] == [{"status": "available"}]
    in_use = {"status": "in_use", "holder": "w"}
    again = peer.write("ds/shard_000/metadata.json", b"{2}", metadata=in_use)
    (listed,) = case.store.list("ds/")
    assert (listed.generation, dict(listed.metadata)) == (again.generation, in_use)
    assert listed.size == 3


def test_list_filters_by_prefix_and_sorts_by_key(store: Store) -> None:
    for key in ["b/2", "a/1", "a/3", "a2/x", "ab"]:
        store.write(key, b"x")
    assert [o.key for o in store.list("a/")] == ["a/1", "a/3"]
    assert [o.key for o in store.list("a")] == ["a/1", "a/3", "a2/x", "ab"]
    assert [o.key for o in store.list()] == ["a/1", "a/3", "a2/x", "ab", "b/2"]
    assert store.list("zzz/") == []


def test_now_is_timezone_aware_utc_and_current(store: Store) -> None:
    from datetime import datetime

    now = store.now()
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "key",
    [
        "sp ace/ünïcødé-名前.json",
        "odd/#hash?q=1&x=%41+plus",
        "quote'\"back\\slash/star*[brackets]{braces}",
        "tab\tand~tilde/@at:colon;semi,comma$dollar",
    ],
)
def test_keys_with_unusual_characters_round_trip(store: Store, key: str) -> None:
    g = store.write(key, b"payload", if_generation_match=0).generation
    obj = store.read(key)
    assert (obj.key, obj.data, obj.generation) == (key, b"payload", g)
    assert [o.key for o in store.list()] == [key]


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../escape", "a/../b", "a/./b", "a/", ".shardclaim.lock", "x/\x00"]
)
def test_unclean_keys_are_refused_before_touching_the_store(store: Store, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.write(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.read(key)
    assert store.list() == []


@pytest.mark.parametrize(
    "metadata",
    [{"Status": "x"}, {"status": "naïve"}, {"status": " padded"}, {"status": "a\nb"}, {"k": "v" * 4000}],
)
def test_unportable_metadata_is_refused(store: Store, metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="metadata"):
        store.write("k", b"x", metadata=metadata)
    assert store.list() == []


def test_errors_keep_their_facts_across_processes() -> None:
    err = pickle.loads(pickle.dumps(GenerationMismatchError("k", 7)))
    assert (err.key, err.expected, str(err)) == (
        "k",
        7,
        "'k': precondition failed, expected it at generation 7",
    )
    nf = pickle.loads(pickle.dumps(ObjectNotFoundError("gone")))
    assert nf.key == "gone"
